"""Distillation (the `distill` section): a trained model's output as a second target. The loss it mixes, the
teacher kept frozen, a real train.py run taught by a real saved model, and a teacher that cannot teach refused at
the start with one line."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import REPO_ROOT

pytest.importorskip("accelerate")
pytest.importorskip("datasets")
sys.path.insert(0, str(REPO_ROOT))
import train
from bsr_hub import BSRConfig, BSRModel
from bsr_hub.training import DistillConfig, HybridLoss, Teacher

DEBUG = str(REPO_ROOT / "configs" / "debug_cpu.yaml")
SMALL = {"num_features": 8, "num_groups": 2, "num_blocks": 1, "attention_kernel_size": 3}


def run(out, *flags: str) -> int:
    return train.main(["--config", DEBUG, "--output.dir", str(out), *flags])


def small_model(scale: int = 2, seed: int = 0) -> BSRModel:
    torch.manual_seed(seed)
    return BSRModel(BSRConfig.from_preset("bsr-lite", scale=scale, **SMALL))


@pytest.fixture
def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def test_the_loss_mixes_the_hr_and_the_teachers_targets_and_the_teacher_stays_frozen(accelerator):
    torch.manual_seed(1)
    lr, hr = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16)
    criterion = HybridLoss()
    student, network = small_model(seed=1), small_model(seed=2)
    for weight in (0.0, 0.3, 1.0):
        teacher = Teacher(network, weight, accelerator, channels_last=True)
        sr = student(lr)
        total, terms = teacher.loss(criterion, sr, hr, lr)
        to_hr, _ = criterion(sr, hr)
        to_teacher, _ = criterion(sr, network(lr))
        assert total.item() == pytest.approx((1 - weight) * to_hr.item() + weight * to_teacher.item(), rel=1e-6)
        assert terms["teacher"].item() == pytest.approx(to_teacher.item(), rel=1e-6) and not terms["teacher"].requires_grad
        assert terms["l2"].item() == pytest.approx((sr - hr).square().mean().item(), rel=1e-6)  # still against HR
        student.zero_grad()
        total.backward()
    assert all(p.grad is None and not p.requires_grad for p in network.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert not network.training  # eval mode: the teacher's output does not change with the batch


def test_a_self_ensembled_teacher_gives_the_mean_of_its_eight_flipped_and_rotated_passes(accelerator):
    torch.manual_seed(3)
    network = small_model(seed=3).eval()
    lr = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        passes = []
        for flip in (False, True):
            t = lr.flip(-1) if flip else lr
            for k in range(4):
                y = torch.rot90(network(torch.rot90(t, k, dims=(-2, -1))), -k, dims=(-2, -1))
                passes.append(y.flip(-1) if flip else y)
        expected = torch.stack(passes).mean(0)
        single = network(lr)
    teacher = Teacher(network, 0.5, accelerator, channels_last=False, self_ensemble=True)
    assert torch.allclose(teacher(lr), expected, atol=1e-6)
    assert not torch.allclose(teacher(lr), single, atol=1e-4)  # eight passes, not one
    assert torch.equal(Teacher(network, 0.5, accelerator, channels_last=False)(lr), single)


def test_a_run_taught_by_a_saved_model_logs_the_term_and_records_the_teacher_in_its_lineage_and_card(tmp_path):
    from bsr_hub.models.records import TrainingRecord

    assert run(tmp_path / "teacher", "--optim.max_steps", "2") == 0
    teacher = str(tmp_path / "teacher" / "model")
    assert run(tmp_path / "student", "--optim.max_steps", "3", "--distill.teacher", teacher, "--distill.weight", "0.5",
               "--distill.self_ensemble") == 0
    history = [json.loads(line) for line in (tmp_path / "student" / "history.jsonl").read_text().splitlines()]
    logged = [h for h in history if "loss" in h]
    assert len(logged) == 3 and all(h["teacher"] > 0 for h in logged)
    record = TrainingRecord.load(tmp_path / "student" / "model" / "training.json")
    assert record.lineage[-1].teacher == f"{teacher} (self-ensemble)" and "self_ensemble: true" in record.recipe
    assert f"scratch; taught by {teacher} (self-ensemble)" in (tmp_path / "student" / "model" / "README.md").read_text()


def test_a_zero_weight_trains_the_same_weights_as_no_teacher_and_a_positive_one_does_not(tmp_path):
    from safetensors.torch import load_file

    assert run(tmp_path / "teacher", "--optim.max_steps", "2", "--seed", "5") == 0
    teacher = str(tmp_path / "teacher" / "model")
    for name, flags in (("plain", ()), ("zero", ("--distill.teacher", teacher, "--distill.weight", "0")),
                        ("half", ("--distill.teacher", teacher, "--distill.weight", "0.5"))):
        assert run(tmp_path / name, "--optim.max_steps", "3", "--optim.ema_decay", "none", *flags) == 0
    plain, zero, half = (load_file(tmp_path / n / "model" / "model.safetensors") for n in ("plain", "zero", "half"))
    assert all(torch.equal(plain[k], zero[k]) for k in plain)
    assert not all(torch.equal(plain[k], half[k]) for k in plain)


def test_a_teacher_that_cannot_teach_is_refused_at_the_start_in_one_line(tmp_path):
    small_model(scale=3).save_pretrained(tmp_path / "x3")
    for teacher, match in ((tmp_path / "x3", "upscales x3, the run x2"), (tmp_path / "nothing", "no such checkpoint folder")):
        with pytest.raises(SystemExit, match=f"^error: distill.teacher {teacher}.*{match}"):
            run(tmp_path / "run", "--distill.teacher", str(teacher))
    assert not (tmp_path / "run").exists()  # refused before the output folder is made
    for bad, match in (("1.5", r"distill.weight must be in \[0, 1\]"), ("nan", "weight must be a finite number")):
        with pytest.raises(SystemExit, match=f"^error: .*{match}"):
            run(tmp_path / "run", "--distill.teacher", str(tmp_path / "x3"), "--distill.weight", bad)


def test_a_resume_that_changes_the_teacher_or_its_weight_is_refused_naming_them(tmp_path):
    small_model().save_pretrained(tmp_path / "other")
    out = tmp_path / "run"
    taught = ("--optim.max_steps", "3", "--output.checkpointing_steps", "3", "--distill.teacher", str(tmp_path / "other"))
    assert run(out, *taught) == 0
    with pytest.raises(SystemExit) as err:
        run(out, *taught, "--resume", "latest", "--distill.weight", "0.2")
    assert "distill.weight: 0.5 in the checkpoint, 0.2 now" in str(err.value)


def test_the_distill_section_defaults_to_no_teacher():
    assert DistillConfig().teacher is None
    with pytest.raises(ValueError, match="must name a model"):
        DistillConfig(teacher="  ")
    with pytest.raises(ValueError, match="self_ensemble needs distill.teacher"):
        DistillConfig(self_ensemble=True)
