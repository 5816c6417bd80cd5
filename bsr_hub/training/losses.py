"""The hybrid loss of BSR: f = L2 + a * L1 + b * Lp (docs/METHOD.md section 5)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LossConfig:
    """The weights of the hybrid loss: the `loss` section of a training recipe, and what `HybridLoss` takes.

    [paper] the three terms and their ablation (L2 alone, L2 + L1, all three); p < 1 suggested by its difference
    maps. [ours] Lp = mean((e^2 + eps^2)^(p/2)): smooth at e = 0, where |e|^p has an infinite gradient;
    defaults a = 0.05, b = 0.01, p = 0.5, so L2 stays the main term.
    """

    l1_weight: float = 0.05
    """a, the weight of L1 (0 = the L2-only ablation, with lp_weight 0)."""
    lp_weight: float = 0.01
    """b, the weight of Lp."""
    lp_p: float = 0.5
    """p of Lp, in (0, 2]."""
    lp_eps: float = 1e-3
    """Smoothing of Lp at e = 0."""

    def __post_init__(self) -> None:
        for name in ("l1_weight", "lp_weight", "lp_p", "lp_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"loss.{name} must be a number, got {value!r}")
        if self.l1_weight < 0 or self.lp_weight < 0:
            raise ValueError(f"loss weights must be >= 0, got l1_weight={self.l1_weight}, lp_weight={self.lp_weight}")
        if not 0 < self.lp_p <= 2:
            raise ValueError(f"loss.lp_p must be in (0, 2], got {self.lp_p}")
        if self.lp_eps <= 0:
            raise ValueError(f"loss.lp_eps must be > 0, got {self.lp_eps}")


class HybridLoss(nn.Module):
    """`L2 + l1_weight * L1 + lp_weight * Lp` on e = SR - HR in [0, 1], weighted as its `LossConfig` says."""

    def __init__(self, config: LossConfig | None = None):
        super().__init__()
        self.config = config if config is not None else LossConfig()
        c = self.config
        self.l1_weight, self.lp_weight, self.p, self.eps = c.l1_weight, c.lp_weight, c.lp_p, c.lp_eps

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The total loss (for backward) and each term, detached (for logging).

        The terms stay tensors on the loss's device: reading them (`.item()`) waits for the GPU, so a training
        loop sums them and reads the sum once per logging interval (bsr_hub.training.reporting.LossMeter).
        """
        e = sr.float() - hr.float()
        l2 = e.square().mean()
        l1 = e.abs().mean()
        lp = (e.square() + self.eps**2).pow(self.p / 2).mean()
        total = l2 + self.l1_weight * l1 + self.lp_weight * lp
        return total, {"l2": l2.detach(), "l1": l1.detach(), "lp": lp.detach()}
