"""Image in, image out: `upscale` for PIL images, numpy arrays and torch tensors, with seamless tiling.

The network sees (B, 3, h, w) float RGB in [0, 1]. Everything else a user may hand us (grey, alpha, palette,
16-bit, CMYK, EXIF-rotated photos, HWC arrays, CHW tensors) is converted on the way in and restored to the
same kind on the way out; what cannot be converted is a ValueError that says why.

How the network is run is decided here too, by default from measurements (bench/results/fast_path.md):
`plan_tiling` picks the whole image or cache-sized tiles, and `backend` picks eager PyTorch, a frozen
TorchScript graph, torch.compile or ONNX Runtime.
"""

from __future__ import annotations

import copy
import functools
import io
import math
import os
import threading
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from ..core.images import MODES, narrowed_png_rawmode, read_png_16bit, straight_mode  # noqa: F401 (read_png_16bit: re-exported)

if TYPE_CHECKING:
    from ..models.modeling import BSRModel

DEFAULT_TILE_OVERLAP = 16
"""LR pixels shared by neighbouring tiles. A quarter of it on each side is discarded and the middle half is
cross-faded, which keeps tiled output within 8-bit rounding of untiled output (tests/inference/test_inference.py)."""

MIN_TILE = 32
"""Smallest tile the out-of-memory fallback will try before giving up."""

BORDER_CONTEXT = 8
"""LR pixels of mirrored image given to the network beyond each border of the image, and cropped from its output.
The network pads its convolutions with zeros and was trained on crops of photographs, where it learned what to do
with that padding; on flat or dark images its border is far off (a flat (198, 34, 18) image at x2: a corner 47
levels wrong). With 8 mirrored pixels every bundled model is within 1.2 levels of a flat colour (within 2.4 with 4),
and on Set5 x2 the outermost ring of output pixels is 0.5 dB better than with none. The mirror is half-sample
symmetric (d c b a | a b c d), how MATLAB's imresize extends the image when the LR is made; the whole-sample mirror
(c b | a b c) was 1.6 dB worse there. Costs (1 + 16/h)(1 + 16/w) times the pixels of one pass (13 % at 256x256);
on tiles, only the sides at the image's border grow."""


# ---------------------------------------------------------------------------------------------- conversion in/out


@dataclass(frozen=True)
class _Restore:
    """How to hand the result back in the caller's own form."""

    kind: str  # "pil" | "numpy" | "torch"
    grey: bool  # one colour channel in, one out
    alpha: bool  # an alpha channel rides along (upscaled with bicubic, not the network)
    dtype: Any  # numpy dtype, torch dtype, or the PIL mode of the output
    layout: str  # "HW", "HWC" (numpy), "CHW", "BCHW" (torch), "PIL"
    device: torch.device | None = None


def _from_pil(img: Image.Image) -> tuple[np.ndarray, _Restore]:
    if narrowed_png_rawmode(img) is not None:  # checked before anything decodes it
        raise ValueError("this PNG has 16 bits per sample in colour (or grey with alpha), which Pillow decodes to "
                         "8 bits; read it with bsr_hub.core.images.read_png_16bit(path), a uint16 array that upscale "
                         "returns at full depth")
    img = ImageOps.exif_transpose(img)  # a phone photo must come out the way it is displayed
    img = straight_mode(img)  # L, LA, RGB, RGBA, or a deeper grey mode (images.MODES)
    mode = img.mode
    info = MODES[mode]
    if info.floating:
        raise ValueError(f"unsupported PIL image mode {img.mode!r}; convert it to RGB, L or I;16 first")
    if not info.eight_bit:  # I;16* and I: integers, read as 16-bit
        arr = np.asarray(img)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(f"mode {img.mode} image has values outside 0..65535; only 16-bit integer images are supported")
        out_mode = "I" if mode == "I" else "I;16"
        return arr.astype(np.float32) / 65535.0, _Restore("pil", True, False, out_mode, "PIL")
    arr = np.asarray(img, dtype=np.float32) / 255.0  # (H, W) or (H, W, C)
    return arr, _Restore("pil", mode in ("L", "LA"), mode in ("LA", "RGBA"), mode, "PIL")


def _from_numpy(arr: np.ndarray) -> tuple[np.ndarray, _Restore]:
    if arr.ndim == 2:
        layout, channels = "HW", 1
    elif arr.ndim == 3 and arr.shape[2] in (1, 2, 3, 4):
        layout, channels = "HWC", arr.shape[2]
    else:
        raise ValueError(
            f"numpy images must be HxW or HxWxC with C in 1..4, got shape {arr.shape} "
            "(a CxHxW array must be transposed to HxWxC)"
        )
    if arr.dtype == np.uint8:
        x = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        x = arr.astype(np.float32) / 65535.0
    elif np.issubdtype(arr.dtype, np.floating):
        x = arr.astype(np.float32)
        if x.size:
            _check_unit_range(float(x.min()), float(x.max()), bool(np.isfinite(x).all()))
    else:
        raise ValueError(f"numpy images must be uint8, uint16 or float in [0, 1], got dtype {arr.dtype}")
    grey = channels in (1, 2)
    return x, _Restore("numpy", grey, channels in (2, 4), arr.dtype, layout)


def _from_torch(t: torch.Tensor) -> tuple[torch.Tensor, _Restore]:
    if t.ndim not in (3, 4) or t.shape[-3] not in (1, 2, 3, 4):
        raise ValueError(f"torch images must be BxCxHxW (or CxHxW) with C in 1..4, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"torch images must be float in [0, 1], got dtype {t.dtype}")
    x = t.detach().float()
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.numel():
        _check_unit_range(x.min().item(), x.max().item(), bool(torch.isfinite(x).all()))
    c = x.shape[1]
    layout = "BCHW" if t.ndim == 4 else "CHW"
    return x, _Restore("torch", c in (1, 2), c in (2, 4), t.dtype, layout, t.device)


def _check_unit_range(lo: float, hi: float, finite: bool, tol: float = 1e-3) -> None:
    # Checked before anything else: NaN makes min/max meaningless.
    if not finite:
        raise ValueError("the image contains NaN or infinite values")
    if lo < -tol or hi > 1 + tol:
        raise ValueError(f"float images must be in [0, 1], got values in [{lo:.4g}, {hi:.4g}] (divide by 255?)")


def _to_bchw(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """numpy HW / HWC or torch BCHW float -> torch (B, C, H, W) float32."""
    if isinstance(x, torch.Tensor):
        return x
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.ndim == 2:
        t = t.unsqueeze(-1)
    return t.permute(2, 0, 1).unsqueeze(0)  # (H, W, C) -> (1, C, H, W)


class _Output:
    """The caller's results, allocated once in their own kind and sample type and filled band by band of output rows
    as the network produces them (`write`): for 8- and 16-bit outputs nothing as large as the image is float (a
    float32 RGB copy would be 12 bytes per output pixel). A float tensor or array is its own float buffer.

    `x` is the prepared input (B, C, H, W), alpha last; `counts` how many of its images each result holds (one
    result of B images for `upscale`, one per input for a batch of `upscale_many`).
    """

    def __init__(self, spec: _Restore, x: torch.Tensor, scale: int, counts: Sequence[int]):
        self.spec, self.counts = spec, list(counts)
        if spec.kind == "numpy":
            self.integer = np.dtype(spec.dtype) if np.dtype(spec.dtype) in (np.uint8, np.uint16) else None
        elif spec.kind == "pil":
            self.integer = np.dtype(np.uint16) if spec.dtype in ("I;16", "I") else np.dtype(np.uint8)
        else:
            self.integer = None  # a float tensor
        self.alpha = None
        if spec.alpha:
            # Bicubic over the whole plane, turned into output samples at once (1 byte per pixel for 8-bit): a band of
            # it alone would differ from the whole in float rounding at x3 (source positions are computed from the
            # absolute output row). Its float plane, 4 bytes per output pixel, lives only until then.
            alpha = F.interpolate(x[:, -1:], scale_factor=scale, mode="bicubic", align_corners=False)
            self.alpha = self._samples(alpha.clamp_(0, 1))  # (B, 1, sH, sW)
        _, _, h, w = x.shape
        channels = (1 if spec.grey else 3) + spec.alpha
        self.results = [self._allocate(n, channels, h * scale, w * scale) for n in self.counts]

    def _allocate(self, n: int, channels: int, height: int, width: int) -> Any:
        spec = self.spec
        if spec.kind == "torch":
            return torch.empty(n, channels, height, width, dtype=spec.dtype, device=spec.device)
        if spec.kind == "numpy":
            return np.empty((height, width) if spec.layout == "HW" else (height, width, channels), spec.dtype)
        return Image.new(spec.dtype, (width, height))  # L, LA, RGB, RGBA, or I;16 / I for deeper grey

    def _samples(self, y: torch.Tensor) -> torch.Tensor:
        """Float in [0, 1] -> the output's samples, in place where it can: clamped, and for integer outputs scaled to
        their full range and rounded half to even (torch.round), the same rule for a band as for a whole image."""
        y = y.clamp_(0, 1)
        if self.spec.kind == "torch":
            return y.to(device=self.spec.device, dtype=self.spec.dtype)
        if self.integer is None:
            return y  # a float array: numpy casts on assignment, as astype would
        return y.mul_(np.iinfo(self.integer).max).round_().to(torch.int32 if self.integer == np.uint16 else torch.uint8)

    def write(self, row: int, band: torch.Tensor) -> None:
        """Network output rows row..row+n, (B, 3, n, sW) float clamped to [0, 1] (ours to spend) -> the results."""
        n = band.shape[-2]
        y = self._samples(band.mean(dim=1, keepdim=True) if self.spec.grey else band)  # (B, 1 or 3, n, sW)
        if self.alpha is not None:
            y = torch.cat([y, self.alpha[:, :, row : row + n].to(y.device)], dim=1)
        start = 0
        for result, count in zip(self.results, self.counts):
            part, start = y[start : start + count], start + count
            if self.spec.kind == "torch":
                result[:, :, row : row + n] = part
                continue
            arr = part[0].permute(1, 2, 0).cpu().numpy()  # (n, sW, C), a view
            if self.spec.kind == "numpy":
                result[row : row + n] = arr[:, :, 0] if self.spec.layout == "HW" else arr
            else:
                arr = arr.astype(np.uint16) if self.spec.dtype == "I;16" else arr  # "I" keeps int32
                band_image = Image.fromarray(np.ascontiguousarray(arr[:, :, 0] if arr.shape[2] == 1 else arr))
                result.paste(band_image, (0, row))  # (n, sW, 2) -> LA, 3 -> RGB, 4 -> RGBA: the result's own mode

    def finished(self) -> list[Any]:
        """The results, in the caller's layout."""
        if self.spec.kind == "torch" and self.spec.layout == "CHW":
            return [result[0] for result in self.results]
        return self.results


# ---------------------------------------------------------------------------------------------- the forward passes


def _ensemble(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Self-ensemble ("+"): the mean over the 8 flips/rotations, each undone on the output."""
    out = torch.zeros(())
    for k in range(8):
        t = x.flip(-1) if k >= 4 else x
        y = model(torch.rot90(t, k % 4, dims=(-2, -1)))
        y = torch.rot90(y, -(k % 4), dims=(-2, -1))
        out = out + (y.flip(-1) if k >= 4 else y)
    return out / 8


def _tile_starts(n: int, tile: int, stride: int) -> list[int]:
    if n <= tile:
        return [0]
    starts = list(range(0, n - tile, stride))
    return starts + [n - tile]  # the last tile is flush with the border rather than padded


def _ramp(length: int, margin: int, lead: bool, trail: bool) -> torch.Tensor:
    """1-D blending weight: zero over the first quarter of the overlap, linear over the middle half, one
    after; mirrored at the far end. Neighbours' ramps sum to one, so cross-fades are seamless."""
    w = torch.ones(length)
    if margin <= 0:
        return w
    d = torch.arange(length, dtype=torch.float32) + 0.5
    ramp = ((d - margin / 4) / (margin / 2)).clamp(0, 1)
    if lead:
        w = torch.minimum(w, ramp)
    if trail:
        w = torch.minimum(w, ramp.flip(0))
    return w


# ---------------------------------------------------------------------------------------------- how to run: tiles


AUTO = "auto"


@dataclass(frozen=True)
class TileSetting:
    """The caller's tile options, checked here and nowhere else: `tile` "auto" (planned per image, `plan_tiling`),
    None or 0 (one pass; 0 is stored as None) or n > 0 LR pixels, and the `overlap` neighbouring tiles share."""

    tile: int | str | None = AUTO
    overlap: int = DEFAULT_TILE_OVERLAP

    def __post_init__(self) -> None:
        if isinstance(self.overlap, bool) or not isinstance(self.overlap, int) or self.overlap < 0:
            raise ValueError(f"tile_overlap must be a non-negative integer, got {self.overlap!r}")
        tile = self.tile
        if tile == AUTO or tile is None:
            return
        if isinstance(tile, bool) or not isinstance(tile, int) or tile < 0:
            raise ValueError(f"tile must be 'auto', None or 0 (one pass), or a positive number of LR pixels; got {tile!r}")
        if tile == 0:
            object.__setattr__(self, "tile", None)


@dataclass(frozen=True)
class Tiling:
    """How one image goes through the network: whole (`size=None`) or in square tiles of `size` LR pixels
    that share `overlap` pixels with their neighbours. `reason` says who decided and why (for logs and bench)."""

    size: int | None
    overlap: int = DEFAULT_TILE_OVERLAP
    reason: str = "asked for"

    def __post_init__(self) -> None:
        # A plan, not a request: "auto" and 0 were resolved before (TileSetting checks what callers pass).
        if self.size is not None and (isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1):
            raise ValueError(f"tile size must be a positive integer number of LR pixels or None, got {self.size!r}")
        TileSetting(None, self.overlap)  # the overlap's one check

    @property
    def whole(self) -> bool:
        return self.size is None

CPU_TILE_FEATURE_BYTES = 2 << 20
"""On the CPU, tiles are sized so that one feature map of one tile is about 2 MiB (128x128 LR pixels at bsr-lite's
32 channels, 90x90 at bsr-base's 64): a map then stays in this CPU's 2 MiB per-core L2 and the dozen maps a forward
pass keeps alive (the group outputs kept for fusion, the residual branches) stay in the 32 MiB L3. A whole
1024x1024 image at 32 channels has 128 MiB maps, which stream through main memory at every layer: in the quiet run
of bench/results/inference.md tiles of 128 ran bsr-lite x2 at 1024x1024 in 5.7 s against 12.6 s in one pass.
bench/results/fast_path.md measures the rule as shipped."""

CPU_WHOLE_IMAGE_TILES = 4
"""Up to this many tiles' worth of pixels the CPU runs the whole image. A judgement, not a measured crossover: the
overlap every tile recomputes (16 LR pixels: 2x2 tiles of 136 over 256x256 are 13 % more pixels) is certain,
while the cache gain on maps of at most 8 MiB is small (bench/results/inference.md: bsr-lite ran whole 256x256
inputs at 94 % of a plain conv in the same layout). It also keeps every BSD100 input (240x160 at x2) whole."""


def _tile_target(model: torch.nn.Module, batch: int) -> int:
    """The side of a tile whose feature maps are CPU_TILE_FEATURE_BYTES for this model's width and batch."""
    per_pixel = model.memory_per_input_pixel().feature_map
    return max(MIN_TILE, int(math.sqrt(CPU_TILE_FEATURE_BYTES / (per_pixel * batch))))


def _even_tile(length: int, target: int, overlap: int) -> int:
    """The smallest tile <= target that covers `length` with as few tiles as `target` would need: 1024 with a
    target of 128 and overlap 16 gives 9 tiles of 128, 1000 gives 9 of 125, so the last tile is not mostly overlap."""
    if length <= target:
        return length
    n = math.ceil((length - overlap) / (target - overlap))
    return math.ceil((length - overlap) / n) + overlap


def plan_tiling(model: torch.nn.Module, batch: int, height: int, width: int, overlap: int = DEFAULT_TILE_OVERLAP) -> Tiling:
    """The default (`tile="auto"`): how to run a (batch, 3, height, width) input on the model's device.

    - CPU: whole image up to CPU_WHOLE_IMAGE_TILES tiles' worth of pixels, else tiles of about
      CPU_TILE_FEATURE_BYTES per feature map, split evenly over the image (see those constants for why).
    - GPU and other devices: the whole image, which keeps the device busiest, unless its activations would not
      fit in memory; then the largest power-of-two tile that does (with a warning).
    """
    if model.device.type == "cpu":
        target = _tile_target(model, batch)
        if height * width <= CPU_WHOLE_IMAGE_TILES * target * target or target <= 2 * overlap:
            return Tiling(None, overlap, f"whole image: at most {CPU_WHOLE_IMAGE_TILES} CPU tiles of {target}")
        size = _even_tile(max(height, width), target, overlap)
        return Tiling(size, overlap, f"CPU tiles of about {CPU_TILE_FEATURE_BYTES >> 20} MiB per feature map")
    tile = _auto_tile(model, batch, height, width)
    if tile is None:
        return Tiling(None, overlap, f"whole image: fits in {model.device.type} memory")
    return Tiling(tile, overlap, f"the whole image does not fit in {model.device.type} memory")


def resolve_tiling(tile: int | str | None, overlap: int, model: torch.nn.Module, shape: Sequence[int]) -> Tiling:
    """The caller's `tile` argument -> a Tiling: "auto" plans, None or 0 forces one pass, n > 0 is tiles of n."""
    setting = TileSetting(tile, overlap)
    if setting.tile == AUTO:
        b, _, h, w = shape
        return plan_tiling(model, b, h, w, setting.overlap)
    if setting.tile is None:
        return Tiling(None, setting.overlap, "one pass, asked for")
    return Tiling(setting.tile, setting.overlap)


def _mirror_index(length: int, before: int, after: int) -> torch.Tensor:
    """Indices extending an axis of `length` by `before` and `after` half-sample symmetric samples (d c b a | a b c d |
    d c b a), mirrored again where the axis is shorter than the extension."""
    i = torch.arange(-before, length + after) % (2 * length)
    return torch.where(i >= length, 2 * length - 1 - i, i)


def mirrored_border(x: torch.Tensor, context: int = BORDER_CONTEXT) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H + 2c, W + 2c): the image with `context` mirrored pixels beyond each border, what
    the network needs around a whole image (BORDER_CONTEXT). Traceable with dynamic sizes (the ONNX export)."""
    rows = _mirror_index(x.shape[-2], context, context).to(x.device)
    cols = _mirror_index(x.shape[-1], context, context).to(x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def _window(x: torch.Tensor, y0: int, x0: int, th: int, tw: int, context: int) -> tuple[torch.Tensor, int, int]:
    """The (th, tw) window of x at (y0, x0), with `context` mirrored pixels added on each side that is a border of
    the image (a copy of the window alone). Returns it and the rows and columns added above and to the left."""
    h, w = x.shape[-2:]
    top, left = (context if y0 == 0 else 0), (context if x0 == 0 else 0)
    bottom, right = (context if y0 + th == h else 0), (context if x0 + tw == w else 0)
    if not (top or left or bottom or right):
        return x[:, :, y0 : y0 + th, x0 : x0 + tw], 0, 0
    rows = (_mirror_index(h, top, bottom)[y0 : y0 + th + top + bottom]).to(x.device)
    cols = (_mirror_index(w, left, right)[x0 : x0 + tw + left + right]).to(x.device)
    return x.index_select(-2, rows).index_select(-1, cols), top, left


def _run_tiled(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    scale: int,
    tile: int | None,
    overlap: int,
    emit: Callable[[int, torch.Tensor], None],
    context: int = BORDER_CONTEXT,
) -> None:
    """Super-resolve (B, C, H, W) on x's device, in one pass (`tile=None`) or tile by tile, handing the result to
    `emit(row, band)` from the top down: output rows row..row+n as a (B, C, n, sW) float band, emit's to spend (it
    may work in place) until it returns.

    Each side of a tile that is a border of the image gets `context` mirrored pixels (BORDER_CONTEXT), as one pass
    does; its other sides are cross-faded with its neighbours'. The tiles are summed into a buffer one row of tiles
    tall; the rows no later row of tiles reaches are then final, and go out, and the rows the next row of tiles
    shares are carried down. The blending weights are separable (a row ramp times a column ramp), so they are
    normalised by two 1-D sums. Nothing here grows with the image but those sums: what the result is assembled in
    is the caller's (`_Output`), and each pixel's sum is made in the same order as in one output-sized buffer.
    """
    b, c, h, w = x.shape
    if tile is None or (h <= tile and w <= tile):
        window, top, left = _window(x, 0, 0, h, w, context)
        emit(0, forward(window)[:, :, top * scale : (top + h) * scale, left * scale : (left + w) * scale].to(x.device))
        return
    overlap = min(overlap, tile // 2)
    stride = tile - overlap
    ys, xs = _tile_starts(h, tile, stride), _tile_starts(w, tile, stride)
    th, tw = min(tile, h), min(tile, w)
    row_ramps = [_ramp(th * scale, overlap * scale, lead=y0 > 0, trail=y0 + th < h).to(x.device) for y0 in ys]
    col_ramps = [_ramp(tw * scale, overlap * scale, lead=x0 > 0, trail=x0 + tw < w).to(x.device) for x0 in xs]
    row_weight = torch.zeros(h * scale, device=x.device)
    col_weight = torch.zeros(w * scale, device=x.device)
    for y0, wy in zip(ys, row_ramps):
        row_weight[y0 * scale : (y0 + th) * scale] += wy
    for x0, wx in zip(xs, col_ramps):
        col_weight[x0 * scale : (x0 + tw) * scale] += wx
    band = torch.zeros(b, c, th * scale, w * scale, device=x.device)  # output rows y0*s .. (y0 + th)*s
    for i, (y0, wy) in enumerate(zip(ys, row_ramps)):
        for x0, wx in zip(xs, col_ramps):
            window, top, left = _window(x, y0, x0, th, tw, context)
            y = forward(window)[:, :, top * scale : (top + th) * scale, left * scale : (left + tw) * scale]
            band[:, :, :, x0 * scale : (x0 + tw) * scale] += y.to(x.device) * (wy[:, None] * wx[None, :])
        done = ((ys[i + 1] if i + 1 < len(ys) else h) - y0) * scale  # rows no later row of tiles reaches
        rows = slice(y0 * scale, y0 * scale + done)
        emit(y0 * scale, band[:, :, :done].div_(row_weight[rows, None]).div_(col_weight))  # (B, C, done, sW)
        if i + 1 < len(ys):
            shared = band[:, :, done:].clone()  # what the next row of tiles adds to
            band.zero_()
            band[:, :, : shared.shape[-2]] = shared


def _estimate_bytes(model: BSRModel, b: int, h: int, w: int) -> int:
    """Rough peak activation memory of one forward pass (inference, fp32), from the model's own estimate."""
    return b * h * w * model.memory_per_input_pixel().peak


def _memory_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.7)
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        available = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4 << 30
    return int(available * 0.5)


def _auto_tile(model: BSRModel, b: int, h: int, w: int) -> int | None:
    """A tile size when the whole image would not fit in memory, else None (untiled)."""
    budget = _memory_budget(model.device)
    if _estimate_bytes(model, b, h, w) <= budget:
        return None
    tile = 1024
    while tile > MIN_TILE and _estimate_bytes(model, b, tile, tile) > budget:
        tile //= 2
    warnings.warn(
        f"a {w}x{h} image does not fit in memory untiled; using tile={tile} (pass tile= to choose)", stacklevel=4
    )
    return tile


# ---------------------------------------------------------------------------------------------- how to run: backends

BACKENDS = ("eager", "jit", "compile", "onnxruntime")
"""eager: the nn.Module as it is. jit: a traced TorchScript graph, frozen (weights become constants) and passed
through torch.jit.optimize_for_inference (conv + ReLU fusion, MKL-DNN layouts). compile: torch.compile with the
inductor backend and freezing; compiled once per input shape (about a minute on this CPU), reused after. onnxruntime:
the model exported to ONNX (opset 17, any height and width) and run by ONNX Runtime's CPU provider; needs the
`export` extra."""

CPU_BACKEND_PREFERENCE = ("onnxruntime", "jit", "eager")
"""What `backend="auto"` runs on the CPU: the first of these that is available (onnxruntime only with the `export`
extra). bench/fast_path.py times every backend side by side on bsr-lite-x2. With training jobs on the cores, ONNX
Runtime took about a third of eager's and jit's time on the same tiles (bench/results/fast_path_384.md); on the
quieter machine the backends were within 25 % of each other at 1024x1024 (bench/results/fast_path.md: compile 3.4,
onnxruntime 4.0, eager channels_last 4.3, jit 4.7 s). jit and eager are within noise; jit comes first as it fuses
conv + ReLU. torch.compile, the fastest once built there, is left out of the default: its first call on each new
tile shape costs 12 s on the quiet machine and over 200 s under load, more than it saves on one image."""

# Built runners, per model: rebuilding a frozen graph or an ONNX session costs seconds, compiling a minute.
_RUNNERS: weakref.WeakKeyDictionary[torch.nn.Module, dict] = weakref.WeakKeyDictionary()
_RUNNERS_LOCK = threading.Lock()


def _weights_key(model: torch.nn.Module) -> tuple:
    # A frozen graph or an exported model holds a copy of the weights: any in-place change (an optimizer step bumps
    # `_version`) or a move (new storage) must rebuild it rather than silently run the old weights.
    return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in model.parameters())


def _onnxruntime_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


CPU_BUILD_MIN_PIXELS = 256 * 256
"""`backend="auto"` builds its graph (an ONNX export or a frozen trace: one to a few seconds, once per model) only for
inputs of at least this many LR pixels, or once it is built anyway: a smaller image runs eager in less time."""


def resolve_backend(model: torch.nn.Module, backend: str, pixels: int | None = None) -> str:
    """"auto" -> eager off the CPU, else the first available of CPU_BACKEND_PREFERENCE (eager for an input of
    fewer than CPU_BUILD_MIN_PIXELS `pixels`); names are checked. The choice depends on the input alone, never on
    what earlier calls built: the backends agree only to within rounding, and the same image must give the same
    result whatever was upscaled before."""
    from ..models.modeling import BSRModel

    if backend not in (AUTO, *BACKENDS):
        raise ValueError(f"backend must be 'auto' or one of {', '.join(BACKENDS)}; got {backend!r}")
    if backend == AUTO:
        if model.device.type != "cpu" or not isinstance(model, BSRModel):
            return "eager"  # on a GPU eager channels_last is what was measured; other modules (bicubic) stay as they are
        available = {"eager": True, "jit": True, "compile": True, "onnxruntime": _onnxruntime_available()}
        preferred = next(b for b in CPU_BACKEND_PREFERENCE if available[b])
        small = pixels is not None and pixels < CPU_BUILD_MIN_PIXELS
        return "eager" if small else preferred
    if backend == "onnxruntime" and model.device.type != "cpu":
        raise ValueError(f"backend='onnxruntime' runs on the CPU only; the model is on {model.device}")
    if backend == "onnxruntime":
        from ..core.extras import require

        require("onnxruntime", "onnx", extra="export", what="backend='onnxruntime'")
    return backend


def _build_runner(model: torch.nn.Module, backend: str, memory_format: torch.memory_format) -> Callable:
    example = torch.rand(1, 3, 32, 32, device=model.device, dtype=model.dtype).contiguous(memory_format=memory_format)
    if backend == "jit":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice: the graph is what we want here
            traced = torch.jit.trace(copy.deepcopy(model).eval(), example, check_trace=False)
            return torch.jit.optimize_for_inference(torch.jit.freeze(traced))
    if backend == "compile":
        # A private copy: the cache must not keep the caller's model alive, and freezing treats weights as constants.
        return torch.compile(copy.deepcopy(model).eval(), backend="inductor", dynamic=False, options={"freezing": True})
    if backend == "onnxruntime":
        from ..core.extras import require

        ort = require("onnxruntime", "onnx", extra="export", what="backend='onnxruntime'")
        from ..models.export import INPUT_NAME, trace_to_onnx

        buffer = io.BytesIO()
        try:
            trace_to_onnx(model, example.contiguous(), buffer)
        except Exception as err:  # torch reports a missing `onnx` as its own error type
            raise ImportError(f"backend='onnxruntime' could not export the model ({err}); "
                              "pip install 'bsr-hub[export]'") from err
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the same threads PyTorch would use
        session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])

        def run(x: torch.Tensor) -> torch.Tensor:
            (y,) = session.run(None, {INPUT_NAME: x.detach().float().contiguous().numpy()})
            return torch.from_numpy(y)

        return run
    raise ValueError(backend)


def get_runner(model: torch.nn.Module, backend: str, memory_format: torch.memory_format) -> Callable:
    """The callable that runs `model` with `backend` (resolved, not "auto"): built once, reused while the weights,
    device and dtype stay the same."""
    if backend == "eager":
        return model
    key = (backend, memory_format, _weights_key(model))
    # One build at a time: concurrent first calls (a demo's simultaneous requests) would otherwise run
    # torch.onnx.export in parallel, which it refuses ("GLOBALS.in_onnx_export must be False").
    with _RUNNERS_LOCK:
        runners = _RUNNERS.setdefault(model, {})
        if key not in runners:
            runners.clear()  # a stale graph holds a full copy of old weights
            runners[key] = _build_runner(model, backend, memory_format)
        return runners[key]


def check_precision(model: BSRModel) -> None:
    if model.device.type == "cpu" and model.dtype in (torch.float16, torch.bfloat16):
        raise ValueError(
            f"the model is in {model.dtype} on the CPU, where half-precision convolutions are unsupported or "
            "10 to 200 times slower; use model.float() on the CPU, or move the model to a GPU for fp16/bf16"
        )


def super_resolve(
    model: BSRModel,
    x: torch.Tensor,
    *,
    tile: int | str | None = AUTO,
    tile_overlap: int = DEFAULT_TILE_OVERLAP,
    self_ensemble: bool = False,
    channels_last: bool | None = None,
    backend: str = AUTO,
) -> torch.Tensor:
    """The network on a (B, 3, h, w) float RGB batch in [0, 1] -> (B, 3, sh, sw) float32, clamped, on x's device.

    Runs on the model's device and dtype; `tile` and `backend` as in `upscale`. On an out-of-memory error the
    tile is halved and the image retried (down to MIN_TILE), with a warning, instead of failing.
    """
    b, _, h, w = x.shape
    out = torch.empty(b, 3, h * model.scale, w * model.scale, device=x.device)

    def keep(row: int, band: torch.Tensor) -> None:
        out[:, :, row : row + band.shape[-2]] = band

    super_resolve_bands(model, x, keep, tile=tile, tile_overlap=tile_overlap, self_ensemble=self_ensemble,
                        channels_last=channels_last, backend=backend)
    return out


def super_resolve_bands(
    model: BSRModel,
    x: torch.Tensor,
    emit: Callable[[int, torch.Tensor], None],
    *,
    tile: int | str | None = AUTO,
    tile_overlap: int = DEFAULT_TILE_OVERLAP,
    self_ensemble: bool = False,
    channels_last: bool | None = None,
    backend: str = AUTO,
) -> None:
    """`super_resolve` without the output-sized float buffer: the result goes to `emit(row, band)` band by band from
    the top, each (B, 3, n, sw) float, clamped, on x's device, emit's to spend until it returns. After an
    out-of-memory retry the bands start again from row 0, so a writer that places them by row ends up with the
    retry's result."""
    check_precision(model)
    device, dtype = model.device, model.dtype
    tiling = resolve_tiling(tile, tile_overlap, model, x.shape)
    backend = resolve_backend(model, backend, pixels=x.shape[0] * x.shape[-2] * x.shape[-1])
    def layout(whole: bool) -> torch.memory_format:
        # channels_last feeds CUDA's tensor cores. On this CPU it was faster on tiles in every run of bench/fast_path.py
        # (eager at 1024x1024: 3.9 against 5.1 s in bench/results/fast_path_1024_run1.md, 4.3 against 4.8 s in
        # fast_path.md; 16.7 against 20.5 s at 384x384 in fast_path_384.md), while whole images measured within noise
        # (NCHW 7 % faster in bench/results/inference.md): so the CPU uses it for tiles only.
        use = channels_last if channels_last is not None else device.type == "cuda" or not whole
        return torch.channels_last if use else torch.contiguous_format

    runners: dict[torch.memory_format, Callable] = {}  # looked up once per call, not once per tile

    def forward(t: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
        if memory_format not in runners:
            runners[memory_format] = get_runner(model, backend, memory_format)
        runner = runners[memory_format]
        t = t.to(device=device, dtype=dtype).contiguous(memory_format=memory_format)
        y = _ensemble(runner, t) if self_ensemble else runner(t)
        return y.float()

    if tiling.whole and device.type == "cpu" and tile != AUTO:
        needed, budget = _estimate_bytes(model, *x.shape[:1], *x.shape[-2:]), _memory_budget(device)
        if needed > budget:
            warnings.warn(f"one pass over a {x.shape[-1]}x{x.shape[-2]} image needs about {needed / 2**30:.1f} GiB "
                          f"of {budget / 2**30:.1f} GiB available; tile='auto' would tile it", stacklevel=3)
    size = tiling.size
    while True:
        try:
            with torch.no_grad():
                # An out-of-memory retry tiles too, so it takes the tiles' layout: the same result as asking for it.
                run = functools.partial(forward, memory_format=layout(whole=size is None))
                _run_tiled(run, x, model.scale, size, tiling.overlap, lambda row, band: emit(row, band.clamp_(0, 1)))
                return
        except torch.cuda.OutOfMemoryError:
            current = size or max(x.shape[-2:])
            smaller = current // 2
            if smaller < max(MIN_TILE, tiling.overlap + 1):
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            warnings.warn(f"out of memory at tile={size}; retrying with tile={smaller}", stacklevel=2)
            size = smaller


def _prepare(image: Any) -> tuple[torch.Tensor, _Restore]:
    """Any accepted image -> ((B, C, H, W) float with alpha last, how to restore it)."""
    if isinstance(image, Image.Image):
        arr, spec = _from_pil(image)
    elif isinstance(image, np.ndarray):
        arr, spec = _from_numpy(image)
    elif isinstance(image, torch.Tensor):
        arr, spec = _from_torch(image)
    else:
        raise TypeError(f"upscale expects a PIL image, numpy array or torch tensor, got {type(image).__name__}")
    x = _to_bchw(arr)  # (B, C, H, W), C = 1..4 with alpha last
    if x.shape[-2] == 0 or x.shape[-1] == 0:
        raise ValueError(f"the image is empty ({x.shape[-1]}x{x.shape[-2]})")
    if x.shape[0] == 0:
        raise ValueError(f"the batch is empty: a tensor of shape {tuple(image.shape)} holds no image")
    return x, spec


def _network_input(x: torch.Tensor, spec: _Restore) -> torch.Tensor:
    colour = x[:, :1] if spec.grey else x[:, :3]
    return colour.expand(-1, 3, -1, -1) if spec.grey else colour  # the network is RGB; grey is replicated


def _check_options(tile: Any, tile_overlap: Any, backend: Any) -> None:
    TileSetting(tile, tile_overlap)
    if backend != AUTO and backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {', '.join(BACKENDS)}; got {backend!r}")


def upscale(
    model: BSRModel,
    image: Any,
    *,
    tile: int | str | None = AUTO,
    tile_overlap: int = DEFAULT_TILE_OVERLAP,
    self_ensemble: bool = False,
    channels_last: bool | None = None,
    backend: str = AUTO,
) -> Any:
    """Super-resolve an image by the model's scale; returns the same kind of object.

    Args:
        image: a PIL image (RGB, L, RGBA, LA, P, I;16, I, CMYK, ...; EXIF orientation applied), a numpy array
            (HxW or HxWxC with C = 1..4; uint8, uint16, or float in [0, 1]) or a torch tensor (BxCxHxW or CxHxW,
            float in [0, 1]). Grey stays grey; an alpha channel is upscaled with bicubic, separately.
        tile: "auto" (default): chosen from the image size, the model's width and the device (`plan_tiling`):
            on the CPU, cache-sized tiles for large images, the whole image for small ones; on a GPU, the whole
            image unless it would not fit. None or 0: one pass over the whole image, always. n > 0: tiles of
            n x n LR pixels (a tile at the image's border also gets BORDER_CONTEXT mirrored pixels beyond it):
            the tile bounds the network's memory, and the result is assembled band by band in its own sample type,
            so what grows with the image is the input, the output and little else (bench/results/tiling_memory.md).
            Tiled output is within one 8-bit grey level of one pass.
        tile_overlap: LR pixels shared by neighbouring tiles, cross-faded so there are no seams.
        self_ensemble: average the 8 flips/rotations (the "+" results in papers; 8x slower).
        channels_last: use the channels_last memory format (None: on CUDA, and on the CPU for tiles).
        backend: "auto" (default: on the CPU the fastest measured, `CPU_BACKEND_PREFERENCE`; elsewhere eager),
            or one of BACKENDS. A backend other than eager is built once per model (and, for "compile", once per
            input shape) and reused while the weights do not change.
    """
    _check_options(tile, tile_overlap, backend)
    x, spec = _prepare(image)
    output = _Output(spec, x, model.scale, counts=[x.shape[0]])
    super_resolve_bands(
        model, _network_input(x, spec), output.write, tile=tile, tile_overlap=tile_overlap,
        self_ensemble=self_ensemble, channels_last=channels_last, backend=backend,
    )
    return output.finished()[0]


def upscale_many(model: BSRModel, images: Sequence[Any], *, batch_size: int = 1, **options: Any) -> list[Any]:
    """`upscale` for a list of images; up to `batch_size` consecutive images of the same size and kind go through
    the network as one batch. Returns the results in order; each equals `upscale(model, image, **options)` to
    within float rounding. A bad image raises, as in `upscale`."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    _check_options(options.get("tile", AUTO), options.get("tile_overlap", DEFAULT_TILE_OVERLAP),
                   options.get("backend", AUTO))
    prepared = [_prepare(image) for image in images]
    results: list[Any] = [None] * len(prepared)
    i = 0
    while i < len(prepared):
        x0, spec0 = prepared[i]
        j = i + 1
        while (j < len(prepared) and j - i < batch_size and x0.shape[0] == 1
               and prepared[j][0].shape == x0.shape and prepared[j][1] == spec0):
            j += 1
        xs = torch.cat([x for x, _ in prepared[i:j]]) if j - i > 1 else x0  # (n, C, H, W)
        output = _Output(spec0, xs, model.scale, counts=[x.shape[0] for x, _ in prepared[i:j]])
        super_resolve_bands(model, _network_input(xs, spec0), output.write, **options)
        results[i:j] = output.finished()
        i = j
    return results
