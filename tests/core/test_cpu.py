"""Issue 21 and 27: bf16 counts as native only where the hardware computes it; emulated bf16 (AVX2 CPUs, GPUs
before Ampere) would run 10 to 200 times slower, so `auto` must not pick it there."""

from __future__ import annotations

import torch

from bsr_hub.core import cpu


def test_native_bf16_on_gpus_needs_ampere_or_rocm(monkeypatch):
    """torch.cuda.is_bf16_supported() says yes on a V100 or T4 too (it counts emulation): the capability decides."""
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert not cpu.native_bf16("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert cpu.native_bf16(torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    monkeypatch.setattr(torch.version, "hip", "6.2")
    assert cpu.native_bf16("cuda")


def test_native_bf16_on_cpus_follows_the_flags(monkeypatch):
    for native in (False, True):
        monkeypatch.setattr(cpu, "has_native_bf16", lambda native=native: native)
        assert cpu.native_bf16("cpu") is native
    assert not cpu.native_bf16("mps") and not cpu.native_bf16("meta")
