"""Two machines simulated on one: two `accelerate launch` calls with `--num_machines 2 --machine_rank 0|1
--main_process_ip 127.0.0.1` (one CPU process each, gloo), each in a folder of its own that stands in for its
machine. A relative `--output.dir run` (or `-o out`) is then the same path on both "machines" and a different
folder on each, as on machines with disks of their own; an absolute path is a folder both share.

`accelerate launch --cpu` cannot make two machines: its single-process launcher starts each process alone (no
rank, no world size; train.py and upscale now refuse it, tested last). The machines are therefore launched as
torchrun nodes (`--multi_gpu`) with ACCELERATE_USE_CPU=1, ENVIRONMENT.md's two-process recipe.

Every launch has a deadline, after which both launchers' process groups are killed: a hang fails the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from PIL import Image
from safetensors.torch import load_file

pytest.importorskip("accelerate")
pytest.importorskip("datasets")
sys.path.insert(0, str(REPO_ROOT))
import train

DEBUG = str(REPO_ROOT / "configs" / "debug_cpu.yaml")
TRAIN = [str(REPO_ROOT / "train.py"), "--config", DEBUG, "--validation.steps", "100"]  # validated at the end only
BSR_HUB = str(Path(sys.executable).parent / "bsr-hub")
DEADLINE_S = float(os.environ.get("BSR_TEST_LAUNCH_TIMEOUT", "300"))
"""Per launch of both machines; an idle 2-core machine needs about 25 s for a training run."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_machines(machines: list[Path], *script: str, deadline_s: float = DEADLINE_S) -> list[tuple[int, str]]:
    """Run `script` as machine 0 and machine 1 of a two-machine launch, each with its own working folder; returns
    (exit status, output) per machine. Past the deadline both are killed (their whole process groups) and the test
    fails with what they printed."""
    port = free_port()
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1"}
    procs, logs = [], []
    for rank, folder in enumerate(machines):
        folder.mkdir(parents=True, exist_ok=True)
        logs.append(folder.parent / f"{folder.name}.log")  # a file, not a pipe: a full pipe would block it
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--multi_gpu", "--num_machines", "2",
               "--machine_rank", str(rank), "--num_processes", "2", "--main_process_ip", "127.0.0.1",
               "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no", *script]
        with logs[-1].open("w") as log:  # the child keeps its own descriptor
            procs.append(subprocess.Popen(cmd, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
    end = time.monotonic() + deadline_s
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, end - time.monotonic()))
    except subprocess.TimeoutExpired:
        for proc in procs:
            kill_tree(proc)
        pytest.fail(f"the two machines did not finish within {deadline_s:.0f} s (a hang?):\n"
                    + "\n".join(f"--- machine {r}:\n{log.read_text()[-3000:]}" for r, log in enumerate(logs)))
    return [(proc.returncode, log.read_text()) for proc, log in zip(procs, logs)]


def kill_tree(proc: subprocess.Popen) -> None:
    """The launcher and everything under it: torchrun starts each worker in a session of its own, out of reach of
    a signal to the launcher's process group."""
    import psutil

    try:
        family = [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    proc.wait()


def assert_ok(results: list[tuple[int, str]]) -> None:
    for rank, (code, output) in enumerate(results):
        assert code == 0, f"machine {rank} exited {code}:\n{output[-4000:]}"


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert not [k for k in a if not torch.equal(a[k], b[k])], "weights differ"


def loss_steps(run: Path) -> list[int]:
    return [h["step"] for h in map(json.loads, (run / "history.jsonl").read_text().splitlines()) if "loss" in h]


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def state_files(checkpoint: Path) -> list[str]:
    return sorted(p.name for p in (checkpoint / "state").iterdir())


def assert_records_written_once(run: Path) -> None:
    """The model and its records are the main process's, once: every step's loss once in the history, two
    processes in training.json that drew different batches."""
    for name in ("model.safetensors", "training.json", "README.md", "eval_results.json", "training_curve.png"):
        assert (run / "model" / name).is_file(), name
    assert loss_steps(run) == [1, 2, 3, 4]
    training = json.loads((run / "model" / "training.json").read_text())
    assert [p["rank"] for p in training["processes"]] == [0, 1]
    assert training["processes"][0]["batches_sha256"] != training["processes"][1]["batches_sha256"]
    assert "2 CPU process(es)" in training["hardware"]


def no_leftovers(folder: Path) -> list[str]:
    """Interrupted checkpoint writes and the disk check's markers: none may stay behind."""
    return [f for f in files_under(folder) if ".tmp-" in f or ".bsr-disk-check-" in f]


def forget_the_last_steps(*runs: Path) -> None:
    """As if the run had stopped after its step-2 checkpoint: its step-4 checkpoint and model gone everywhere."""
    import shutil

    for run in runs:
        shutil.rmtree(run / "checkpoints" / "step_4")
        shutil.rmtree(run / "model", ignore_errors=True)


@pytest.mark.slow
def test_machines_with_disks_of_their_own_each_keep_a_copy_and_resume_exactly(tmp_path):
    """--output.save_on_each_node with a disk per machine: both finish with one model (the same weights in both
    machines' checkpoints, bit for bit), the model and records are written once, by the main process, and each
    machine's checkpoints hold its own random states; deleting the last steps and resuming gives the same weights."""
    machines = [tmp_path / "machine0", tmp_path / "machine1"]
    runs = [m / "run" for m in machines]
    flags = [*TRAIN, "--output.dir", "run", "--optim.max_steps", "4", "--output.checkpointing_steps", "2",
             "--output.save_on_each_node"]
    assert_ok(launch_two_machines(machines, *flags))

    assert_records_written_once(runs[0])
    assert not (runs[1] / "model").exists() and not (runs[1] / "history.jsonl").exists()
    for rank, run in enumerate(runs):
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_2", "step_4"]
        assert f"random_states_{rank}.pkl" in state_files(run / "checkpoints" / "step_4")
        assert f"random_states_{1 - rank}.pkl" not in state_files(run / "checkpoints" / "step_4")
        assert not no_leftovers(run), no_leftovers(run)
    final = weights(runs[0] / "model")
    for run in runs:
        assert_same_weights(weights(run / "checkpoints" / "step_4" / "model"), final)
    trainer = [json.loads((run / "checkpoints" / "step_4" / "trainer.json").read_text()) for run in runs]
    assert trainer[0] == trainer[1]  # one record, sent to both machines' copies

    forget_the_last_steps(*runs)
    results = launch_two_machines(machines, *flags, "--resume", "latest")
    assert_ok(results)
    assert "resumed from run/checkpoints/step_2 at step 2" in results[0][1]
    assert_same_weights(weights(runs[0] / "model"), final)
    assert_records_written_once(runs[0])
    assert not (runs[1] / "model").exists()


@pytest.mark.slow
def test_machines_sharing_one_folder_write_one_copy_and_resume_exactly(tmp_path):
    """One folder both machines see (an absolute --output.dir): each checkpoint is written once, even with
    --output.save_on_each_node (both machines' random states in it, nothing half-written), the records once; a
    resume without the flag continues it to the same weights."""
    machines = [tmp_path / "machine0", tmp_path / "machine1"]
    run = tmp_path / "shared" / "run"
    flags = [*TRAIN, "--output.dir", str(run), "--optim.max_steps", "4", "--output.checkpointing_steps", "2"]
    assert_ok(launch_two_machines(machines, *flags, "--output.save_on_each_node"))

    assert_records_written_once(run)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_2", "step_4"]
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(state_files(run / "checkpoints" / "step_4"))
    assert not no_leftovers(run), no_leftovers(run)
    assert not [m for m in machines if list(m.iterdir())]  # nothing in the machines' own folders
    final = weights(run / "model")

    forget_the_last_steps(run)
    assert_ok(launch_two_machines(machines, *flags, "--resume", "latest"))
    assert_same_weights(weights(run / "model"), final)
    assert_records_written_once(run)


@pytest.mark.slow
def test_a_machine_without_the_checkpoint_stops_both_naming_it(tmp_path):
    """Disks of their own without --output.save_on_each_node: training warns that only the main machine keeps
    checkpoints, and the other machine writes nothing. A resume then stops both machines at once, each with one
    line naming the checkpoint and the machine that lacks it, and the way out; no hang, no traceback."""
    machines = [tmp_path / "machine0", tmp_path / "machine1"]
    runs = [m / "run" for m in machines]
    flags = [*TRAIN, "--output.dir", "run", "--optim.max_steps", "2", "--output.checkpointing_steps", "2"]
    results = launch_two_machines(machines, *flags)
    assert_ok(results)
    assert "node 1 (process 1 on" in results[0][1] and "--output.save_on_each_node keeps a copy" in results[0][1]
    assert (runs[0] / "model" / "model.safetensors").is_file()
    assert (runs[0] / "checkpoints" / "step_2" / "trainer.json").is_file()
    assert not runs[1].exists()  # no stray state, no half-written checkpoint on the other machine

    start = time.monotonic()
    results = launch_two_machines(machines, *flags, "--resume", "latest")
    took = time.monotonic() - start
    lacking = runs[1].resolve() / "checkpoints" / "step_2" / "trainer.json"
    for rank, (code, output) in enumerate(results):
        assert code != 0, f"machine {rank} resumed without the checkpoint:\n{output[-3000:]}"
        errors = [line for line in output.splitlines() if line.startswith("error: ")]
        assert errors, output[-3000:]
        assert errors[0].startswith("error: cannot resume from run/checkpoints/step_2: node 1 (process 1 on")
        assert f"has no {lacking}" in errors[0] and "--output.save_on_each_node" in errors[0]
        assert "Traceback" not in output, output[-3000:]
    print(f"both machines stopped {took:.1f} s after the launch")


def make_images(folder: Path, count: int = 7) -> Path:
    rng = np.random.default_rng(0)
    for i in range(count):
        target = folder / ("sub" if i == count - 1 else "") / f"img{i}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (12 + i, 16, 3), dtype=np.uint8)).save(target)
    return folder


def pixels(folder: Path) -> dict[str, np.ndarray]:
    return {f: np.asarray(Image.open(folder / f)) for f in files_under(folder)}


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["shared", "own disks"])
def test_upscale_over_two_machines_writes_each_file_once(tmp_path, tiny_checkpoint, layout):
    """`bsr-hub upscale` over two machines: every file written exactly once (the counts add up to the files, no
    file in both machines' folders, nothing half-written), the same pixels as one process."""
    from bsr_hub.commands.main import main

    images = make_images(tmp_path / "in")
    assert main(["upscale", str(images), "-o", str(tmp_path / "one"), "--model", str(tiny_checkpoint), "-q"]) == 0
    reference = pixels(tmp_path / "one")
    machines = [tmp_path / "machine0", tmp_path / "machine1"]
    out = str(tmp_path / "shared") if layout == "shared" else "out"
    results = launch_two_machines(machines, BSR_HUB, "upscale", str(images), "-o", out, "--model",
                                  str(tiny_checkpoint), "-q")
    assert_ok(results)
    assert "7 upscaled into" in results[0][1] and "by 2 processes" in results[0][1], results[0][1][-2000:]
    if layout == "shared":
        assert pixels(tmp_path / "shared").keys() == reference.keys()
        written = [pixels(tmp_path / "shared")]
    else:
        written = [pixels(m / "out") for m in machines]
        assert written[0] and written[1] and not written[0].keys() & written[1].keys()  # shared out, not doubled
        assert written[0].keys() | written[1].keys() == reference.keys()
    for share in written:
        for name, image in share.items():
            assert np.array_equal(image, reference[name]), name


@pytest.mark.slow
@pytest.mark.parametrize("lacking", ["model", "inputs"])
def test_upscale_stops_both_machines_when_one_lacks_what_the_other_has(tmp_path, tiny_checkpoint, lacking):
    """A --model folder, or input files, on one machine's own disk only: both machines stop (upscale's exit status
    2, which the launcher reports and turns into its 1) with one line naming what differs and where, instead of one
    waiting for the other or files done twice."""
    import shutil

    machines = [tmp_path / "machine0", tmp_path / "machine1"]
    shutil.copytree(tiny_checkpoint, machines[0] / "tiny")
    make_images(machines[0] / "in")
    if lacking == "inputs":
        shutil.copytree(tiny_checkpoint, machines[1] / "tiny")
        make_images(machines[1] / "in", count=6)
    results = launch_two_machines(machines, BSR_HUB, "upscale", "in", "-o", "out", "--model", "./tiny", "-q")
    for rank, (code, output) in enumerate(results):
        assert code == 1, f"machine {rank} exited {code}:\n{output[-3000:]}"  # the launcher's status for the 2
        assert "exitcode  : 2" in output and "Traceback" not in output, output[-3000:]
    if lacking == "model":
        for _, output in results:
            assert "error: on node 1 (process 1 on" in output, output[-3000:]
    else:
        assert "error: the processes did not plan the same files (node 0 (process 0 on" in results[0][1]
        assert "7 files; node 1 (process 1 on" in results[0][1] and "6 files)" in results[0][1]
    assert not [f for m in machines for f in files_under(m) if f.startswith("out/")]  # nothing written


def test_a_launch_that_starts_each_process_alone_is_refused(tmp_path, monkeypatch, tiny_checkpoint, capsys):
    """`accelerate launch --cpu --num_machines 2` (or --num_processes 2 without --multi_gpu on a CPU) starts each
    process alone with MASTER_ADDR set and no WORLD_SIZE: every one would train, or upscale every file, as the
    only process. train.py, upscale and eval stop, saying how to launch."""
    from bsr_hub.commands.main import main
    from bsr_hub.core import check_launch

    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    with pytest.raises(SystemExit, match="started this process alone .* --multi_gpu"):
        train.main(["--config", DEBUG, "--output.dir", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()
    assert main(["upscale", str(make_images(tmp_path / "in")), "-o", str(tmp_path / "out"), "--model",
                 str(tiny_checkpoint), "-q"]) == 2
    assert "started this process alone" in capsys.readouterr().err and not (tmp_path / "out").exists()
    results = tmp_path / "results.json"
    assert main(["eval", "--model", str(tiny_checkpoint), "--benchmarks", "Set5", "--data-dir", str(tmp_path),
                 "--output", str(results), "-q"]) == 2  # each process would score every image alone
    assert "started this process alone" in capsys.readouterr().err and not results.exists()
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun's processes
    check_launch()
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("MASTER_ADDR")  # `accelerate launch --cpu` of one process sets no MASTER_ADDR
    check_launch()
