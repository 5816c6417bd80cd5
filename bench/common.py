"""What several benchmarks share. The scripts run as `python bench/NAME.py`, so this folder is on sys.path."""

from __future__ import annotations


def conv_flops(model, size: int) -> float:
    """FLOPs of every Conv2d for one size x size input (2 per multiply-add), counted with forward hooks on a small
    pass and scaled up (convolution cost is linear in the number of pixels)."""
    import torch

    flops = 0.0

    def hook(module, inp, out):
        nonlocal flops
        k = module.kernel_size[0] * module.kernel_size[1]
        flops += 2.0 * module.in_channels * module.out_channels * k * out.shape[-2] * out.shape[-1] / module.groups

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.rand(1, 3, 16, 16, device=next(model.parameters()).device))
    for h in handles:
        h.remove()
    return flops * (size / 16) ** 2
