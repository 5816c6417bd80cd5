"""Shared fixtures. Tests are CPU-only and network-free; the Hub is offline for every test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Set before anything imports huggingface_hub: offline lookups fail in milliseconds instead of ~23 s of retries.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest
import torch

from bsr_hub import BSRConfig, BSRModel

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

requires_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "README.md").is_file(),
    reason=f"real images not found at {SHARED_DATA} (../shared/data beside the checkout)",
)


def tiny_config(scale: int = 2, **overrides) -> BSRConfig:
    """A few thousand parameters: every code path of the real network, in milliseconds."""
    values = dict(scale=scale, num_features=8, num_groups=2, num_blocks=1, attention_kernel_size=3)
    values.update(overrides)
    return BSRConfig(**values)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps its state in a process-wide singleton. Left set by a test that trains or evaluates in this
    process, the processes a later test forks (accelerate.debug_launcher) inherit one process's state and see
    num_processes == 1; whatever order the tests run in, each starts without it."""
    yield
    if "accelerate" in sys.modules:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture
def tiny_model() -> BSRModel:
    torch.manual_seed(0)
    return BSRModel(tiny_config()).eval()


@pytest.fixture
def tiny_checkpoint(tmp_path: Path, tiny_model: BSRModel) -> Path:
    folder = tmp_path / "tiny-bsr"
    tiny_model.save_pretrained(folder)
    return folder
