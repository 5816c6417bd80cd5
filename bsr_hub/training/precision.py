"""The precision a training step runs in: `optim.mixed_precision` (no, fp16, bf16 or auto) settled against the
device at hand, before Accelerate is built.

bf16 autocast pays only where the hardware computes bf16 natively: a GPU with bf16 support, or a CPU with
`avx512_bf16` or AMX (core.cpu.has_native_bf16), where a bsr-lite step ran 1.8x faster than fp32 with
channels_last (bench/results/train_speed_avx512.md). On AVX2-only CPUs the same step runs 10 to 200 times slower
than fp32 (bench/results/train_speed.md). `auto` takes bf16 where it is native and fp32 elsewhere, so that one
recipe runs at its best on either kind of machine; the value it settles on is what the run records (its recipe,
card and resume guard), never "auto".
"""

from __future__ import annotations

AUTO = "auto"


def settle_mixed_precision(requested: str, *, cuda: bool, native_bf16: bool) -> str:
    """What `requested` means on this device: `auto` -> "bf16" where bf16 is native, else "no"; fp16 without a
    GPU is a ValueError (CPUs have no fp16 autocast that pays); anything else is kept as asked."""
    if requested == "fp16" and not cuda:
        raise ValueError("--optim.mixed_precision fp16 needs a GPU; on a CPU use bf16 (autocast), auto or no")
    if requested == AUTO:
        return "bf16" if native_bf16 else "no"
    return requested
