"""Issue 28: the GPU plan (bench/gpu.py, bench/gpu_zoo.py, tests/test_cuda.py) read as the device would run it,
checked on the CPU: each test here stands for a finding that would have cost the one lease a GPU gets."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))
import gpu
import gpu_measure
import gpu_preflight
import gpu_run
import gpu_stage
import gpu_zoo
import test_cuda

from bsr_hub.commands.train import load_train_config
from bsr_hub.training import cudnn_benchmark_for
from bsr_hub.training.config import resolve_config

BASE_RECIPE = str(REPO_ROOT / "configs" / "base_x2_gpu.yaml")


def alive(pid: int) -> bool:
    """A process that runs (a zombie, killed and not yet reaped, does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_a_cuda_test_timeout_kills_the_training_run_it_started(tmp_path):
    """A pytest killed at its timeout left the train.py it had started running on the GPU, under the throughput
    grid that came next. Here pytest is a process that starts a child and hangs; the child must go with it."""
    pid_file = tmp_path / "child.pid"
    script = ("import subprocess, sys, time; "
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
              f"open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(120)")
    t0 = time.perf_counter()
    try:
        result = gpu_measure.run_cuda_tests(timeout=3, cmd=[sys.executable, "-c", script])
        assert result["returncode"] == "timeout after 3 s" and time.perf_counter() - t0 < 60
        child = int(pid_file.read_text())
        deadline = time.monotonic() + 10  # SIGKILL is delivered at once; leave the kernel a moment
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(child), "the timed-out command's child is still running"
    finally:
        if pid_file.is_file() and alive(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), 9)  # the process this test started, by its id


@pytest.fixture
def cudnn_flag():
    saved = torch.backends.cudnn.benchmark
    yield
    torch.backends.cudnn.benchmark = saved


def test_the_throughput_grid_times_the_kernels_train_py_will_use(tmp_path, cudnn_flag):
    """The grid sizes max_steps from its rate; it ran with cuDNN autotuning while train.py never turned it on. Both
    now take it from the recipe through one function."""
    recipe = resolve_config(BASE_RECIPE, {})
    assert gpu_measure.grid_kernels(BASE_RECIPE, "cuda") is cudnn_benchmark_for(recipe.optim, cuda=True) is True
    assert torch.backends.cudnn.benchmark is True
    off = tmp_path / "off.yaml"
    off.write_text(Path(BASE_RECIPE).read_text().replace("  channels_last: true\n",
                                                          "  channels_last: true\n  cudnn_benchmark: false\n"))
    assert gpu_measure.grid_kernels(str(off), "cuda") is False and torch.backends.cudnn.benchmark is False
    assert gpu_measure.grid_kernels(BASE_RECIPE, "cpu") is False


def test_max_steps_without_the_bench_calls_rate_lets_every_decay_happen(tmp_path, monkeypatch):
    """With no throughput grid in the lease (the bench call failed, or the machine was fresh), max_steps was the
    recipe's placeholder, 15000: its decays, at 0.6 and 0.85 of it, lie far past anything minutes reach."""
    monkeypatch.setattr(gpu_run, "RESULTS", tmp_path / "results")  # no grid measured
    recipe = resolve_config(BASE_RECIPE, {})
    batch, seconds, rate = recipe.rfs.batch_size, 240.0, 600.0  # samples/s: a guess at bsr-base bf16 on an H100
    probes = []

    def probe() -> float:
        probes.append(1)
        time.sleep(0.2)  # its time comes out of the run's
        return rate

    steps, left, why = gpu_measure.plan_steps(seconds, batch, probe)
    assert probes == [1] and "probed" in why and left <= seconds - 0.2
    last_decay = max(recipe.optim.lr_decay_at) * steps
    assert last_decay * batch / rate <= left - 60, f"the last decay, at step {last_decay:.0f}, is past the deadline"
    assert steps < recipe.optim.max_steps

    gpu_run.save("throughput", {"grid": [{"preset": "bsr-base", "layout": "channels_last", "precision": "bf16",
                                       "samples_per_s": 2 * rate}]})
    measured, left, why = gpu_measure.plan_steps(seconds, batch, probe)
    assert probes == [1] and left == seconds and "measured" in why and measured > steps  # the grid's rate, no probe


def test_data_workers_are_cut_to_what_dev_shm_holds(tmp_path):
    """Twelve data workers hand bsr-base batches to the trainer through /dev/shm, about 110 MiB in flight; a
    container's /dev/shm can be 64 MiB, and its workers die of a bus error mid-run. Nothing checked it."""
    recipe = resolve_config(BASE_RECIPE, {})
    batch = gpu_measure.batch_bytes(recipe.rfs.batch_size, recipe.rfs.patch_size, recipe.scale)
    assert batch == 32 * (4 * 3 * 48 * 48 * 5 + 20)
    assert gpu_measure.loader_workers(recipe.data.num_workers, batch, 64 * 2**20) == 3  # 32 MiB for 2 batches each
    assert gpu_measure.loader_workers(recipe.data.num_workers, batch, 24 * 2**30) == recipe.data.num_workers
    assert gpu_measure.loader_workers(recipe.data.num_workers, batch, None) == recipe.data.num_workers  # no /dev/shm
    assert gpu_measure.loader_workers(recipe.data.num_workers, batch, 2**20) == 0  # the trainer makes its own batches
    args = argparse.Namespace(recipe=BASE_RECIPE, device="cuda")
    cfg, _ = load_train_config(gpu._train_command(args, 500, tmp_path / "out", workers=3)[2:])
    assert cfg.data.num_workers == 3
    zoo = gpu_zoo.plan(False, resolve_config(str(REPO_ROOT / gpu_zoo.RECIPE), {}), shm_free=256 * 2**20)
    workers = {r["name"]: load_train_config(r["flags"])[0].data.num_workers for r in zoo}
    assert workers["bsr-lite-x4"] < workers["bsr-lite-x2"] <= 3  # x4's 60 px patches, 240 px HR: 5x the bytes


def test_the_final_evaluation_inside_the_deadline_is_set5_alone(tmp_path):
    """train.py's final evaluation scores bicubic beside the model on the CPU; on the recipe's three sets (BSD100's
    100 images) that ran inside the training deadline. Set14 and BSD100 are measured back here anyway."""
    set5 = str(gpu_stage.data_root() / "benchmarks" / "Set5")  # the staged data there
    args = argparse.Namespace(recipe=BASE_RECIPE, device="cuda")
    cfg, _ = load_train_config(gpu._train_command(args, 500, tmp_path / "out")[2:])
    assert cfg.validation.eval_dirs == [set5]
    for run in gpu_zoo.plan(False):
        cfg, _ = load_train_config(["--config", str(REPO_ROOT / gpu_zoo.RECIPE), *run["flags"]])
        assert cfg.validation.eval_dirs == [set5], run["name"]


def test_the_zoo_probes_each_model_at_its_own_scale(monkeypatch):
    """The x3 and x4 runs were sized from the speed of an x2 model (train_throughput built every model at x2)."""
    probed = []

    def spy(device, preset, bf16, channels_last, batch, patch, steps, warmup, scale=2):
        probed.append((preset, scale, patch))
        return 1000.0

    monkeypatch.setattr(gpu_measure, "train_throughput", spy)
    steps, _ = gpu_zoo._steps(False, 360.0, 64)
    assert probed == [(preset, scale, patch) for _, preset, scale, patch, *_ in gpu_zoo.ZOO]
    assert set(steps) == {name for name, *_ in gpu_zoo.ZOO}


def test_train_throughput_builds_the_model_at_the_scale_asked(monkeypatch):
    from bsr_hub import BSRModel

    built = []
    real = BSRModel.from_preset.__func__

    def recording(cls, preset, **kwargs):
        model = real(cls, preset, **kwargs)
        built.append(model.config.scale)
        return model

    monkeypatch.setattr(BSRModel, "from_preset", classmethod(recording))
    rate = gpu_measure.train_throughput("cpu", "bsr-tiny", False, False, batch=1, patch=8, steps=1, warmup=0, scale=3)
    assert built == [3] and rate > 0  # and its HR batch is 3x the patch, or the loss would not have run


def test_the_cuda_evaluation_test_runs_on_the_staged_data(tmp_path):
    """tests/test_cuda.py's CUDA-vs-CPU evaluation skipped unless ../shared/data/README.md was there, which staging
    never carries: on the GPU it always skipped, and could not fail."""
    staged = tmp_path / "data"  # what a device holds: the staged image folders, no README.md
    (staged / "benchmarks" / "Set5").mkdir(parents=True)
    assert "Set5" in gpu_stage.CARRIED_BENCHMARKS  # in every part, the one the tests' call carries among them
    assert not (staged / "README.md").is_file() and not test_cuda.missing_set5(staged)
    assert test_cuda.missing_set5(tmp_path / "nothing")


def test_the_cuda_evaluation_compares_fp32_with_fp32(tmp_path, tiny_checkpoint, bench_dir):
    """Its "fp32" on the GPU was TF32, cuDNN's default for convolutions: the evaluation it runs turns TF32 off,
    and is otherwise evaluate.py's (run here on the CPU, so that a slip in it shows before the lease)."""
    check = "print(torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)"
    flags = subprocess.run([sys.executable, "-c", test_cuda.NO_TF32 + check], capture_output=True, text=True,
                           timeout=120, check=False)
    assert flags.stdout.split() == ["False", "False"], flags.stderr
    target = tmp_path / "scores.json"
    cmd = [sys.executable, "-c", test_cuda.FP32_EVALUATE, "--model", str(tiny_checkpoint), "--benchmarks", "Syn",
           "--data-dir", str(bench_dir), "--device", "cpu", "--output", str(target), "-q"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = json.loads(target.read_text())
    (first, *_) = scores["results"] if isinstance(scores, dict) else scores
    assert first["benchmark"] == "Syn" and first["psnr"] > 0


def fake_train(tmp_path: Path, name: str, body: str) -> list[str]:
    """A stand-in for train.py: a Python process running `body` (it may write `MODEL`, the model's training.json)."""
    model = tmp_path / name / "model" / "training.json"
    model.parent.mkdir(parents=True)
    ready = tmp_path / name / "ready"  # `body` may touch READY to say it got somewhere
    script = f"import pathlib, signal, time; MODEL = pathlib.Path({str(model)!r}); READY = pathlib.Path({str(ready)!r}); "
    return [sys.executable, "-c", script + body]


def test_a_run_past_its_deadline_in_its_final_evaluation_is_let_finish(tmp_path):
    """At the deadline a run that had written its model was in its final evaluation; train.py answers SIGTERM only
    while it trains, so the signal killed it and the model came back without its evaluation."""
    cmd = fake_train(tmp_path, "run", "MODEL.write_text('{}'); time.sleep(3); print('evaluated')")
    model = tmp_path / "run" / "model" / "training.json"
    with (tmp_path / "run.log").open("w") as log:
        proc = gpu_run.start_run(cmd, log)
        while not model.is_file() and proc.poll() is None:  # however long the start takes on a loaded machine
            time.sleep(0.05)
        ended = gpu_run.wait_for_run(proc, time.monotonic(), model)  # the deadline is now, the model written
    assert (ended, proc.returncode) == ("finished", 0) and "evaluated" in (tmp_path / "run.log").read_text()


def test_a_run_that_does_not_stop_is_killed_and_the_call_goes_on(tmp_path, monkeypatch):
    """A train.py that did not exit after SIGTERM (a hung data worker, a slow checkpoint) made the phase wait
    with no limit, past the call's, and nothing was written."""
    monkeypatch.setattr(gpu_run, "TERM_S", 1.0)
    cmd = fake_train(tmp_path, "run", "signal.signal(signal.SIGTERM, signal.SIG_IGN); READY.touch(); time.sleep(120)")
    with (tmp_path / "run.log").open("w") as log:
        proc = gpu_run.start_run(cmd, log)
        while not (tmp_path / "run" / "ready").is_file() and proc.poll() is None:
            time.sleep(0.05)
        t0 = time.monotonic()
        ended = gpu_run.wait_for_run(proc, time.monotonic() + 1.0, tmp_path / "run" / "model" / "training.json")
    assert ended == "killed" and proc.returncode == -9 and time.monotonic() - t0 < 30


def test_the_zoo_ends_its_stopped_runs_together_and_within_a_limit(tmp_path, monkeypatch):
    """gpu_zoo's finish runs went one after another with no time limit: one that hung took the call past its
    limit, and every summary file with it."""
    monkeypatch.setattr(gpu_run, "GRACE_S", 20.0)  # a main run's: not the finish runs'
    monkeypatch.setattr(gpu_run, "TERM_S", 20.0)
    monkeypatch.setattr(gpu_run, "FINISH_GRACE_S", 1.0, raising=False)
    monkeypatch.setattr(gpu_run, "FINISH_TERM_S", 1.0, raising=False)
    monkeypatch.setattr(gpu_run, "start_run", lambda cmd, log: subprocess.Popen(
        FAKES[cmd[cmd.index("--output.dir") + 1]], stdout=log, stderr=subprocess.STDOUT, process_group=0))
    FAKES = {str(tmp_path / "quick"): fake_train(tmp_path, "quick", "MODEL.write_text('{}'); time.sleep(2)"),
             str(tmp_path / "hung"): fake_train(tmp_path, "hung", "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                                                  "time.sleep(120)")}
    runs = []
    for name in ("quick", "hung"):
        (tmp_path / name / "checkpoints" / "step_40").mkdir(parents=True)
        runs.append({"name": name, "command": ["python", "train.py", "--optim.max_steps", "100", "--output.dir",
                                               str(tmp_path / name)]})
    t0 = time.monotonic()
    gpu_zoo.finish_runs(runs, tmp_path, tmp_path, seconds=15.0)  # room for a slow start on a loaded machine
    quick, hung = runs
    assert quick["finish_ended"] == "finished" and quick["returncode"] == 0
    assert hung["finish_ended"] in ("stopped", "killed") and hung["returncode"] != 0
    assert "--optim.max_steps 40" in quick["finish_command"] and "--resume latest" in quick["finish_command"]
    assert time.monotonic() - t0 < 15.0 + 3.0  # within `seconds`, their stop included, whatever the runs do


def test_the_zoo_signals_its_four_runs_together_at_the_deadline(tmp_path, monkeypatch):
    """run_all waited for one run after another: the second got SIGTERM only once the first had ended, up to
    GRACE_S + TERM_S (90 s) later, and the fourth ~270 s past a deadline that keeps 140 s for the rest."""
    monkeypatch.setattr(gpu_run, "TERM_S", 2.0)
    names = [name for name, *_ in gpu_zoo.ZOO]
    body = ("signal.signal(signal.SIGTERM, lambda *_: (READY.parent / 'term').write_text(repr(time.time()))); "
            "READY.touch(); time.sleep(120)")  # checkpoints at SIGTERM, then hangs: killed TERM_S later
    fakes = {str(tmp_path / name): fake_train(tmp_path, name, body) for name in names}

    def fake_start(cmd: list[str], log) -> subprocess.Popen:
        folder = cmd[cmd.index("--output.dir") + 1]
        proc = subprocess.Popen(fakes[folder], stdout=log, stderr=subprocess.STDOUT, process_group=0)
        while not (Path(folder) / "ready").is_file() and proc.poll() is None:  # its SIGTERM handler is set
            time.sleep(0.05)
        return proc

    monkeypatch.setattr(gpu_run, "start_run", fake_start)
    runs = [{"name": name, "flags": []} for name in names]
    window = gpu_run.Window("call3", 600.0, 500.0, 95.0, gpu_zoo.TAIL_S)  # the runs' deadline: now
    t0 = time.monotonic()
    gpu_zoo.run_all(runs, {name: 8 for name in names}, tmp_path, tmp_path / "logs", window)
    waited = time.monotonic() - t0
    signalled = [float((tmp_path / name / "term").read_text()) for name in names]
    assert max(signalled) - min(signalled) < 1.0, "the runs were signalled one after another"
    assert [(r["stopped_at_deadline"], r["returncode"]) for r in runs] == [(True, -9)] * 4
    assert waited < 2 * gpu_run.TERM_S + 3.0  # one TERM_S for all, not one each


def test_the_zoo_call_writes_its_summary_after_each_run(tmp_path, monkeypatch):
    """gpu_zoo's call 3 end to end on the CPU, train.py stood in for by processes that write a history: the four
    runs start, end, and the summary, report and joined logs come back, written again after each model."""
    monkeypatch.setattr(gpu, "setup", lambda call, device, need_datasets: {"plan": "test"})
    monkeypatch.setattr(gpu_stage, "DEVICE_DATA", tmp_path / "device_data")
    monkeypatch.setattr(gpu_run, "RESULTS", tmp_path / "device_data" / "results")
    monkeypatch.setattr(gpu_zoo, "REPORT", tmp_path / "out" / "gpu_zoo.md")
    started = []

    def fake_start(cmd: list[str], log) -> subprocess.Popen:
        folder = Path(cmd[cmd.index("--output.dir") + 1])
        steps = int(cmd[cmd.index("--optim.max_steps") + 1])
        started.append(folder.name)
        entries = "".join(json.dumps({"step": s, "samples_per_s": 10.0 * s}) + "\n" for s in range(1, steps + 1))
        script = (f"import pathlib; f = pathlib.Path({str(folder)!r}); f.mkdir(parents=True, exist_ok=True); "
                  f"(f / 'history.jsonl').write_text({entries!r}); print('trained')")
        return subprocess.Popen([sys.executable, "-c", script], stdout=log, stderr=subprocess.STDOUT,
                                process_group=0)

    monkeypatch.setattr(gpu_run, "start_run", fake_start)
    args = argparse.Namespace(device="cpu", out=str(tmp_path / "out"), budget=600.0, limit=500.0)
    assert gpu_zoo.call3(args) == 0
    names = [name for name, *_ in gpu_zoo.ZOO]
    assert started == names
    summary = json.loads((tmp_path / "out" / "gpu_zoo_device.json").read_text())
    assert [(r["name"], r["steps"], r["returncode"], r["stopped_at_deadline"]) for r in summary["runs"]] == [
        (name, 8, 0, False) for name in names]
    assert all(isinstance(r["command"], str) and "train.py" in r["command"] for r in summary["runs"])
    assert [st["status"] for st in summary["stages"]] == ["done"] * len(summary["stages"])
    logs = (tmp_path / "out" / "train_logs.txt").read_text()
    assert all(f"===== {name}" in logs for name in names) and logs.count("trained") == 4
    assert "bsr-lite-x4" in (tmp_path / "out" / "gpu_zoo.md").read_text()
    assert len(list((tmp_path / "out").iterdir())) <= 8  # what the run tool brings back
    # A failure at the third model (a pack, a full disk) keeps what the first two wrote.
    real_collect = gpu_zoo.collect

    def collect(r: dict, folder: Path, out: Path) -> dict:
        if r["name"] == "bsr-lite-x4":
            raise OSError("no space left on device (simulated)")
        return real_collect(r, folder, out)

    monkeypatch.setattr(gpu_zoo, "collect", collect)
    (tmp_path / "out" / "gpu_zoo_device.json").unlink()
    with pytest.raises(OSError, match="simulated"):
        gpu_zoo.call3(args)
    kept = json.loads((tmp_path / "out" / "gpu_zoo_device.json").read_text())
    assert [r["name"] for r in kept["runs"]] == names[:2]
    assert kept["stages"][-1]["stage"] == "collect_bsr-lite-x4" and kept["stages"][-1]["status"] == "failed"


# ---------------------------------------------------------------------------------------------- issue 28, parts 2-3


def _images(root: Path, sizes: dict[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    """Small photo-like PNGs (gradients and noise) at root/<name>; returns their pixels."""
    from PIL import Image

    rng = np.random.default_rng(0)
    made = {}
    for name, (w, h) in sizes.items():
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (w + h)], axis=-1)
        pixels = np.clip(base + rng.integers(-20, 21, size=(h, w, 3)), 0, 255).astype(np.uint8)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / name)
        made[name] = pixels
    return made


@pytest.fixture
def staged(tmp_path):
    """A staging of a tiny data folder, as `python bench/gpu.py stage` makes it (fake wheel files: no download)."""
    source, here = tmp_path / "shared_data", tmp_path / "here"
    originals = _images(source, {"train/T91/t1.png": (130, 100), "train/T91/t2.png": (90, 77),
                                 "train/BSD200/b1.png": (260, 250), "train/BSDS500_test200/c1.png": (250, 254),
                                 "benchmarks/Set5/baby.png": (40, 40), "benchmarks/Set14/x.png": (30, 30),
                                 "benchmarks/BSD100/y.png": (30, 30)})
    (here / "wheels").mkdir(parents=True)
    for pin in gpu_stage.WHEEL_PINS:
        name, version = pin.split("==")
        (here / "wheels" / f"{name}-{version}-py3-none-any.whl").write_bytes(pin.encode())
    plan = gpu_stage.stage(source, here / "device_data", here / "wheels", part_mib=1.0, log=lambda msg: None)
    return {"source": source, "here": here, "plan": plan, "originals": originals}


def _machine(tmp_path: Path, staged: dict, name: str, carry: list[str]) -> Path:
    """A device checkout's ignored paths: the carried ones copied in (the tree itself plays no part here)."""
    machine = tmp_path / name
    for c in carry:
        shutil.copytree(staged["here"] / c, machine / c)
    (machine / "device_data").mkdir(parents=True, exist_ok=True)
    return machine


def test_packing_round_trip_tiles_unpacked_equal_the_originals(tmp_path, staged):
    """The training images travel as one .npz shard of lossless WebP tiles per part (109 MB of PNG did not fit the
    two calls beside the tree); what a call unpacks must be, pixel for pixel, the crop of the original it names,
    and BSD100 and Set14 must stay here."""
    plan, originals = staged["plan"], staged["originals"]
    assert plan["parts"] == 2 and plan["shrink"] == 1.0
    root = tmp_path / "unpacked"
    seen = {}
    for k in (1, 2):
        part = staged["here"] / "device_data" / f"part_{k}"
        assert {p.relative_to(part).as_posix() for p in part.rglob("*") if p.is_file()} == {
            "MANIFEST.json", f"train_{k}.npz", "benchmarks/Set5/baby.png"}  # no Set14, no BSD100
        written = gpu_stage.unpack_tiles(part / f"train_{k}.npz", root / "train")
        assert {f"train/{n}": e for n, e in written.items()} == {
            n: e for n, e in plan["unpacked"][str(k)].items() if n.startswith("train/")}
        with np.load(part / f"train_{k}.npz") as z:
            boxes = dict(zip(z["names"].tolist(), z["boxes"].tolist()))
        for name, box in boxes.items():
            seen[name] = box
            left, top, right, bottom = box
            original = originals[f"train/{name[:-len('.webp')]}.png"]
            back = gpu_stage.decode_tile((root / "train" / name).read_bytes())
            assert np.array_equal(back, original[top:bottom, left:right]), name
            assert back.shape[0] % 12 == 0 and back.shape[1] % 12 == 0  # whole under x2, x3 and x4 mod-crops
    assert sorted(seen) == ["BSD200/b1.webp", "BSDS500_test200/c1.webp", "T91/t1.webp", "T91/t2.webp"]
    assert seen["BSD200/b1.webp"] == [4, 5, 256, 245]  # centred, sides cut to multiples of 12
    # A set that does not fit is shrunk by area, never below an x4 patch (or the image).
    assert gpu_stage.tile_box(481, 321, shrink=0.5) == (72, 40, 408, 280)
    assert gpu_stage.tile_box(200, 150, shrink=0.1) == (4, 3, 196, 147)


def test_a_call_on_a_fresh_machine_fails_at_once_naming_what_is_lost(tmp_path, staged):
    """Call 2 used the part call 1 left on the warm machine; after an idle gap the machine was a fresh one, and the
    old check only counted PNG files (and exited 0). Now every file is checked against the manifest each part
    carries whole, before anything slow, and the message names the part, the call that carries it and files."""
    fresh = _machine(tmp_path, staged, "fresh", gpu_stage.CARRY["call2"])
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as lost:
        gpu_preflight.check_staged("call2", fresh / "device_data", fresh / "wheels")
    message = str(lost.value)
    assert time.perf_counter() - t0 < 5.0
    assert "device_data/part_1 (carried by call1): not on this machine" in message
    assert any(name in message for name in list(staged["plan"]["unpacked"]["1"])[:3]) and "fresh one" in message
    assert "wheels" not in message.split("missing:")[1]  # they were carried

    # The warm machine: call 1 unpacked part 1; call 2 finds it, and names a file of it that went missing.
    warm = _machine(tmp_path, staged, "warm", gpu_stage.CARRY["call1"])
    gpu_preflight.unpack_parts(staged["plan"], warm / "device_data")
    shutil.rmtree(warm / "device_data" / "part_1")  # not carried again
    for c in gpu_stage.CARRY["call2"]:
        shutil.rmtree(warm / c, ignore_errors=True)
        shutil.copytree(staged["here"] / c, warm / c)
    assert gpu_preflight.check_staged("call2", warm / "device_data", warm / "wheels")["id"] == staged["plan"]["id"]
    victim = next((warm / "device_data" / "data" / "train").rglob("*.webp"))
    victim.write_bytes(victim.read_bytes()[:-1])
    with pytest.raises(SystemExit, match=f"1 of the .* files .*{victim.name}"):
        gpu_preflight.check_staged("call2", warm / "device_data", warm / "wheels")

    # A wheel not carried is named too, in call 1 (which needs no earlier part).
    bare = _machine(tmp_path, staged, "bare", ["device_data/part_1"])
    with pytest.raises(SystemExit, match=r"wheels/: datasets-5\.2\.0-py3-none-any\.whl, dill-"):
        gpu_preflight.check_staged("call1", bare / "device_data", bare / "wheels")


def test_every_deadline_comes_from_the_budget_passed_in(tmp_path):
    """The train call's deadline was a constant (240 s) whatever the lease had left, and the calls' limits added to
    870 s before start-up, transfers and gaps. Now a call works min(limit, budget - margin) - STOP_S, and the limits
    GPU.md gives add up, with the start and transfers, to under the 900 s a lease has."""
    fixed = gpu_run.XFER_S + gpu_run.GAP_S + gpu_run.END_S + gpu_run.SAFETY_S
    assert gpu_run.margin_for(fresh=False) == fixed == 95.0
    w2 = gpu_run.call_window("call2", 600.0, 505.0, fresh=False)
    assert w2.seconds == 505.0 - gpu_run.STOP_S == 475.0 and gpu_run.timeout_for(600.0) == 505
    assert gpu_run.call_window("call2", 480.0, 600.0, fresh=False).seconds == 480.0 - fixed - gpu_run.STOP_S
    assert gpu_run.timeout_for(900.0) == 600 and gpu_run.timeout_for(600.0, reserve_s=300.0) == 205
    w1 = gpu_run.call_window("call1", 900.0, gpu_run.CALL1_LIMIT_S, fresh=True, reserve_s=gpu_run.call1_reserve())
    assert w1.seconds == gpu_run.CALL1_LIMIT_S - gpu_run.STOP_S  # 900 s leaves call 1 its whole limit
    w1_short = gpu_run.call_window("call1", 700.0, gpu_run.CALL1_LIMIT_S, fresh=True,
                                   reserve_s=gpu_run.call1_reserve())
    assert w1_short.seconds == 700.0 - gpu_run.START_S - fixed - gpu_run.call1_reserve() - gpu_run.STOP_S
    with pytest.raises(SystemExit, match=r"call2: budget 300 s less margin 95 s.*under the 240 s it needs"):
        gpu_run.call_window("call2", 300.0, 205.0, fresh=False)
    # The lease, worst case: call 1 runs to its limit after the longest start; call 2 gets what the reply says.
    b1 = 900.0
    b2 = b1 - gpu_run.START_S - gpu_run.CALL1_LIMIT_S - gpu_run.XFER_S
    t2 = gpu_run.timeout_for(b2)
    assert t2 - gpu_run.STOP_S >= gpu_run.CALL_MIN_S["call2"]  # call 2 still trains
    used = gpu_run.START_S + gpu_run.CALL1_LIMIT_S + gpu_run.XFER_S + gpu_run.GAP_S + t2 + gpu_run.XFER_S + gpu_run.END_S
    assert used <= b1 - gpu_run.SAFETY_S
    # Inside call 2: the training deadline leaves the finish run and packing their time, whatever the window.
    args = argparse.Namespace(recipe=BASE_RECIPE, device="cpu", max_steps=None)
    window = gpu_run.Window("call2", 600.0, 505.0, 95.0, 475.0)
    planned = gpu.plan_training(args, window)
    assert planned["max_steps"] == 8 and abs(planned["train_s"] - (475.0 - gpu.TAIL_S)) < 5.0
    # A run stopped at the deadline may take TERM_S to checkpoint and exit; the finish run and packing come after
    # it, not beside it (a slow stop left the finish run ~15 s, and it was killed).
    assert gpu.TAIL_S >= gpu_run.TERM_S + gpu.FINISH_S + gpu.PACK_S
    assert gpu_zoo.TAIL_S >= gpu_run.TERM_S + gpu_zoo.FINISH_S + gpu_zoo.PACK_S


def test_unpack_without_its_arguments_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stop:
        gpu.main(["unpack"])
    assert stop.value.code == 2 and "unpack needs the returned .tar and a new folder" in capsys.readouterr().err


def _history(entries: list[dict]) -> str:
    """history.jsonl as a run killed while appending its last entry leaves it."""
    return "".join(json.dumps(h) + "\n" for h in entries) + '{"step": 99, "samples_per'


def test_a_history_cut_short_by_a_kill_is_read_and_the_start_up_rate_dropped(tmp_path, monkeypatch):
    """Both calls read history.jsonl with json.loads per line: the last line of a SIGKILLed run, cut short,
    crashed the stage. And `sorted(rates)[1:]` dropped the slowest rate, not the first (the start-up's)."""
    entries = [{"step": 2, "samples_per_s": 30.0}, {"step": 4, "samples_per_s": 10.0},
               {"step": 6, "samples_per_s": 20.0}, {"step": 8, "samples_per_s": 100.0}, {"step": 8, "val_psnr": 30.0}]
    # Without the first rate (30, the start-up's): 10, 20, 100, median 20 (dropping the slowest, 10, gave 30).
    folder = tmp_path / "zoo" / "bsr-lite-x2"
    folder.mkdir(parents=True)
    (folder / "history.jsonl").write_text(_history(entries))
    r = gpu_zoo.collect({"name": "bsr-lite-x2", "command": ["python", "train.py"]}, folder, tmp_path)
    assert (r["steps"], r["samples_per_s_median"]) == (8, 20.0)

    output, calls = tmp_path / "base", []

    def run_with_deadline(cmd, deadline_s, logfile, model_written, grace_s=None, term_s=None):
        calls.append(cmd)
        if len(calls) == 1:  # stopped at the deadline, a checkpoint at step 6, its last history line cut short
            (output / "checkpoints" / "step_6").mkdir(parents=True)
            (output / "history.jsonl").write_text(_history(entries[:3]))
            return 0, True
        (output / "history.jsonl").write_text(_history(entries))  # the finish run
        return 0, False

    monkeypatch.setattr(gpu_run, "run_with_deadline", run_with_deadline)
    window = gpu_run.Window("call2", 600.0, 505.0, 95.0, 475.0)
    cmd_of = lambda folder, max_steps=100: ["python", "train.py", "--optim.max_steps", str(max_steps), "--output.dir",
                                           str(folder)]
    result = gpu.train_model("bsr-base-x2", output, cmd_of, 300.0, tmp_path / "train.log", window)
    assert (result["steps"], result["samples_per_s_median"], result["val_psnr_last"]) == (8, 20.0, 30.0)
    assert calls[1] == ["python", "train.py", "--optim.max_steps", "6", "--output.dir", str(output), "--resume",
                        "latest", "--resume_allow_changes"]


STAGE_SCRIPT = """
import pathlib, sys, time
sys.path.insert(0, {bench!r})
import gpu_report, gpu_run
gpu_run.RESULTS = pathlib.Path({results!r})
window = gpu_run.call_window("call2", 600.0, 505.0, fresh=False)
stages = gpu_run.Stages("call2", pathlib.Path({out!r}), gpu_report.render, window)
stages.run("setup", lambda: {{"plan": "x", "check_s": 0.1, "parts_needed": [1, 2], "unpacked_now": [2],
                             "train_tiles": 4, "import": "ok"}})
stages.run("train_plan", lambda: {{"max_steps": 100, "train_s": 300.0, "why": "test", "workers": 1}})
def train():
    pathlib.Path({ready!r}).touch()
    time.sleep(120)
stages.run("train", train)
"""


def test_a_call_killed_midway_leaves_the_stages_it_did_in_out(tmp_path):
    """gpu.md and the results were written at the very end of a call: one killed at its limit returned nothing of
    what it had done. Now each stage's start and end rewrite the report and the results in $OUT (atomically)."""
    out, ready = tmp_path / "out", tmp_path / "ready"
    script = STAGE_SCRIPT.format(bench=str(REPO_ROOT / "bench"), results=str(tmp_path / "results"), out=str(out),
                                 ready=str(ready))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not ready.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.is_file(), proc.stdout.read().decode() if proc.poll() is not None else "no start"
        proc.kill()  # as the run tool kills a call at its timeout_s
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    results = json.loads((out / "gpu_results.json").read_text())
    assert [(s["stage"], s["status"]) for s in results["stages_call2"]["stages"]] == [
        ("setup", "done"), ("train_plan", "done"), ("train", "running")]
    assert results["train_plan"]["max_steps"] == 100
    report = (out / "gpu.md").read_text()
    assert "| call2 | train_plan |" in report and re.search(r"\| call2 \| train \| [0-9:]+ \| running \|", report)
    assert "max_steps 100" in report and "475 s of work" in report
    assert sorted(p.name for p in out.iterdir()) == ["gpu.md", "gpu_results.json"]  # no half-written temp file
