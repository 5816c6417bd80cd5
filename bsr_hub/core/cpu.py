"""What this CPU has, read at run time: the machines a model trains and runs on are not all the same CPU.

On CPUs with AVX2 only, bf16 has no native instructions and runs 10 to 200 times slower than fp32; CPUs with
`avx512_bf16` (or AMX) run bf16 convolutions natively and faster than fp32 (`python bench/train_speed.py`). A choice
that depends on this is made from these flags on the machine at hand, never hard-coded from one measurement.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
REPORTED_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = platform.processor() or platform.machine(), frozenset()
    path = Path("/proc/cpuinfo")  # Linux; elsewhere the model is what platform knows and no flag is claimed
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in (platform.processor(), platform.machine()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = frozenset(value.split())
    return model, flags


def cpu_model() -> str:
    return _cpuinfo()[0]


def cpu_flags() -> frozenset[str]:
    return _cpuinfo()[1]


def has_native_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX-512 BF16 or AMX); unknown CPUs count as not."""
    return any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)


def native_bf16(device) -> bool:
    """Whether `device` (a torch.device or its type) computes bf16 natively: a CPU with NATIVE_BF16_FLAGS, an NVIDIA
    GPU of compute capability 8.0 or more (Volta and Turing emulate it, which `torch.cuda.is_bf16_supported()`
    counts by default), or an AMD GPU under ROCm. Anything else counts as not."""
    import torch

    device = torch.device(device)
    if device.type == "cpu":
        return has_native_bf16()
    if device.type == "cuda":
        return bool(torch.version.hip) or torch.cuda.get_device_capability(device)[0] >= 8
    return False


def describe_cpu() -> str:
    """The model and the flags that decide which paths are fast, for records and benchmark results."""
    present = [f for f in REPORTED_FLAGS if f in cpu_flags()]
    return f"{cpu_model()} ({' '.join(present) if present else 'no AVX2'})"
