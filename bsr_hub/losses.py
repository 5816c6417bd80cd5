"""The hybrid loss of BSR: f = L2 + a * L1 + b * Lp (docs/METHOD.md section 5)."""

from __future__ import annotations

import torch
from torch import nn


class HybridLoss(nn.Module):
    """`L2 + l1_weight * L1 + lp_weight * Lp` on e = SR - HR in [0, 1].

    [paper] the three terms and their ablation (L2 alone, L2 + L1, all three); p < 1 suggested by its difference
    maps. [ours] Lp = mean((e^2 + eps^2)^(p/2)): smooth at e = 0, where |e|^p has an infinite gradient;
    defaults a = 0.05, b = 0.01, p = 0.5, so L2 stays the main term.
    """

    def __init__(self, l1_weight: float = 0.05, lp_weight: float = 0.01, p: float = 0.5, eps: float = 1e-3):
        super().__init__()
        if l1_weight < 0 or lp_weight < 0:
            raise ValueError(f"loss weights must be >= 0, got l1_weight={l1_weight}, lp_weight={lp_weight}")
        if not 0 < p <= 2:
            raise ValueError(f"lp_p must be in (0, 2], got {p}")
        if eps <= 0:
            raise ValueError(f"lp_eps must be > 0, got {eps}")
        self.l1_weight, self.lp_weight, self.p, self.eps = l1_weight, lp_weight, p, eps

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The total loss (for backward) and each term, detached (for logging).

        The terms stay tensors on the loss's device: reading them (`.item()`) waits for the GPU, so a training
        loop sums them and reads the sum once per logging interval (bsr_hub.training.LossMeter).
        """
        e = sr.float() - hr.float()
        l2 = e.square().mean()
        l1 = e.abs().mean()
        lp = (e.square() + self.eps**2).pow(self.p / 2).mean()
        total = l2 + self.l1_weight * l1 + self.lp_weight * lp
        return total, {"l2": l2.detach(), "l1": l1.detach(), "lp": lp.detach()}
