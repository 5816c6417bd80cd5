"""The tiled result is assembled band by band in the output's own sample type: exactly what one float32 buffer of
the whole output gave before, and without that buffer's memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, tiny_config
from PIL import Image

from bsr_hub import BSRModel
from bsr_hub.inference import api, tiling


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on tiny tiles: with two threads on this loaded 2-core machine the pool's waiting cost about 50
    times the work (0.2 s of CPU for one 17x17 forward against 4 ms on one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Noise around a gradient, with an edge: HxWx3 uint8 that uses the whole range."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 40 + 150 * (xx + yy) / (h + w) + 60 * (xx > w // 2)
    return np.clip(base[..., None] + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)


def float_buffer_result(model: BSRModel, x: torch.Tensor, tile: int | None, overlap: int) -> torch.Tensor:
    """The assembly as it was: every tile's weighted output summed into one float32 buffer as large as the output,
    normalised by the two 1-D weight sums, clamped. (B, 3, h, w) -> (B, 3, sh, sw), NCHW, eager."""
    s, (b, c, h, w) = model.scale, x.shape

    def forward(window: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(window.contiguous()).float()

    if tile is None or (h <= tile and w <= tile):
        window, top, left = tiling._window(x, 0, 0, h, w, tiling.BORDER_CONTEXT)
        return forward(window)[:, :, top * s : (top + h) * s, left * s : (left + w) * s].clamp(0, 1)
    overlap = min(overlap, tile // 2)
    out = torch.zeros(b, c, h * s, w * s)
    row_weight, col_weight = torch.zeros(h * s), torch.zeros(w * s)
    ys, xs = tiling._tile_starts(h, tile, tile - overlap), tiling._tile_starts(w, tile, tile - overlap)
    th, tw = min(tile, h), min(tile, w)
    for y0 in ys:
        wy = tiling._ramp(th * s, overlap * s, lead=y0 > 0, trail=y0 + th < h)
        row_weight[y0 * s : (y0 + th) * s] += wy
        for x0 in xs:
            wx = tiling._ramp(tw * s, overlap * s, lead=x0 > 0, trail=x0 + tw < w)
            if y0 == ys[0]:
                col_weight[x0 * s : (x0 + tw) * s] += wx
            window, top, left = tiling._window(x, y0, x0, th, tw, tiling.BORDER_CONTEXT)
            y = forward(window)[:, :, top * s : (top + th) * s, left * s : (left + tw) * s]
            out[:, :, y0 * s : (y0 + th) * s, x0 * s : (x0 + tw) * s] += y * (wy[:, None] * wx[None, :])
    return out.div_(row_weight[:, None]).div_(col_weight).clamp_(0, 1)


def to_samples(y: torch.Tensor, maximum: int) -> np.ndarray:
    """The conversion rule: clamp, scale to the integer range, round half to even. (1, C, H, W) -> (H, W, C) int."""
    return y.clamp(0, 1).mul(maximum).round()[0].permute(1, 2, 0).numpy().astype(np.int64)


def expected_pixels(model: BSRModel, kind: str, arr: np.ndarray, tile: int | None, overlap: int) -> np.ndarray:
    """What the float-buffer path returned for `arr` (HxWxC uint8, or HxW uint16), as (H, W, C) integers."""
    maximum = 65535 if arr.dtype == np.uint16 else 255
    x = torch.from_numpy(arr.astype(np.float32) / maximum)
    x = x[..., None] if x.ndim == 2 else x
    x = x.permute(2, 0, 1)[None]  # (1, C, H, W)
    grey = x.shape[1] in (1, 2)
    colour = x[:, :1].expand(-1, 3, -1, -1) if grey else x[:, :3]
    y = float_buffer_result(model, colour, tile, overlap)
    y = y.mean(dim=1, keepdim=True) if grey else y
    if kind in ("RGBA", "LA"):
        alpha = F.interpolate(x[:, -1:], scale_factor=model.scale, mode="bicubic", align_corners=False)
        y = torch.cat([y, alpha.clamp(0, 1)], dim=1)
    return to_samples(y, maximum)


def as_pixels(result) -> np.ndarray:
    arr = np.asarray(result).astype(np.int64)
    return arr[..., None] if arr.ndim == 2 else arr


KINDS = {
    "RGB": lambda a: Image.fromarray(a[:, :, :3]),
    "RGBA": lambda a: Image.fromarray(a),
    "L": lambda a: Image.fromarray(a[:, :, 1]),
    "LA": lambda a: Image.fromarray(a[:, :, 1::2], "LA"),
    "I;16": lambda a: Image.fromarray(a[:, :, 0].astype(np.uint16) * 257 + a[:, :, 3]),
    "uint16-rgb": lambda a: a[:, :, :3].astype(np.uint16) * 257 + a[:, :, 3:],
}


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("tile", [None, 9, 20, 40])
@pytest.mark.parametrize("kind", KINDS)
def test_tiled_output_equals_the_float_buffer_result(scale, tile, kind):
    torch.manual_seed(scale)
    model = BSRModel(tiny_config(scale)).eval()
    rgba = np.dstack([textured(37, 51, seed=scale), np.random.default_rng(1).integers(0, 256, (37, 51), np.uint8)])
    image = KINDS[kind](rgba)
    source = np.asarray(image) if isinstance(image, Image.Image) else image
    source = source.astype(np.uint16) if kind == "I;16" else source
    got = model.upscale(image, tile=tile, tile_overlap=8, channels_last=False, backend="eager")
    assert (got.mode if isinstance(got, Image.Image) else got.dtype) == \
        (image.mode if isinstance(image, Image.Image) else image.dtype)
    assert np.array_equal(as_pixels(got), expected_pixels(model, kind, source, tile, overlap=8))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_float_outputs_are_the_float_result_and_batches_split_exactly(scale):
    torch.manual_seed(scale)
    model = BSRModel(tiny_config(scale)).eval()
    x = torch.rand(2, 3, 29, 41)
    expected = float_buffer_result(model, x, 12, 8)
    options = dict(tile=12, tile_overlap=8, channels_last=False, backend="eager")
    assert torch.equal(model.upscale(x, **options), expected)
    assert torch.equal(api.super_resolve(model, x, **options), expected)
    assert model.upscale(x.double(), **options).dtype == torch.float64
    images = [Image.fromarray(textured(29, 41, seed=k)) for k in range(3)]
    batched = api.upscale_many(model, images, batch_size=3, **options)  # one batch of three, split by band
    for image, result in zip(images, batched):
        x = torch.from_numpy(np.asarray(image).astype(np.float32) / 255).permute(2, 0, 1)[None]
        reference = float_buffer_result(model, torch.cat([x, x, x]), 12, 8)[:1]  # same batch shape, same kernels
        assert np.array_equal(as_pixels(result), to_samples(reference, 255))


PEAK_CHILD = """
import json, numpy as np, torch
from bsr_hub.evaluation.bicubic import BicubicModel
torch.set_num_threads(1)
model = BicubicModel(4, uint8=False)  # a model with no activations to speak of: what is left is the image buffers
def peak():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
image = np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8)
model.upscale(image[:40, :40], tile=32, backend="eager")  # warm up
before = peak()
out = model.upscale(image, tile=32, backend="eager")
print(json.dumps({"peak": peak() - before, "output": out.nbytes}))
"""


@pytest.mark.slow
def test_a_large_output_is_not_assembled_in_float32():
    """A 3200x2400 RGB result: 23 MB as uint8, 92 MB as a float32 buffer. The child's own peak (VmHWM: ru_maxrss
    would start from this process's) must stay under the output plus half that buffer, 69 MB: assembled in float32
    it peaked at 145 MB, band by band at 45 MB."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    run = subprocess.run([sys.executable, "-c", PEAK_CHILD], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    float32_buffer = 3200 * 2400 * 3 * 4
    assert measured["output"] == 3200 * 2400 * 3
    assert measured["peak"] < measured["output"] + float32_buffer / 2, measured
