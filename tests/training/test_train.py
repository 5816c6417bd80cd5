"""train.py end to end on the CPU with a tiny model and the bundled photos: outputs, exact resume, crash safety,
two synchronised processes. Everything runs for real; the Hub push is tests/training/test_train_hub.py's, through the
test Hub (tests/hub_server.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT
from safetensors.torch import load_file

pytest.importorskip("accelerate")
pytest.importorskip("datasets")
sys.path.insert(0, str(REPO_ROOT))
import train

DEBUG = str(REPO_ROOT / "configs" / "debug_cpu.yaml")


def run(out: Path, *flags: str) -> int:
    return train.main(["--config", DEBUG, "--output.dir", str(out), *flags])


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model" / "model.safetensors")


def checkpoint_steps(out: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*"))


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ: {different}"


def test_a_short_run_writes_model_card_curve_and_rotates_checkpoints(tmp_path):
    out = tmp_path / "run"
    assert run(out, "--optim.max_steps", "8", "--output.checkpointing_steps", "2", "--output.checkpoints_total_limit", "2") == 0
    assert checkpoint_steps(out) == [6, 8]  # 2 and 4 rotated away
    model_dir = out / "model"
    for name in ("config.json", "model.safetensors", "README.md", "training_curve.png", "training.json",
                 "training_config.yaml", "eval_results.json"):
        assert (model_dir / name).is_file(), name
    card = (model_dir / "README.md").read_text()
    assert "astronaut held out" in card and "accelerate launch train.py --config" in card
    from bsr_hub.models.records import TrainingRecord

    record = TrainingRecord.load(model_dir / "training.json")
    from bsr_hub.core.examples import example_images

    assert record.steps == 8 and record.datasets[0].images == len(example_images()) - 1  # astronaut held out
    (stage,) = record.lineage  # from scratch: one stage, this run
    assert stage.init_from is None and stage.steps == 8 and stage.batch == 4 and stage.wall_time_s > 0
    assert record.total_wall_time_s == stage.wall_time_s and "CPU" in stage.hardware
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history if "loss" in h] == list(range(1, 9))
    assert any("val_psnr" in h for h in history)
    from bsr_hub import BSRModel

    assert BSRModel.from_pretrained(out / "checkpoints" / "step_8" / "model").config.num_features == 8


def test_resume_is_exact(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run(straight, "--optim.max_steps", "6") == 0
    assert run(resumed, "--optim.max_steps", "6", "--output.checkpointing_steps", "3") == 0
    # Stop after 3 of 6: delete what came after the step-3 checkpoint, then resume from "latest".
    import shutil

    shutil.rmtree(resumed / "checkpoints" / "step_6")
    shutil.rmtree(resumed / "model")
    assert checkpoint_steps(resumed) == [3]
    assert run(resumed, "--optim.max_steps", "6", "--output.checkpointing_steps", "3", "--resume", "latest") == 0
    assert_bitwise_equal(final_weights(straight), final_weights(resumed))
    history = [json.loads(line) for line in (resumed / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4, 5, 6]  # no duplicated steps


def test_a_crash_while_saving_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    from accelerate import Accelerator

    out = tmp_path / "run"
    real_save_state = Accelerator.save_state
    calls = []

    def crash_on_second(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        real_save_state(self, output_dir, **kwargs)
        if len(calls) == 2:  # a crash, not an OSError: a failed write is answered in words (the next test)
            raise RuntimeError("the process died while saving (simulated, after the state was half written)")

    monkeypatch.setattr(Accelerator, "save_state", crash_on_second)
    with pytest.raises(RuntimeError, match="died while saving"):
        run(out, "--optim.max_steps", "6", "--output.checkpointing_steps", "3")
    assert checkpoint_steps(out) == [3]  # the half-written step 6 never got its name
    assert (out / "checkpoints" / ".tmp-step_6").is_dir()
    monkeypatch.setattr(Accelerator, "save_state", real_save_state)
    assert run(out, "--optim.max_steps", "6", "--output.checkpointing_steps", "3", "--resume", "latest") == 0
    assert not (out / "checkpoints" / ".tmp-step_6").exists()
    straight = tmp_path / "straight"
    assert run(straight, "--optim.max_steps", "6") == 0
    assert_bitwise_equal(final_weights(straight), final_weights(out))


@pytest.fixture
def small_disk(tmp_path):
    """A real filesystem of 320 KiB (tmpfs): room for one checkpoint of the debug model (about 204 KiB) and the
    history, not for a second. Needs the right to mount (root in a container, as CI runs); skips otherwise."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=320k", "tmpfs", str(mount)], capture_output=True, text=True,
                          check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here to fill up ({made.stderr.strip() or 'not permitted'})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_at_a_checkpoint_ends_in_one_line_and_keeps_the_last_one(small_disk, tmp_path):
    out = small_disk / "run"
    flags = ("--optim.max_steps", "6", "--output.checkpointing_steps", "3")
    with pytest.raises(SystemExit) as stopped:
        run(out, *flags)
    message = str(stopped.value.code)
    assert message.startswith("error: could not write the checkpoint of step 6") and "\n" not in message
    assert "No space left on device" in message and str(out / "checkpoints" / "step_3") in message
    assert "--resume latest" in message
    assert checkpoint_steps(out) == [3] and not (out / "checkpoints" / ".tmp-step_6").exists()  # space given back
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # the user frees some space
    assert run(out, *flags, "--resume", "latest") == 0
    straight = tmp_path / "straight"
    assert run(straight, *flags) == 0
    assert_bitwise_equal(final_weights(straight), final_weights(out))


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def test_sigterm_saves_and_resume_is_exact(tmp_path):
    out, straight = tmp_path / "run", tmp_path / "straight"
    steps = "400"
    proc = subprocess.Popen(
        [sys.executable, "train.py", "--config", DEBUG, "--output_dir", str(out), "--optim.max_steps", steps,
         "--output.checkpointing_steps", "1000", "--validation.steps", "1000"],
        cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    history = out / "history.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not history.is_file() or len(history.read_text().splitlines()) < 5):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert "resume with:" in output and "--resume latest" in output
    (stopped_at,) = checkpoint_steps(out)
    assert 5 <= stopped_at < int(steps)
    assert not (out / "model").exists()  # stopped early: no final model pretending to be done
    assert run(out, "--optim.max_steps", steps, "--output.checkpointing_steps", "1000", "--validation.steps", "1000",
               "--resume", "latest") == 0
    assert run(straight, "--optim.max_steps", steps, "--output.checkpointing_steps", "1000", "--validation.steps", "1000") == 0
    assert_bitwise_equal(final_weights(straight), final_weights(out))


def test_two_processes_train_one_model_on_different_batches(tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        "train.py", "--config", DEBUG, "--output_dir", str(out), "--max_steps", "4",
    ]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    training = json.loads((out / "model" / "training.json").read_text())
    ranks = training["processes"]
    assert [r["rank"] for r in ranks] == [0, 1]  # two real processes, not one
    assert ranks[0]["batches_sha256"] != ranks[1]["batches_sha256"]
    # train.py gathers a checksum of every process's weights and fails if they differ; it passed.
    assert "2 CPU process(es)" in training["hardware"]


def test_fp16_on_cpu_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit, match="fp16 needs a GPU; on a CPU use bf16"):
        run(tmp_path / "x", "--optim.mixed_precision", "fp16")


@pytest.mark.parametrize("how", ["flag", "recipe"])
def test_bf16_on_cpu_trains_and_is_recorded(tmp_path, capsys, how):
    """bf16 autocast on a CPU works from the flag and from the recipe, and the card's hardware row says so. On a
    CPU without native bf16 the run warns that fp32 is faster there."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    import yaml

    from bsr_hub.core.cpu import has_native_bf16

    out = tmp_path / "run"
    args = ["--optim.max_steps", "2", "--output.checkpointing_steps", "100", "--validation.steps", "100"]
    if how == "flag":
        assert run(out, "--optim.mixed_precision", "bf16", *args) == 0
    else:
        recipe = yaml.safe_load(Path(DEBUG).read_text())
        recipe.setdefault("optim", {})["mixed_precision"] = "bf16"
        (tmp_path / "bf16.yaml").write_text(yaml.safe_dump(recipe))
        assert train.main(["--config", str(tmp_path / "bf16.yaml"), "--output.dir", str(out), *args]) == 0
    training = json.loads((out / "model" / "training.json").read_text())
    assert "bf16 autocast" in training["hardware"]
    assert "bf16 autocast" in (out / "model" / "README.md").read_text()
    err = capsys.readouterr().err
    assert ("has no native bf16" in err) == (not has_native_bf16())
    # Validation scores the network that is shipped, in fp32: at the last step it is the saved model, which the
    # final evaluation loads from disk and scores on the same photo (issue 28: the EMA copy kept bf16 autocast).
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    validated = [h["val_psnr"] for h in history if "val_psnr" in h]
    (final,) = json.loads((out / "model" / "eval_results.json").read_text())["results"]
    assert validated and abs(validated[-1] - final["psnr"]) < 1e-9, (validated[-1], final["psnr"])


def test_auto_precision_is_settled_for_this_cpu_and_recorded(tmp_path, capsys):
    """`optim.mixed_precision auto` trains in bf16 autocast on a CPU with native bf16 and in fp32 elsewhere; the run
    says which, and its recipe and card record the settled value, so that a resume on this machine matches it."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    import yaml

    from bsr_hub.core.cpu import has_native_bf16

    out = tmp_path / "run"
    assert run(out, "--optim.mixed_precision", "auto", "--optim.max_steps", "2", "--output.checkpointing_steps",
               "100", "--validation.steps", "100") == 0
    native = has_native_bf16()
    training = json.loads((out / "model" / "training.json").read_text())
    assert ("bf16 autocast" in training["hardware"]) == native, training["hardware"]
    assert yaml.safe_load(training["recipe"])["optim"]["mixed_precision"] == ("bf16" if native else "no")
    assert f"optim.mixed_precision auto: {'bf16 autocast' if native else 'fp32'} on this CPU" in capsys.readouterr().err


def test_auto_precision_is_said_once_per_machine(monkeypatch, capsys):
    """Every process settles `auto` for itself (machines may differ); the first of each machine says so."""
    cfg, _ = train.read_settings(["--config", DEBUG, "--optim.mixed_precision", "auto"])
    monkeypatch.setenv("LOCAL_RANK", "1")
    settled = train.settle_precision(cfg).optim.mixed_precision
    assert settled in ("bf16", "no") and "optim.mixed_precision auto" not in capsys.readouterr().err
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert train.settle_precision(cfg).optim.mixed_precision == settled
    assert "optim.mixed_precision auto" in capsys.readouterr().err


@pytest.mark.parametrize(("requested", "cuda", "native", "settled"), [
    ("auto", False, True, "bf16"), ("auto", False, False, "no"), ("auto", True, True, "bf16"),
    ("auto", True, False, "no"), ("bf16", False, False, "bf16"), ("no", False, True, "no"), ("fp16", True, False, "fp16"),
])
def test_settle_mixed_precision(requested, cuda, native, settled):
    from bsr_hub.training.precision import settle_mixed_precision

    assert settle_mixed_precision(requested, cuda=cuda, native_bf16=native) == settled
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        settle_mixed_precision("fp16", cuda=False, native_bf16=native)


def test_validation_runs_the_fp32_network_and_gives_the_mixed_precision_wrapper_back():
    """Accelerate's bf16 wrapper is taken off the live model for validation (the shipped network is fp32, and the
    graph backends cannot trace its casts) and put back for the rest of the run; the EMA copy never has it."""
    from accelerate import Accelerator

    from bsr_hub import BSRModel
    from bsr_hub.training.optim import EMA, fp32_forward

    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    model = accelerator.prepare(BSRModel.from_preset("bsr-tiny", scale=2))
    seen: list[torch.dtype] = []
    model.head.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    x = torch.rand(1, 3, 8, 8)

    model(x)
    with fp32_forward(model) as plain:
        plain(x)
    model(x)
    EMA(model, 0.9).model(x)
    assert seen == [torch.bfloat16, torch.float32, torch.bfloat16, torch.float32]


def test_recipe_errors_are_clear(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    for text, match in [
        ("optim:\n  learning_rat: 0.1\n", r"optim.*unknown setting.*learning_rat.*known:.*learning_rate"),
        ("learning_rat: 0.1\n", "unknown setting.*learning_rat"),
        ("optim: 0.1\n", "optim is a section, a mapping of its settings"),
        ("scale: 3\nrfs:\n  scale: 2\n", "scale is set once, at the top of a recipe"),
        ("max_steps: 3\noptim:\n  max_steps: 4\n", "optim.max_steps is given twice"),
        ("sampler: rfs\n", "sampler must be one of.*new spelling is rfs.mode"),
        ("[1, 2]\n", "must be a mapping of settings"),
    ]:
        bad.write_text(text)
        with pytest.raises(SystemExit, match=f"^error: .*{match}"):  # one line, not a traceback
            train.main(["--config", str(bad)])
    with pytest.raises(SystemExit):
        run(tmp_path / "x", "--rfs.mode", "rfs")
    assert "invalid choice: 'rfs'" in capsys.readouterr().err


def test_push_to_hub_fails_fast_when_the_hub_is_unreachable(tmp_path):
    start = time.perf_counter()
    with pytest.raises(SystemExit, match="cannot create or reach me/bsr-test"):
        run(tmp_path / "x", "--output.push_to_hub", "--output.hub_model_id", "me/bsr-test")
    assert time.perf_counter() - start < 30
    assert not (tmp_path / "x" / "checkpoints").exists()  # failed before any training


def test_a_run_on_your_own_images_is_named_by_the_run_and_says_what_it_does_not_validate(tmp_path, monkeypatch,
                                                                                          capsys):
    """Issue 20, items 1 and 2: a model trained on a user's folder is not called bsr-lite-x2, is flagged where it is
    below bicubic, has no local path in its card; and a run without a validation folder says so at the start."""
    from conftest import write_benchmark_images
    from huggingface_hub import ModelCard

    monkeypatch.chdir(tmp_path)  # relative paths, as a user types them
    write_benchmark_images(tmp_path / "my_images", count=4, grey=False)
    write_benchmark_images(tmp_path / "bench" / "Syn", count=2, grey=False, seed=3)
    assert run(Path("my-run"), "--data.train_dir", "my_images", "--validation.eval_dirs", "bench/Syn",
               "--optim.max_steps", "2") == 0
    out = capsys.readouterr().out
    notice = next(line for line in out.splitlines() if "no --validation.dir" in line)
    assert notice.startswith("warning: --data.train_dir my_images with no --validation.dir: nothing is validated")
    assert "--validation.dir FOLDER" in notice and "own images moved out of the training folder" in notice
    assert out.index(notice) < out.index("Syn x2: PSNR")  # said at the start, not after the run
    assert "-- below bicubic: flagged in the card" in out  # two steps from scratch: far below bicubic

    model_dir = tmp_path / "my-run" / "model"
    card = ModelCard.load(model_dir / "README.md")
    assert card.text.lstrip().startswith("# my-run\n") and card.data.model_name == "my-run"
    assert json.loads((model_dir / "eval_results.json").read_text())["model"] == "my-run"
    assert json.loads((model_dir / "training.json").read_text())["lineage"][-1]["model"] == "my-run"
    assert "# bsr-lite-x2" not in card.text
    (syn,) = json.loads((model_dir / "eval_results.json").read_text())["results"]
    assert f"**Below bicubic on Syn** (x2, BI): PSNR {syn['psnr']:.2f} dB against {syn['bicubic_psnr']:.2f} dB" in card.text
    assert 'from_pretrained("path/to/model")' in card.text and str(tmp_path) not in card.text
    assert "pypi.org" not in card.text and "pip install -e ." in card.text


def test_the_no_validation_notice_says_what_is_missing_and_how_to_add_it():
    from bsr_hub.training.config import config_from_dict

    notice = train.validation_notice(config_from_dict({"data": {"train_dir": "my_images"}}))
    assert notice.startswith("warning: --data.train_dir my_images with no --validation.dir")
    assert "nothing is evaluated at the end" in notice and '"Not evaluated yet"' in notice
    assert "--validation.dir FOLDER" in notice and f"holds out the bundled {train.HELD_OUT_PHOTO} photo" in notice
    assert "--data.dataset_name me/photos" in train.validation_notice(config_from_dict({"data": {"dataset_name": "me/photos"}}))
    assert train.validation_notice(config_from_dict({})) is None  # the bundled photos: one is held out
    assert train.validation_notice(config_from_dict({"data": {"train_dir": "x"}, "validation": {"dir": "v"}})) is None


def test_a_run_is_named_by_its_hub_id_else_its_output_folder():
    from bsr_hub.training.config import config_from_dict

    assert config_from_dict({"output": {"dir": "runs/faces-x2"}}).model_name == "faces-x2"
    assert config_from_dict({"output": {"dir": "runs/faces-x2", "hub_model_id": "me/faces"}}).model_name == "me/faces"


def test_init_from_x2_weights_for_x4_reports_what_was_not_loaded(tmp_path, capsys):
    assert run(tmp_path / "x2", "--optim.max_steps", "2") == 0
    assert run(tmp_path / "x4", "--optim.max_steps", "2", "--scale", "4", "--model.init_from", str(tmp_path / "x2" / "model")) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("initialised from"))
    # x4 has a second x2 stage (upsampler.2) that x2 lacks: it keeps its fresh initialisation.
    assert "upsampler.2.weight" in line and "upsampler.2.bias" in line and "head.weight" not in line


# ---------------------------------------------------------------------------------------------- resume guard


def test_resume_with_changed_settings_fails_naming_each_field(tmp_path):
    out = tmp_path / "run"
    assert run(out, "--optim.max_steps", "3", "--output.checkpointing_steps", "3") == 0
    with pytest.raises(SystemExit) as err:
        run(out, "--optim.max_steps", "6", "--resume", "latest", "--rfs.batch_size", "2", "--optim.learning_rate", "0.1")
    message = str(err.value)
    assert "rfs.batch_size: 4 in the checkpoint, 2 now" in message
    assert "optim.learning_rate: 0.0005 in the checkpoint, 0.1 now" in message
    assert "optim.max_steps: 3 in the checkpoint, 6 now" in message
    assert "--resume_allow_changes" in message
    assert checkpoint_steps(out) == [3]  # nothing trained, nothing written


def test_resume_allow_changes_trains_with_the_new_values_and_records_them(tmp_path):
    out = tmp_path / "run"
    assert run(out, "--optim.max_steps", "3", "--output.checkpointing_steps", "3") == 0
    assert run(out, "--optim.max_steps", "5", "--output.checkpointing_steps", "3", "--resume", "latest",
               "--optim.learning_rate", "0.002", "--rfs.index_stride", "2", "--resume_allow_changes") == 0
    from bsr_hub.models.records import TrainingRecord

    record = TrainingRecord.load(out / "model" / "training.json")
    assert record.resume_changes == [
        {"step": 3, "field": "rfs.index_stride", "old": 4, "new": 2},
        {"step": 3, "field": "optim.learning_rate", "old": 0.0005, "new": 0.002},
        {"step": 3, "field": "optim.max_steps", "old": 3, "new": 5},
    ]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    lr_at_4 = next(h["lr"] for h in history if h["step"] == 4 and "lr" in h)
    # The new base rate (0.002, not 5e-4) under the new schedule (decays at 0.5 and 0.75 of 5 steps, not of 3):
    # warm-up (4 + 1) / 50, two decays of 0.5 by step 4.
    assert lr_at_4 == pytest.approx(0.002 * 5 / 50 * 0.5**2)


def test_resume_guard_covers_the_batch_stream_and_schedule():
    from bsr_hub.training.config import TrainConfig, config_from_dict
    from bsr_hub.training.resume import RESUME_GUARDED, resume_changes

    saved = TrainConfig().to_dict()
    harmless = config_from_dict({"optim": {"learning_rate": 5e-4},
                                 "data": {"num_workers": 8}, "output": {"dir": "elsewhere", "logging_steps": 5}})
    assert resume_changes(saved, harmless) == []
    for name, value in [("rfs.batch_size", 2), ("optim.gradient_accumulation_steps", 2), ("rfs.patch_size", 24),
                        ("rfs.mode", "uniform"), ("rfs.tau", 1.0), ("rfs.index_stride", 2), ("loss.lp_p", 1.0),
                        ("optim.learning_rate", 1e-3), ("optim.lr_decay_at", [0.9]),
                        ("optim.lr_decay_factor", 0.1), ("optim.warmup_steps", 0), ("optim.max_steps", 1),
                        ("scale", 3), ("model.preset", "bsr-base"), ("model.overrides", {"use_attention": False}),
                        ("seed", 1), ("data.degradation", "BD")]:
        assert name in RESUME_GUARDED
        section, _, field = name.rpartition(".")
        changed = config_from_dict({section: {field: value}} if section else {name: value})
        old = TrainConfig().flat()[name]
        assert resume_changes(saved, changed) == [(name, old, value)], name


def test_resume_guard_reads_a_checkpoint_written_with_the_flat_names():
    """A checkpoint of bsr_hub 0.1 recorded its config flat; resuming it compares the same settings."""
    from bsr_hub.training.config import TrainConfig, config_from_dict
    from bsr_hub.training.resume import resume_changes

    flat = {"preset": "bsr-lite", "scale": 2, "sampler": "rfs-indexed", "batch_size": 16, "learning_rate": 5e-4,
            "output_dir": "outputs/x", "seed": 0}
    assert resume_changes(flat, TrainConfig()) == []
    assert resume_changes(flat, config_from_dict({"rfs": {"mode": "uniform", "batch_size": 8}})) == [
        ("rfs.mode", "indexed", "uniform"), ("rfs.batch_size", 16, 8)]


# ---------------------------------------------------------------------------------------------- the record


def test_record_names_the_datasets_and_counts_their_images(tmp_path):
    from PIL import Image

    from bsr_hub.training.config import config_from_dict
    from bsr_hub.training.reporting import describe_training_data

    root = tmp_path / "train"
    for folder, n in (("T91", 3), ("BSD200", 2), ("mine", 1)):
        (root / folder).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8)).save(root / folder / f"{i}.png")
    (root / "mine" / "notes.txt").write_text("not an image")
    data = describe_training_data(config_from_dict({"data": {"train_dir": str(root)}}))
    assert [d.describe() for d in data] == ["T91 (3 images; licence none stated, research use)",
                                            "BSD200 = BSDS500 train (2 images; licence none stated, research use)",
                                            "mine (1 image; licence not stated)"]  # every source names its licence


@pytest.mark.skipif(not (REPO_ROOT.parent / "shared" / "data" / "train").is_dir(), reason="no ../shared/data/train")
def test_record_describes_the_shared_training_images():
    from bsr_hub.training.config import config_from_dict
    from bsr_hub.training.reporting import describe_training_data

    data = describe_training_data(config_from_dict({"data": {"train_dir": str(REPO_ROOT.parent / "shared" / "data" / "train")}}))
    assert {d.name: d.images for d in data} == {"T91": 91, "BSD200 = BSDS500 train": 200, "BSDS500 test": 200}


def test_old_training_records_load_as_one_stage(tmp_path):
    from bsr_hub.models.records import TrainingRecord

    old = {"data": "../shared/data/train", "steps": 7000, "wall_time": "1 h 23 min", "hardware": "2 cores",
           "command": "accelerate launch train.py --config configs/lite_x2.yaml",
           "recipe": "preset: bsr-lite\nscale: 2\nbatch_size: 16\ninit_from: null\n", "processes": [{"rank": 0}],
           "something_new": 1}
    (tmp_path / "training.json").write_text(json.dumps(old))
    record = TrainingRecord.load(tmp_path / "training.json")
    (stage,) = record.lineage
    assert (stage.model, stage.steps, stage.batch, stage.wall_time_s) == ("bsr-lite-x2", 7000, 16, 4980.0)
    assert record.total_wall_time_s == 4980.0 and record.extra == {"something_new": 1}
    record.save(tmp_path / "again.json")
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["format"] == 2 and again["something_new"] == 1 and again["total_steps"] == 7000
    assert TrainingRecord.load(tmp_path / "again.json") == record
    with pytest.raises(ValueError, match="cannot read the training record"):
        TrainingRecord.load(tmp_path / "missing.json")


def test_the_bundled_record_loads():
    from bsr_hub.models.hub import bundled_checkpoints
    from bsr_hub.models.records import TrainingRecord

    for name, folder in bundled_checkpoints().items():
        if (folder / "training.json").is_file():
            record = TrainingRecord.load(folder / "training.json")
            assert record.lineage and record.lineage[-1].model == name and record.total_steps > 0


def test_lineage_continues_from_the_weights_a_run_starts_from(tmp_path):
    from bsr_hub.models.records import TrainingRecord

    assert run(tmp_path / "a", "--optim.max_steps", "2") == 0
    assert run(tmp_path / "b", "--optim.max_steps", "3", "--scale", "3", "--model.init_from", str(tmp_path / "a" / "model")) == 0
    a = TrainingRecord.load(tmp_path / "a" / "model" / "training.json")
    b = TrainingRecord.load(tmp_path / "b" / "model" / "training.json")
    assert [s.steps for s in b.lineage] == [2, 3] and b.lineage[0] == a.lineage[0]
    assert b.lineage[1].init_from == str(tmp_path / "a" / "model") and b.lineage[1].model == "b"  # the run's name
    assert b.total_steps == 5 and b.total_wall_time_s == pytest.approx(a.wall_time_s + b.wall_time_s)


def test_loss_terms_stay_on_the_device_until_the_logging_interval():
    from bsr_hub.training.losses import HybridLoss
    from bsr_hub.training.reporting import LossMeter

    torch.manual_seed(0)
    sr, hr = torch.rand(2, 3, 8, 8, requires_grad=True), torch.rand(2, 3, 8, 8)
    meter = LossMeter()
    totals = []
    for step in range(1, 4):
        total, terms = HybridLoss()(sr, hr)
        assert all(isinstance(t, torch.Tensor) and not t.requires_grad for t in terms.values())
        meter.add(total, terms, step)
        totals.append(total.item())
    mean = meter.mean()
    assert set(mean) == {"loss", "l2", "l1", "lp"} and mean["loss"] == pytest.approx(sum(totals) / 3)
    assert meter.mean() == {}  # reset after reading
    assert meter.first_non_finite() is None
    for step, value in ((4, float("inf")), (5, float("nan")), (6, 1.0)):
        meter.add(torch.tensor(value), terms, step)
    assert meter.first_non_finite() == 4  # the first, kept across later steps


def test_weights_check_is_skipped_with_a_message_under_sharding(capsys):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from bsr_hub.training.run import TrainingRun

    fake = SimpleNamespace(distributed_type=DistributedType.FSDP, print=print)
    run_ = TrainingRun.__new__(TrainingRun)
    run_.accelerator = fake
    assert run_.check_same_weights() is None
    assert "weights check skipped: under FSDP" in capsys.readouterr().out


def test_a_model_returned_from_the_gpu_packs_small_and_loads(tmp_path, monkeypatch, tiny_checkpoint):
    monkeypatch.chdir(REPO_ROOT)  # gpu.main works from the repository root; give the test its directory back
    monkeypatch.syspath_prepend(str(REPO_ROOT / "bench"))
    import gpu

    from bsr_hub import BSRModel

    monkeypatch.setattr(gpu, "RETURN_LIMIT", 2**20 + 1000)  # so that even a tiny model takes the fp16 path
    note = gpu.pack_model(tiny_checkpoint, tmp_path / "tiny.tar")
    assert note["weights"].startswith("float16") and note["max_abs_rounding"] < 1e-3
    assert gpu.main(["unpack", str(tmp_path / "tiny.tar"), str(tmp_path / "back")]) == 0
    back, original = BSRModel.from_pretrained(tmp_path / "back"), BSRModel.from_pretrained(tiny_checkpoint)
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert (back(x) - original(x)).abs().max() < 1e-2  # fp16-rounded weights, fp32 arithmetic
    assert (tmp_path / "back" / "packing.json").is_file()


def test_bundling_a_run_names_it_by_the_bundled_name_everywhere(tmp_path, monkeypatch, capsys):
    """bench/bundle.py: a run made as `<name>-stage4` is bundled as `<name>`; the card, eval_results.json and the
    lineage's last stage all say so (test_the_bundled_record_loads checks the package's), and the replaced weights'
    robustness results go, with the commands that re-measure them printed."""
    from bsr_hub.models.records import EvalResults, TrainingRecord

    monkeypatch.syspath_prepend(str(REPO_ROOT / "bench"))
    import bundle

    assert run(tmp_path / "my-model-stage4", "--optim.max_steps", "2") == 0
    checkpoints = tmp_path / "checkpoints"
    old = checkpoints / "my-model"
    old.mkdir(parents=True)
    (old / "robustness_results.json").write_text(json.dumps({"commands": ["python evaluate.py --suite robustness"]}))
    monkeypatch.setattr(bundle, "CHECKPOINTS", checkpoints)

    bundle.main([str(tmp_path / "my-model-stage4"), "my-model"])

    assert TrainingRecord.load(old / "training.json").lineage[-1].model == "my-model"
    assert EvalResults.load(old).model == "my-model"
    assert "my-model-stage4" not in (old / "README.md").read_text().split("## Training")[0]
    assert (old / "model.safetensors").is_file() and (old / "training_history.jsonl").is_file()
    assert not (old / "robustness_results.json").exists() and not list(checkpoints.glob(".*"))
    assert f"python evaluate.py --suite robustness --update-card {old}" in capsys.readouterr().out
