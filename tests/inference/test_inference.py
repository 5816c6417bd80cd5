"""upscale: every input kind and PIL mode, tiling, memory bounds, precision rules, self-ensemble."""

import io
import math

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, OutOfMemoryAbove, requires_shared_data
from PIL import Image

from bsr_hub import BSRModel, bundled_checkpoints
from bsr_hub.core.examples import example_images
from bsr_hub.inference import api, backends, tiling


def textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth gradient plus texture and an edge: HxWx3 uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / max(w - 1, 1), yy / max(h - 1, 1), (xx + yy) / max(h + w - 2, 1)], axis=-1) * 180
    noise = rng.normal(0, 20, (h, w, 3))
    edge = (xx > w // 2)[..., None] * 50
    return np.clip(base + noise + edge, 0, 255).astype(np.uint8)


def psnr8(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


# ---------------------------------------------------------------------------------------------- PIL modes


def test_rgb_pil_in_pil_out(tiny_model):
    out = tiny_model.upscale(Image.fromarray(textured(10, 14)))
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (28, 20)


def test_grey_stays_grey(tiny_model):
    out = tiny_model.upscale(Image.fromarray(textured(10, 14)[:, :, 0]))
    assert out.mode == "L" and out.size == (28, 20)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_upscaled_separately(tiny_model, mode):
    rgba = np.dstack([textured(12, 12), np.full((12, 12), 255, np.uint8)])
    rgba[:, :6, 3] = 0  # left half transparent
    img = Image.fromarray(rgba).convert(mode)
    out = tiny_model.upscale(img)
    assert out.mode == mode and out.size == (24, 24)
    alpha = np.asarray(out)[:, :, -1]
    assert (alpha[:, :10] == 0).all() and (alpha[:, 14:] == 255).all()  # bicubic keeps flat regions exact
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(rgba[:, :, 3] / 255.0)[None, None].float(), scale_factor=2, mode="bicubic"
    ).clamp(0, 1)
    assert np.abs(alpha.astype(int) - np.rint(expected[0, 0].numpy() * 255).astype(int)).max() <= 1


def test_palette_images_are_upscaled_as_their_colours(tiny_model):
    img = Image.fromarray(textured(8, 8)).convert("P")
    out = tiny_model.upscale(img)
    assert out.mode == "RGB"
    assert np.array_equal(np.asarray(out), np.asarray(tiny_model.upscale(img.convert("RGB"))))  # not the indices
    img.info["transparency"] = 0
    out = tiny_model.upscale(img)
    assert out.mode == "RGBA"
    assert np.array_equal(np.asarray(out), np.asarray(tiny_model.upscale(img.convert("RGBA"))))


def test_sixteen_bit_precision_is_kept(tiny_model):
    ramp = (np.linspace(0, 65535, 16 * 16).reshape(16, 16)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")
    img = Image.open(buf)
    assert img.mode in ("I;16", "I")
    out = tiny_model.upscale(img)
    assert out.mode == img.mode and out.size == (32, 32)
    values = np.asarray(out).astype(np.int64)
    assert values.max() <= 65535 and values.min() >= 0
    # An 8-bit round trip would put every value on a multiple of 257.
    assert np.mean(values % 257 != 0) > 0.5


def test_cmyk_jpeg_is_converted_to_rgb(tiny_model):
    buf = io.BytesIO()
    Image.fromarray(textured(16, 16)).convert("CMYK").save(buf, format="JPEG")
    cmyk = Image.open(buf)
    out = tiny_model.upscale(cmyk)
    assert out.mode == "RGB" and out.size == (32, 32)
    # The colours, not the four ink channels read as RGB(A): the same as upscaling the photo as shown.
    assert np.array_equal(np.asarray(out), np.asarray(tiny_model.upscale(cmyk.convert("RGB"))))


def test_exif_orientation_is_applied(tiny_model):
    img = Image.fromarray(textured(10, 20))  # 20 wide, 10 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    out = tiny_model.upscale(Image.open(buf))
    assert out.size == (20, 40)  # displayed as 10 wide, 20 high


@pytest.mark.parametrize("size", [(1, 1), (1, 9), (9, 1), (2, 3)])
def test_tiny_and_thin_images(tiny_model, size):
    h, w = size
    out = tiny_model.upscale(textured(h, w))
    assert out.shape == (2 * h, 2 * w, 3)
    # Colours survive the padding of a one-pixel side: a flat image stays that colour through a linear upscaler.
    from bsr_hub.evaluation.bicubic import BicubicModel

    flat = np.full((h, w, 3), (250, 200, 20), np.uint8)
    out = BicubicModel(2, uint8=False).upscale(flat)
    assert out.shape == (2 * h, 2 * w, 3) and np.abs(out.astype(int) - (250, 200, 20)).max() <= 1


def test_unsupported_pil_mode_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="unsupported PIL image mode 'F'"):
        tiny_model.upscale(Image.new("F", (4, 4)))


# ---------------------------------------------------------------------------------------------- numpy and torch


@pytest.mark.parametrize(
    "make",
    [
        lambda a: a,  # HxWx3 uint8
        lambda a: a[:, :, 0],  # HxW uint8
        lambda a: a[:, :, :1],  # HxWx1
        lambda a: np.dstack([a, a[:, :, :1]]),  # HxWx4
        lambda a: a.astype(np.uint16) * 257,
        lambda a: a.astype(np.float32) / 255,
        lambda a: a.astype(np.float64) / 255,
    ],
    ids=["hwc-u8", "hw-u8", "hw1-u8", "hwc4-u8", "u16", "f32", "f64"],
)
def test_numpy_kinds_keep_shape_layout_and_dtype(tiny_model, make):
    arr = make(textured(6, 7))
    out = tiny_model.upscale(arr)
    assert isinstance(out, np.ndarray) and out.dtype == arr.dtype
    assert out.shape == (12, 14) + arr.shape[2:]
    if np.issubdtype(out.dtype, np.floating):
        assert 0 <= out.min() and out.max() <= 1


def test_torch_kinds_keep_shape_dtype_and_range(tiny_model):
    x = torch.rand(2, 3, 5, 6)
    out = tiny_model.upscale(x)
    assert out.shape == (2, 3, 10, 12) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    assert tiny_model.upscale(x[0]).shape == (3, 10, 12)
    assert tiny_model.upscale(x.half()).dtype == torch.float16  # input dtype is kept; compute stays fp32


def test_all_kinds_give_the_same_pixels(tiny_model):
    arr = textured(9, 11)
    from_pil = np.asarray(tiny_model.upscale(Image.fromarray(arr)))
    from_numpy = tiny_model.upscale(arr)
    tensor = torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255
    from_torch = tiny_model.upscale(tensor)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(from_pil, from_numpy)
    assert np.array_equal(from_numpy, np.rint(from_torch * 255).astype(np.uint8))


@pytest.mark.parametrize(
    "image, error, message",
    [
        (np.full((4, 4, 3), 2.0, np.float32), ValueError, r"must be in \[0, 1\].*divide by 255"),
        (np.full((4, 4, 3), np.nan, np.float32), ValueError, "NaN"),
        (np.zeros((4, 4, 3), np.int32), ValueError, "uint8, uint16 or float"),
        (np.zeros((3, 8, 8), np.uint8), ValueError, "HxWxC"),
        (np.zeros((0, 4, 3), np.uint8), ValueError, "empty"),
        (torch.zeros(1, 3, 4, 4, dtype=torch.uint8), ValueError, "float in"),
        (torch.zeros(2, 5, 4, 4), ValueError, "BxCxHxW"),
        ([[0, 1]], TypeError, "PIL image, numpy array or torch tensor"),
    ],
)
def test_bad_input_is_a_clear_error(tiny_model, image, error, message):
    with pytest.raises(error, match=message):
        tiny_model.upscale(image)


@pytest.mark.parametrize("kwargs", [{"tile": -1}, {"tile": 2.5}, {"tile": "big"}, {"tile": True}, {"tile_overlap": -1}])
def test_bad_tiling_options_are_errors(tiny_model, kwargs):
    with pytest.raises(ValueError, match="tile"):
        tiny_model.upscale(textured(4, 4), **kwargs)


def test_unknown_backend_is_an_error(tiny_model):
    with pytest.raises(ValueError, match="backend must be 'auto' or one of eager, jit"):
        tiny_model.upscale(textured(4, 4), backend="tensorrt")


# ---------------------------------------------------------------------------------------------- precision and device


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_cpu_is_a_clear_error(tiny_model, dtype, monkeypatch):
    from bsr_hub.core import cpu

    monkeypatch.setattr(cpu, "has_native_bf16", lambda: False)  # bf16 runs on CPUs that have it (test_precision_...)
    with pytest.raises(ValueError, match="on the CPU"):
        tiny_model.to(dtype).upscale(textured(4, 4))


def test_channels_last_matches_nchw(tiny_model):
    x = torch.rand(1, 3, 12, 12)
    a = tiny_model.upscale(x, channels_last=True)
    b = tiny_model.upscale(x, channels_last=False)
    assert torch.allclose(a, b, atol=1e-5)


# ---------------------------------------------------------------------------------------------- tiling


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_tiled_matches_untiled_for_lite(scale):
    """The issue's bar: 50 dB between tiled and untiled 8-bit output, bsr-lite, default overlap."""
    torch.manual_seed(0)
    model = BSRModel.from_preset("bsr-lite", scale=scale).eval()
    img = textured(75, 101, seed=scale)  # tile boundaries fall at odd places; the last tile is clamped
    whole = model.upscale(img)
    tiled = model.upscale(img, tile=32)
    assert psnr8(whole, tiled) >= 50


@requires_shared_data
def test_tiled_matches_untiled_on_a_real_photo():
    torch.manual_seed(0)
    model = BSRModel.from_preset("bsr-lite", scale=2).eval()
    img = Image.open(SHARED_DATA / "benchmarks" / "Set14" / "comic.png")  # 250x361
    whole = np.asarray(model.upscale(img))
    tiled = np.asarray(model.upscale(img, tile=64))
    assert psnr8(whole, tiled) >= 50


@pytest.mark.parametrize("name", sorted(bundled_checkpoints()))
def test_tiled_is_within_one_level_of_untiled_for_every_bundled_model(name):
    """DEFAULT_TILE_OVERLAP's claim, on the trained weights that ship: small tiles (many seams) against one pass."""
    model = BSRModel.from_pretrained(name)
    img = Image.open(example_images()[0]).convert("RGB").crop((0, 0, 90, 70))
    whole = np.asarray(model.upscale(img, tile=None, backend="eager")).astype(int)
    tiled = np.asarray(model.upscale(img, tile=32, backend="eager")).astype(int)
    assert np.abs(tiled - whole).max() <= 1


def test_without_overlap_there_are_seams():
    """The blending is what makes tiles seamless: with no overlap the same tiles disagree visibly."""
    torch.manual_seed(0)
    model = BSRModel.from_preset("bsr-lite", scale=2).eval()
    img = textured(64, 64)
    assert psnr8(model.upscale(img), model.upscale(img, tile=32, tile_overlap=0)) < 50


def test_tiles_bound_what_the_network_sees(tiny_model):
    sizes = []
    tiny_model.head.register_forward_hook(lambda m, inp, out: sizes.append(tuple(inp[0].shape[-2:])) and None)
    tiny_model.upscale(textured(100, 70), tile=24, tile_overlap=8, backend="eager")
    # A tile at the image's border also sees the mirrored pixels beyond it (tiling.BORDER_CONTEXT per side).
    assert len(sizes) > 1 and max(max(s) for s in sizes) <= 24 + 2 * tiling.BORDER_CONTEXT
    assert min(max(s) for s in sizes) <= 24  # a tile away from the borders sees the tile alone


def test_out_of_memory_retries_with_smaller_tiles(tiny_model):
    """A CUDA out-of-memory error halves the tile and retries instead of crashing."""

    img = torch.rand(1, 3, 70, 90)
    flaky = OutOfMemoryAbove(tiny_model, limit=50 + 2 * tiling.BORDER_CONTEXT, error=torch.cuda.OutOfMemoryError)
    with pytest.warns(UserWarning, match="out of memory"):
        out = api.super_resolve(flaky, img)
    expected = api.super_resolve(tiny_model, img, tile=45)  # 90 -> 45: the first size that fits
    assert torch.equal(out, expected)
    with pytest.raises(torch.cuda.OutOfMemoryError), pytest.warns(UserWarning, match="retrying with tile=45"):
        api.super_resolve(OutOfMemoryAbove(tiny_model, limit=8), img)  # nothing small enough fits


def test_off_the_cpu_images_too_large_for_memory_are_tiled(tiny_model, monkeypatch):
    """On a GPU the plan is the whole image unless it would not fit; the memory rule, checked without a GPU."""
    monkeypatch.setattr(tiling, "_memory_budget", lambda device: 4 * 40 * 40 * 200)
    with pytest.warns(UserWarning, match="does not fit in memory untiled; using tile="):
        tile = tiling._auto_tile(tiny_model, 1, 80, 80)
    assert tile is not None and tiling._estimate_bytes(tiny_model, 1, tile, tile) <= 4 * 40 * 40 * 200
    assert tiling._auto_tile(tiny_model, 1, 20, 20) is None


def test_forcing_one_pass_that_will_not_fit_warns(tiny_model, monkeypatch):
    monkeypatch.setattr(tiling, "_memory_budget", lambda device: 1000)
    with pytest.warns(UserWarning, match="one pass over a 12x10 image needs about"):
        tiny_model.upscale(textured(10, 12), tile=None)


# ---------------------------------------------------------------------------------------------- self-ensemble


def test_self_ensemble_is_the_mean_of_the_eight_transforms(tiny_model):
    x = torch.rand(1, 3, 7, 9)
    padded = tiling.mirrored_border(x)  # what one pass gives the network: the image and its mirrored border
    with torch.no_grad():
        outs = []
        for transpose in (False, True):
            for flip_h in (False, True):
                for flip_w in (False, True):
                    t = padded.transpose(-2, -1) if transpose else padded
                    t = t.flip(-2) if flip_h else t
                    t = t.flip(-1) if flip_w else t
                    y = tiny_model(t)
                    y = y.flip(-1) if flip_w else y
                    y = y.flip(-2) if flip_h else y
                    outs.append(y.transpose(-2, -1) if transpose else y)
        crop = tiling.BORDER_CONTEXT * tiny_model.scale
        expected = torch.stack(outs).mean(0)[:, :, crop:-crop, crop:-crop].clamp(0, 1)
    got = tiny_model.upscale(x, self_ensemble=True, channels_last=False)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, tiny_model.upscale(x), atol=1e-3)  # a random net is not flip-equivariant


# ---------------------------------------------------------------------------------------------- the default plan


def _count_passes(model):
    calls = []
    handle = model.head.register_forward_hook(lambda m, inp, out: calls.append(tuple(inp[0].shape)) and None)
    return calls, handle


@pytest.fixture
def small_cpu_tiles(monkeypatch):
    """CPU tiles of 48 LR pixels for the 8-channel test model (72 KiB maps), so tiling shows on small images."""
    monkeypatch.setattr(tiling, "CPU_TILE_FEATURE_BYTES", 4 * 8 * 48 * 48)


def test_auto_tiles_large_images_and_runs_small_ones_whole(tiny_model, small_cpu_tiles):
    calls, handle = _count_passes(tiny_model)
    tiny_model.upscale(textured(40, 40), backend="eager")  # at most CPU_WHOLE_IMAGE_TILES tiles' worth of pixels: one pass
    border = 2 * tiling.BORDER_CONTEXT  # the mirrored pixels beyond the image's borders
    assert calls == [(1, 3, 40 + border, 40 + border)]
    calls.clear()
    tiny_model.upscale(textured(150, 120), backend="eager")
    assert len(calls) > 1 and all(max(shape[-2:]) <= 48 + border for shape in calls)
    handle.remove()


@pytest.mark.parametrize("tile", [None, 0])
def test_none_and_zero_force_one_pass(tiny_model, small_cpu_tiles, tile):
    calls, handle = _count_passes(tiny_model)
    tiny_model.upscale(textured(150, 120), tile=tile, backend="eager")
    border = 2 * tiling.BORDER_CONTEXT  # the mirrored pixels beyond the image's borders
    assert calls == [(1, 3, 150 + border, 120 + border)]
    handle.remove()


def test_plan_follows_model_width_and_splits_evenly():
    lite, base = BSRModel.from_preset("bsr-lite"), BSRModel.from_preset("bsr-base")
    plan = tiling.plan_tiling(lite, 1, 1024, 1024)
    assert plan.size == 128  # 32 channels x 128 x 128 x 4 bytes = 2 MiB: 9 tiles of 128 cover 1024 exactly
    assert tiling.plan_tiling(lite, 1, 1000, 1000).size < 128  # 9 tiles still, each a little smaller
    assert tiling.plan_tiling(base, 1, 1024, 1024).size < plan.size  # 64 channels: smaller tiles
    assert tiling.plan_tiling(lite, 4, 1024, 1024).size < plan.size  # a batch of 4 shares the cache
    assert tiling.plan_tiling(lite, 1, 200, 300).whole  # BSD100-sized inputs run whole


def test_onnxruntime_gets_memory_sized_tiles_split_on_both_sides():
    """ONNX Runtime blocks its convolutions for the caches itself: its tiles are sized for memory (16 MiB maps, 362
    LR pixels for bsr-lite) and an image of one such tile's worth runs whole; what upscale plans follows the backend
    that runs, named or chosen. Tiles split both sides of the image evenly."""
    pytest.importorskip("onnxruntime")
    lite = BSRModel.from_preset("bsr-lite")
    assert tiling.plan_tiling(lite, 1, 360, 360, backend="onnxruntime").whole
    assert tiling.plan_tiling(lite, 1, 1024, 1024, backend="onnxruntime").size == 352  # 3 x 3, not 9 x 9 of 128
    assert tiling.plan_tiling(lite, 1, 1024, 1024, backend="onnxruntime-int8").size == 352
    assert tiling.plan_tiling(lite, 1, 1024, 1024, backend="jit").size == 128
    wide = tiling.plan_tiling(lite, 1, 720, 1280, backend="onnxruntime").size
    rows, cols = (math.ceil((n - 16) / (wide - 16)) for n in (720, 1280))
    assert rows * cols * wide * wide < 1.25 * 720 * 1280  # the square tiles that suit the long side alone: 1.47x
    assert api.plan_run(lite, (1, 3, 1024, 1024), backend="onnxruntime").tiling.size == 352
    assert api.plan_run(lite, (1, 3, 1024, 1024), backend="eager").tiling.size == 128
    assert api.plan_run(lite, (1, 3, 1024, 1024), backend="onnxruntime", tile=200).tiling.size == 200  # asked for


def test_models_meet_the_upscaler_contract(tiny_model):
    """What tiling, the out-of-memory fallback and evaluation read from a model, and nothing else."""
    from bsr_hub.evaluation.bicubic import BicubicModel
    from bsr_hub.inference.protocol import Upscaler

    for model in (tiny_model, BicubicModel(3)):
        assert isinstance(model, Upscaler)
        memory = model.memory_per_input_pixel()
        assert 1 <= memory.feature_map <= memory.peak
    c, g, s = tiny_model.config.num_features, tiny_model.config.num_groups, tiny_model.scale
    assert tiny_model.memory_per_input_pixel().feature_map == 4 * c  # one float32 map per LR pixel
    assert tiling._estimate_bytes(tiny_model, 2, 10, 10) == 2 * 10 * 10 * 4 * ((g + 6) * c + 3 * c * s * s)
    assert not hasattr(BicubicModel(3), "config")  # no fake config: the contract is all inference needs
    assert BicubicModel(3).upscale(textured(8, 8), tile=4, tile_overlap=2).shape == (24, 24, 3)


def test_tiling_value_object_validates():
    with pytest.raises(ValueError, match="tile size"):
        tiling.Tiling(0)
    with pytest.raises(ValueError, match="tile_overlap"):
        tiling.Tiling(64, overlap=-2)
    assert tiling.Tiling(None).whole and not tiling.Tiling(64).whole


def test_tile_argument_parser():
    import argparse

    from bsr_hub.commands.upscale import parse_tile_arg

    assert parse_tile_arg("auto") == "auto"
    assert parse_tile_arg("0") is None
    assert parse_tile_arg("96") == 96
    for bad in ("-3", "big"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_tile_arg(bad)


# ---------------------------------------------------------------------------------------------- backends


def _backends():
    import importlib.util

    have_ort = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime"))
    return ["eager", "jit", pytest.param("onnxruntime", marks=pytest.mark.skipif(not have_ort, reason="no onnxruntime"))]


@pytest.mark.parametrize("backend", _backends())
def test_backends_match_eager(tiny_model, backend):
    x = torch.rand(1, 3, 20, 28)
    expected = tiny_model.upscale(x, backend="eager", tile=None)
    assert torch.allclose(tiny_model.upscale(x, backend=backend, tile=None), expected, atol=1e-5)
    assert torch.allclose(tiny_model.upscale(x[:, :, :9, :13], backend=backend, tile=None),
                          tiny_model.upscale(x[:, :, :9, :13], backend="eager", tile=None), atol=1e-5)  # any size


@pytest.mark.slow
def test_compile_backend_matches_eager(tiny_model):
    x = torch.rand(1, 3, 16, 16)
    assert torch.allclose(tiny_model.upscale(x, backend="compile"), tiny_model.upscale(x, backend="eager"), atol=1e-4)


@pytest.mark.parametrize("backend", _backends()[1:])
def test_built_backend_follows_new_weights(tiny_model, backend):
    """A frozen graph or exported model holds a copy of the weights: changing them must rebuild it."""
    x = torch.rand(1, 3, 12, 12)
    before = tiny_model.upscale(x, backend=backend)
    with torch.no_grad():
        tiny_model.tail.bias.add_(0.1)
    after = tiny_model.upscale(x, backend=backend)
    assert not torch.allclose(before, after, atol=1e-3)
    assert torch.allclose(after, tiny_model.upscale(x, backend="eager"), atol=1e-5)


def test_graphs_of_the_same_weights_are_kept_side_by_side_and_dropped_with_old_weights(tiny_model):
    """Timing the backends one after another (autotune.py) must not rebuild the chosen one; a graph of weights that
    changed since holds a stale copy of them and goes."""
    from bsr_hub.inference.backends import _RUNNERS, get_runner

    jit = get_runner(tiny_model, "jit", torch.contiguous_format)
    ort = get_runner(tiny_model, "onnxruntime", torch.channels_last)
    assert get_runner(tiny_model, "jit", torch.contiguous_format) is jit
    assert get_runner(tiny_model, "jit", torch.channels_last) is jit  # layout-free: one graph serves both layouts
    assert get_runner(tiny_model, "onnxruntime", torch.contiguous_format) is ort and ort is not jit
    with torch.no_grad():
        tiny_model.tail.bias.add_(0.1)
    rebuilt = get_runner(tiny_model, "jit", torch.contiguous_format)
    assert rebuilt is not jit and len(_RUNNERS[tiny_model]) == 1  # both graphs of the old weights dropped


def test_built_backend_does_not_keep_the_model_alive():
    import gc
    import weakref

    from conftest import tiny_config

    model = BSRModel(tiny_config()).eval()  # not the fixture: pytest holds on to fixture values
    model.upscale(torch.rand(1, 3, 8, 8), backend="jit")
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_auto_backend_builds_only_for_large_inputs(tiny_model):
    assert backends.resolve_backend(tiny_model, "auto", pixels=64 * 64) == "eager"
    big = backends.resolve_backend(tiny_model, "auto", pixels=1024 * 1024)
    assert big == next(b for b in backends.CPU_BACKEND_PREFERENCE if b != "onnxruntime"
                       or backends._onnxruntime_available())
    # What an earlier call built does not change the choice: the same image gives the same result whatever came
    # before (a demo server that has seen a large photo must still answer a small one like a fresh process).
    small = torch.rand(1, 3, 16, 16)
    before = tiny_model.upscale(small)
    tiny_model.upscale(torch.rand(1, 3, 8, 8), backend=big)
    assert backends.resolve_backend(tiny_model, "auto", pixels=64 * 64) == "eager"
    assert torch.equal(tiny_model.upscale(small), before)


@requires_shared_data
def test_default_is_within_one_level_of_one_pass_for_the_bundled_model():
    """The issue's bar, on the trained bsr-lite-x2 and a real photo the default plan tiles (250x361 LR)."""
    model = BSRModel.from_pretrained("bsr-lite-x2")
    img = Image.open(SHARED_DATA / "benchmarks" / "Set14" / "comic.png").convert("RGB")
    assert not tiling.plan_tiling(model, 1, img.height, img.width).whole
    one_pass = np.asarray(model.upscale(img, tile=None, backend="eager")).astype(int)
    for backend in ("auto", "eager", "jit"):
        fast = np.asarray(model.upscale(img, backend=backend)).astype(int)
        assert np.abs(fast - one_pass).max() <= 1, backend


# ---------------------------------------------------------------------------------------------- many images


def test_upscale_many_batches_equal_sizes_and_keeps_order(tiny_model):
    images = [textured(12, 16, seed=i) for i in range(3)] + [textured(10, 10, seed=9), textured(12, 16, seed=5)]
    calls, handle = _count_passes(tiny_model)
    batched = api.upscale_many(tiny_model, images, batch_size=4, backend="eager")
    handle.remove()
    assert [c[0] for c in calls] == [3, 1, 1]  # three of one size together; the others alone (order is kept)
    for image, out in zip(images, batched):
        assert np.abs(out.astype(int) - tiny_model.upscale(image).astype(int)).max() <= 1


def test_upscale_many_rejects_a_bad_batch_size(tiny_model):
    with pytest.raises(ValueError, match="batch_size"):
        api.upscale_many(tiny_model, [textured(4, 4)], batch_size=0)


def test_without_onnxruntime_auto_falls_back_and_asking_for_it_names_the_extra(tiny_model, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert backends.resolve_backend(tiny_model, "auto", pixels=1024 * 1024) == "jit"
    with pytest.raises(ImportError, match=r"bsr-hub\[export\]"):
        tiny_model.upscale(textured(4, 4), backend="onnxruntime")
