"""Knowledge distillation: a larger trained model's output as a second target for a small one [ours; not in the
paper].

A small network cannot fit every HR patch; a larger one's SR is a target it can come closer to, and pulling the
student toward it as well as toward the HR image is what output distillation for super-resolution does (the
`distill` section of a recipe: `teacher`, `weight`, `self_ensemble`). The teacher is frozen, runs without gradients under the
run's mixed precision, and is not prepared by Accelerate: every process holds its own copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..inference import ensemble_forward


@dataclass
class DistillConfig:
    """The `distill` section of a training recipe: which model teaches, and how much its output counts."""

    teacher: str | None = None
    """A trained model of the run's scale (bundled name, folder, Hub id), e.g. bsr-lite-x2 for a bsr-tiny-x2
    run; None = no distillation."""
    weight: float = 0.5
    """w in loss = (1 - w) f(SR, HR) + w f(SR, teacher's SR), f the hybrid loss; in [0, 1]."""
    self_ensemble: bool = False
    """The teacher's SR as the mean over the 8 flips and rotations ("+"; for the bundled bsr-lite-x2 0.23 / 0.15 dB
    above one pass on Set5 / Set14, its card), at 8 times the cost: a model can then teach one of its own size, even
    the weights it starts from."""

    def describe_teacher(self) -> str | None:
        """The teacher as a training record names it: its name, and how it computes its SR when not one pass."""
        if not self.teacher:
            return None
        return f"{self.teacher} (self-ensemble)" if self.self_ensemble else self.teacher

    def __post_init__(self) -> None:
        if self.teacher is not None and not str(self.teacher).strip():
            raise ValueError("distill.teacher must name a model (or be none: no distillation)")
        if self.self_ensemble and not self.teacher:
            raise ValueError("distill.self_ensemble needs distill.teacher, the model whose passes are averaged")
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not (math.isfinite(w) and 0 <= w <= 1):
            raise ValueError(f"distill.weight must be in [0, 1], got {w!r}")


class Teacher:
    """A frozen trained network whose SR of a training batch is the student's second target."""

    def __init__(self, network: nn.Module, weight: float, accelerator: Any, channels_last: bool = True,
                 self_ensemble: bool = False):
        self.network = network.to(accelerator.device).eval().requires_grad_(False)
        if channels_last:
            self.network = self.network.to(memory_format=torch.channels_last)
        self.weight = weight
        self.accelerator = accelerator
        self.self_ensemble = self_ensemble

    @classmethod
    def load(cls, config: DistillConfig, scale: int, accelerator: Any, channels_last: bool = True) -> Teacher | None:
        """The configured teacher, checked against the run's scale; None when the recipe names none.

        Raises:
            ValueError: the teacher cannot be loaded, or upscales by another factor than the run.
        """
        from ..models import BSRModel, CheckpointError

        if not config.teacher:
            return None
        try:
            network = BSRModel.from_pretrained(config.teacher)
        except (CheckpointError, OSError) as err:  # an unknown name, a folder without weights, no network
            raise ValueError(f"distill.teacher {config.teacher}: {err}") from None
        if network.config.scale != scale:
            raise ValueError(f"distill.teacher {config.teacher} upscales x{network.config.scale}, the run x{scale}: "
                             "a teacher must be trained for the run's scale")
        return cls(network, config.weight, accelerator, channels_last, config.self_ensemble)

    @torch.no_grad()
    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        """The teacher's SR of a batch: (N, 3, P, P) -> (N, 3, sP, sP), in the run's mixed precision."""
        with self.accelerator.autocast():
            return ensemble_forward(self.network, lr) if self.self_ensemble else self.network(lr)

    def loss(self, criterion: nn.Module, sr: torch.Tensor, hr: torch.Tensor,
             lr: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(1 - w) f(SR, HR) + w f(SR, teacher's SR), and the terms to log: those of f(SR, HR) (so that the L2 term
        still reads as the training error against HR) and `teacher`, f(SR, teacher's SR)."""
        to_hr, terms = criterion(sr, hr)
        to_teacher, _ = criterion(sr, self(lr))
        total = (1 - self.weight) * to_hr + self.weight * to_teacher
        return total, {**terms, "teacher": to_teacher.detach()}
