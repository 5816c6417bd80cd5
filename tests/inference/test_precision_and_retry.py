"""Issue 28: what a GPU run does that the CPU tests missed, checked on the CPU. Self-ensemble of a half-precision
model averages in float32; the out-of-memory retry releases the failed pass's memory after it is gone."""

import copy
import math
import sys

import pytest
import torch
from conftest import OutOfMemoryAbove

from bsr_hub.inference import api, tiling


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_self_ensemble_of_a_half_precision_model_sums_in_float32(dtype):
    """A model in fp16/bf16 (on a GPU) returns half-precision outputs. Their sum in half precision rounds at every
    one of the 8 additions (bf16 keeps 8 bits: about 1/128 of a value near 4, a grey level or more in the mean);
    in float32 the sum of 8 half-precision values is exact, and so is the mean."""
    torch.manual_seed(0)
    x = torch.rand(1, 3, 12, 12).to(dtype)
    ramp = torch.linspace(0.0, 0.37, 12)  # not rotation-invariant: the 8 transforms give 8 different outputs

    def half_network(t: torch.Tensor) -> torch.Tensor:  # (1, 3, 12, 12) half -> same, half, as a GPU model does
        return (t.float() * 0.93 + ramp).to(dtype)

    got = api.ensemble_forward(half_network, x)
    outputs = []
    for k in range(8):  # the same transforms, undone, each output kept in its half-precision values
        t = x.flip(-1) if k >= 4 else x
        y = torch.rot90(half_network(torch.rot90(t, k % 4, dims=(-2, -1))), -(k % 4), dims=(-2, -1))
        outputs.append((y.flip(-1) if k >= 4 else y).double())
    expected = torch.stack(outputs).mean(0)
    assert got.dtype == torch.float32
    assert (got.double() - expected).abs().max().item() < 1e-6


def test_out_of_memory_retry_releases_memory_after_the_failed_pass_is_gone(tiny_model, monkeypatch):
    """`torch.cuda.empty_cache()` inside the `except` frees nothing: the exception being handled holds the
    traceback, its frames hold the failed pass's tensors, and the caching allocator can only return blocks that no
    tensor uses. The release must come after the except block, when the exception and its frames are gone."""
    seen = []

    def release(device: torch.device) -> None:  # stands in for torch.cuda.empty_cache on the model's device
        seen.append({"handling": sys.exc_info(), "buffers_alive": [ref() is not None for ref in flaky.buffers]})

    monkeypatch.setattr(api, "release_cached_memory", release)
    # The whole 80x72 image (96x88 with its mirrored border) fails; tiles of 40 (56 at most with theirs) fit.
    flaky = OutOfMemoryAbove(tiny_model, limit=40 + 2 * tiling.BORDER_CONTEXT)
    img = torch.rand(1, 3, 80, 72)
    with pytest.warns(UserWarning, match="out of memory at tile=None; retrying with tile=40"):
        out = api.super_resolve(flaky, img, tile=None, backend="eager")
    assert seen == [{"handling": (None, None, None), "buffers_alive": [False]}]
    assert torch.equal(out, api.super_resolve(tiny_model, img, tile=40, backend="eager"))


def test_release_cached_memory_empties_the_cache_on_cuda_only(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    tiling.release_cached_memory(torch.device("cpu"))
    assert calls == []  # the CPU allocator has no cache to empty (and CUDA may not be there)
    tiling.release_cached_memory(torch.device("cuda", 0))
    assert calls == ["empty_cache"]


# ---------------------------------------------------------------------------------------------- bf16 on a CPU (issue 27)


def test_bf16_runs_channels_last_on_a_cpu_with_native_bf16(tiny_model, monkeypatch):
    """On a CPU with avx512_bf16 (or AMX) a bf16 model runs instead of being refused, in channels_last (oneDNN's
    bf16 kernels want it), eager; this machine may lack the instructions, so the flag is faked (slow, not wrong)."""
    from bsr_hub.core import cpu

    monkeypatch.setattr(cpu, "has_native_bf16", lambda: True)
    x = torch.rand(1, 3, 20, 24)
    expected = tiny_model.upscale(x, backend="eager")
    bf16 = copy.deepcopy(tiny_model).to(torch.bfloat16)
    seen = []
    bf16.register_forward_pre_hook(lambda module, args: seen.append(
        (args[0].dtype, args[0].is_contiguous(memory_format=torch.channels_last))))
    got = bf16.upscale(x)
    assert seen == [(torch.bfloat16, True)]
    assert got.dtype == torch.float32 and got.shape == expected.shape
    mse = torch.mean((got - expected) ** 2).item()
    assert 10 * math.log10(1 / mse) > 35  # bf16 keeps 8 bits of mantissa: close to fp32, not equal
    assert api.super_resolve(bf16, x).shape == expected.shape  # "auto" on a bf16 model: eager, no graph build


def test_bf16_elsewhere_is_refused_with_the_reason(tiny_model, monkeypatch):
    from bsr_hub.core import cpu

    monkeypatch.setattr(cpu, "has_native_bf16", lambda: False)
    with pytest.raises(ValueError, match="has no native bf16 .*avx512_bf16 or amx_bf16.*10 to 200 times slower"):
        tiny_model.to(torch.bfloat16).upscale(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="float16 on the CPU"):  # fp16 stays refused on every CPU
        monkeypatch.setattr(cpu, "has_native_bf16", lambda: True)
        tiny_model.to(torch.float16).upscale(torch.rand(1, 3, 8, 8))


def test_eager_bf16_backend_runs_the_float32_model_under_autocast(tiny_model, monkeypatch):
    """backend="eager-bf16": the float32 weights under bf16 autocast, channels_last, the output conv (and so the
    output) in float32; close to float32, not equal. The flag is faked where the CPU lacks it (slow, not wrong)."""
    from bsr_hub.core import cpu

    monkeypatch.setattr(cpu, "has_native_bf16", lambda: True)
    x = torch.rand(1, 3, 20, 24)
    expected = tiny_model.upscale(x, backend="eager")
    seen = []
    tiny_model.register_forward_pre_hook(lambda module, args: seen.append(
        (torch.is_autocast_enabled("cpu"), args[0].is_contiguous(memory_format=torch.channels_last))))
    tail = []
    tiny_model.tail.register_forward_hook(lambda module, args, out: tail.append((args[0].dtype, out.dtype)))
    got = tiny_model.upscale(x, backend="eager-bf16")
    assert seen == [(True, True)] and tail == [(torch.float32, torch.float32)]
    assert tiny_model.dtype == torch.float32  # the caller's model is left as it was
    mse = torch.mean((got - expected) ** 2).item()
    assert 0 < mse and 10 * math.log10(1 / mse) > 35


def test_the_network_keeps_its_output_in_float32_under_autocast(tiny_model):
    """Under bf16 autocast (training on a CPU with native bf16, or eager-bf16) every conv but the last computes in
    bf16: the last one's output is the image, which bf16 would round to about half a grey level."""
    x = torch.rand(1, 3, 16, 16)
    tail = []
    tiny_model.output_conv.register_forward_hook(lambda module, args, out: tail.append((args[0].dtype, out.dtype)))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = tiny_model(x)
        body = tiny_model.head(x)
    assert body.dtype == torch.bfloat16 and y.dtype == torch.float32
    assert tail == [(torch.float32, torch.float32)]  # not a bf16 conv whose output the mean's add promotes


def test_eager_bf16_is_refused_where_it_cannot_run(tiny_model, monkeypatch):
    from bsr_hub.core import cpu

    monkeypatch.setattr(cpu, "has_native_bf16", lambda: False)
    with pytest.raises(ValueError, match="eager-bf16.*has no native bf16 .*avx512_bf16 or amx_bf16.*10 to 200 times"):
        tiny_model.upscale(torch.rand(1, 3, 8, 8), backend="eager-bf16")
    monkeypatch.setattr(cpu, "has_native_bf16", lambda: True)
    with pytest.raises(ValueError, match="runs a float32 model under bf16 autocast; this one is torch.bfloat16"):
        copy.deepcopy(tiny_model).to(torch.bfloat16).upscale(torch.rand(1, 3, 8, 8), backend="eager-bf16")
    monkeypatch.setattr(type(tiny_model), "output_fp32_under_autocast", False)  # its output would be bf16
    with pytest.raises(ValueError, match="needs a network that computes its output in float32 under autocast"):
        tiny_model.upscale(torch.rand(1, 3, 8, 8), backend="eager-bf16")
