"""Issue 28: how train.py chooses the GPU's kernels, decided and recorded on the CPU. bench/gpu.py sized GPU runs
from a throughput grid timed with cuDNN's autotuning while train.py never turned it on."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO_ROOT

from bsr_hub.training import choose_kernels, cudnn_benchmark_for
from bsr_hub.training.config import OptimSection

pytest.importorskip("accelerate")
pytest.importorskip("datasets")
sys.path.insert(0, str(REPO_ROOT))
import train

DEBUG = str(REPO_ROOT / "configs" / "debug_cpu.yaml")


@pytest.fixture
def cudnn_flags():
    """choose_kernels sets a process-wide flag: give the next test the value this one found."""
    benchmark = torch.backends.cudnn.benchmark
    yield
    torch.backends.cudnn.benchmark = benchmark


def test_cudnn_autotunes_on_a_gpu_unless_kernels_are_fixed():
    assert OptimSection().cudnn_benchmark is True  # the default, as the throughput grid measures
    assert cudnn_benchmark_for(OptimSection(), cuda=True) is True
    assert cudnn_benchmark_for(OptimSection(), cuda=False) is False  # nothing to tune on a CPU
    assert cudnn_benchmark_for(OptimSection(deterministic=True), cuda=True) is False
    assert cudnn_benchmark_for(OptimSection(cudnn_benchmark=False), cuda=True) is False


def test_choose_kernels_sets_the_flag_before_the_run(cudnn_flags):
    torch.backends.cudnn.benchmark = False
    assert choose_kernels(OptimSection(), cuda=True) is True
    assert torch.backends.cudnn.benchmark is True  # a flag torch keeps on a CPU build too; nothing runs on CUDA
    assert choose_kernels(OptimSection(cudnn_benchmark=False), cuda=True) is False
    assert torch.backends.cudnn.benchmark is False


def test_train_py_chooses_kernels_from_its_config_and_records_the_setting(tmp_path: Path, monkeypatch, cudnn_flags):
    calls = []

    def spy(optim: OptimSection, cuda: bool) -> bool:
        calls.append((optim.cudnn_benchmark, optim.deterministic, cuda))
        return choose_kernels(optim, cuda)

    monkeypatch.setattr(train, "choose_kernels", spy)
    out = tmp_path / "run"
    assert train.main(["--config", DEBUG, "--output.dir", str(out), "--optim.max_steps", "1",
                       "--no-optim.cudnn_benchmark", "--validation.steps", "100"]) == 0
    assert calls == [(False, False, torch.cuda.is_available())]
    recipe = yaml.safe_load((out / "model" / "training_config.yaml").read_text())
    assert recipe["optim"]["cudnn_benchmark"] is False
