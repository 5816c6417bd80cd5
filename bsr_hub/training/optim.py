"""What the optimisation does beside the optimizer: the learning-rate schedule (`step_decay`), the EMA of the
weights, the model's fp32 forward under mixed precision (`fp32_forward`, for validation), the start from
another checkpoint's matching weights (`load_matching_weights`), and how the GPU's kernels are chosen
(`choose_kernels`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .config import OptimSection


def cudnn_benchmark_for(optim: OptimSection, cuda: bool) -> bool:
    """Whether cuDNN autotunes its convolutions in this run: asked for, on a GPU, and the kernels not fixed by
    `deterministic` (autotuning picks by timing, so a resumed run could pick others)."""
    return cuda and optim.cudnn_benchmark and not optim.deterministic


def choose_kernels(optim: OptimSection, cuda: bool) -> bool:
    """Set how kernels are chosen, before the first one runs; returns `torch.backends.cudnn.benchmark` as set (the
    hardware row records it)."""
    if optim.deterministic:
        # cuBLAS reads this when its first handle is made, i.e. at the first matrix product, still to come.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: an op with no deterministic kernel (none in the training step; maybe one in evaluation)
        # warns instead of stopping the run; tests/test_cuda.py checks the outcome, weights equal bit for bit.
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = cudnn_benchmark_for(optim, cuda)
    return torch.backends.cudnn.benchmark


def load_matching_weights(model: nn.Module, source: str) -> list[str]:
    """Copy every weight of checkpoint `source` whose name and shape match; the names left as initialised."""
    from ..models import BSRModel

    donor = BSRModel.from_pretrained(source).state_dict()
    own = model.state_dict()
    matching = {k: v for k, v in donor.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matching, strict=False)
    return sorted(set(own) - set(matching))


def _drop_autocast_forward(model: nn.Module) -> Any:
    """Remove Accelerate's mixed-precision wrapper (an instance attribute over the class's `forward`); returns it."""
    model.__dict__.pop("_original_forward", None)
    return model.__dict__.pop("forward", None)


@contextlib.contextmanager
def fp32_forward(model: nn.Module) -> Iterator[nn.Module]:
    """The live model with its class's fp32 `forward` for a while, its mixed-precision wrapper back afterwards.

    Under `mixed_precision`, Accelerate wraps the prepared model's forward in autocast. Validation measures the
    network that will be shipped (fp32 weights, run in fp32), and the graph backends of `upscale` cannot trace
    the wrapper's casts (ONNX has no bf16 convolution). Accelerate's own `unwrap_model(keep_fp32_wrapper=False)`
    removes the wrapper for good, which would end mixed precision for the rest of the run.
    """
    saved = {k: model.__dict__[k] for k in ("forward", "_original_forward") if k in model.__dict__}
    _drop_autocast_forward(model)
    try:
        yield model
    finally:
        model.__dict__.update(saved)


class EMA:
    """Exponential moving average of a model's weights (checkpointed with the run's state).

    The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so that a short run is not judged on
    weights that are still mostly the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float):
        import copy

        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        _drop_autocast_forward(self.model)  # the average is shipped and evaluated in fp32


    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        ema = list(self.model.parameters())
        live = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema, live, 1.0 - decay)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "weights": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay, self.updates = state["decay"], state["updates"]
        self.model.load_state_dict(state["weights"])


def step_decay(max_steps: int, decay_at: list[float], factor: float, warmup_steps: int = 0):
    """LambdaLR multiplier: linear warm-up, then x factor at each fraction of max_steps in decay_at."""
    milestones = sorted(int(round(f * max_steps)) for f in decay_at)

    def multiplier(step: int) -> float:
        warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
        return warm * factor ** sum(step >= m for m in milestones)

    return multiplier
