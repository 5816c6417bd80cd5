"""How the network covers an image: whole or in cross-faded tiles, with a mirrored border, within a memory
budget.

`plan_tiling` picks the whole image or tiles by default (cache-sized for PyTorch, memory-sized for ONNX Runtime;
from measurements, bench/results/fast_path.md and ort_tiles.md), `resolve_tiling` turns the caller's `tile`
argument into a `Tiling`, and
`_run_tiled` runs it band by band. `mirrored_border` is what the network needs around a whole image
(BORDER_CONTEXT), in one pass, in a tile at the image's border and in an exported graph alike.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .protocol import Upscaler

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


AUTO = "auto"
"""The default of `tile` (planned per image, `plan_tiling`) and of `backend` (backends.resolve_backend)."""


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

ONNXRUNTIME_TILE_FEATURE_BYTES = 16 << 20
"""ONNX Runtime's tiles are sized for memory, not for the caches: one feature map of about 16 MiB (362x362 LR pixels
at bsr-lite's 32 channels), and an image of one such tile's worth runs whole. Its convolutions block the work for
the caches themselves (MLAS), so cache-sized tiles only add the overlap they recompute (28 % more pixels at
512x512). In bench/results/ort_tiles.md (2 threads, quiet) these tiles ran bsr-lite-x2 in 0.68-0.78 of the time of
cache-sized ones at 512x512 to 1280x720, as fast as one pass at 512x512 to 1024x1024 (0.61 against 0.73 at
1280x720), and peaked at 0.5-0.76 GiB where one pass peaked at 1.0-3.7 GiB (0.37-0.42 GiB with cache-sized tiles).
Sized for the long side alone, 1280x720 would take three rows of 332 for its 720 rows, 1.36 M pixels where
`_best_tile`'s 269 run 1.12 M."""

CPU_WHOLE_IMAGE_TILES = 4
"""Up to this many tiles' worth of pixels the CPU runs the whole image. A judgement, not a measured crossover: the
overlap every tile recomputes (16 LR pixels: 2x2 tiles of 136 over 256x256 are 13 % more pixels) is certain,
while the cache gain on maps of at most 8 MiB is small (bench/results/inference.md: bsr-lite ran whole 256x256
inputs at 94 % of a plain conv in the same layout). It also keeps every BSD100 input (240x160 at x2) whole."""


def runs_its_own_cache_blocking(backend: str | None) -> bool:
    """Whether `backend` gets memory-sized tiles (ONNXRUNTIME_TILE_FEATURE_BYTES) rather than cache-sized ones:
    ONNX Runtime, fp32 or int8. PyTorch's backends (eager, jit, compile; None: not known yet) do not."""
    return backend in ("onnxruntime", "onnxruntime-int8")


def cpu_tile_side(model: torch.nn.Module, batch: int, feature_bytes: int | None = None) -> int:
    """The side of a tile whose feature maps are `feature_bytes` (default CPU_TILE_FEATURE_BYTES) for this model's
    width and batch."""
    per_pixel = model.memory_per_input_pixel().feature_map
    return max(MIN_TILE, int(math.sqrt((feature_bytes or CPU_TILE_FEATURE_BYTES) / (per_pixel * batch))))


def _best_tile(height: int, width: int, target: int, overlap: int) -> int:
    """The square tile of at most `target` (and at least half of it) that covers a height x width image with the
    fewest pixels run, ties to the larger: 1024x1024 with a target of 128 and overlap 16 gives 9x9 tiles of 128,
    1000x1000 9x9 of 126, so the last tile is not mostly overlap; 1280x720 with a target of 362 takes a size that
    splits both sides evenly rather than one that suits the long side alone."""

    def pixels(tile: int) -> int:
        rows = 1 if height <= tile else math.ceil((height - overlap) / (tile - overlap))
        cols = 1 if width <= tile else math.ceil((width - overlap) / (tile - overlap))
        return rows * cols * min(tile, height) * min(tile, width)

    sizes = range(max(target // 2, 2 * overlap + 1), target + 1)  # no smaller: _run_tiled would clamp the overlap
    return min(sizes, key=lambda tile: (pixels(tile), -tile))


def pixels_run(height: int, width: int, tiling: Tiling, context: int = BORDER_CONTEXT) -> int:
    """LR pixels the network runs over for a height x width image under `tiling`: the tiles, overlaps included, each
    with `context` mirrored pixels on the sides that are the image's borders, or the whole image with its border."""
    tile = tiling.size
    if tile is None or (height <= tile and width <= tile):
        return (height + 2 * context) * (width + 2 * context)
    th, tw = min(tile, height), min(tile, width)
    stride = tile - min(tiling.overlap, tile // 2)
    rows = [th + context * ((y == 0) + (y + th == height)) for y in _tile_starts(height, tile, stride)]
    cols = [tw + context * ((x == 0) + (x + tw == width)) for x in _tile_starts(width, tile, stride)]
    return sum(rows) * sum(cols)


def plan_tiling(model: torch.nn.Module, batch: int, height: int, width: int, overlap: int = DEFAULT_TILE_OVERLAP,
                backend: str | None = None) -> Tiling:
    """The default (`tile="auto"`): how to run a (batch, 3, height, width) input on the model's device.

    - CPU: whole image up to CPU_WHOLE_IMAGE_TILES tiles' worth of pixels, else tiles of about
      CPU_TILE_FEATURE_BYTES per feature map, split evenly over the image; for ONNX Runtime, tiles of about
      ONNXRUNTIME_TILE_FEATURE_BYTES and the whole image up to one tile's worth (see those constants for why).
    - GPU and other devices: the whole image, which keeps the device busiest, unless its activations would not
      fit in memory; then the largest power-of-two tile that does (with a warning).
    """
    if model.device.type == "cpu":
        own_blocking = runs_its_own_cache_blocking(backend)
        feature_bytes = ONNXRUNTIME_TILE_FEATURE_BYTES if own_blocking else CPU_TILE_FEATURE_BYTES
        target = cpu_tile_side(model, batch, feature_bytes)
        whole_tiles = 1 if own_blocking else CPU_WHOLE_IMAGE_TILES
        if height * width <= whole_tiles * target * target or target <= 2 * overlap:
            tiles = "one CPU tile" if whole_tiles == 1 else f"{whole_tiles} CPU tiles"
            return Tiling(None, overlap, f"whole image: at most {tiles} of {target}")
        size = _best_tile(height, width, target, overlap)
        return Tiling(size, overlap, f"CPU tiles of about {feature_bytes >> 20} MiB per feature map")
    tile = _auto_tile(model, batch, height, width)
    if tile is None:
        return Tiling(None, overlap, f"whole image: fits in {model.device.type} memory")
    return Tiling(tile, overlap, f"the whole image does not fit in {model.device.type} memory")


def resolve_tiling(tile: int | str | None, overlap: int, model: torch.nn.Module, shape: Sequence[int],
                   backend: str | None = None) -> Tiling:
    """The caller's `tile` argument -> a Tiling: "auto" plans (for `backend` where it is known), None or 0 forces
    one pass, n > 0 is tiles of n."""
    setting = TileSetting(tile, overlap)
    if setting.tile == AUTO:
        b, _, h, w = shape
        return plan_tiling(model, b, h, w, setting.overlap, backend)
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


def _estimate_bytes(model: Upscaler, b: int, h: int, w: int) -> int:
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


def release_cached_memory(device: torch.device) -> None:
    """Give the device's cached, unused blocks back (CUDA's caching allocator keeps freed blocks for reuse; the CPU
    allocator keeps none). Only blocks no tensor uses go back: call it once the tensors of a failed pass are gone."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _auto_tile(model: Upscaler, b: int, h: int, w: int) -> int | None:
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


def _warn_if_one_pass_is_too_large(model: Upscaler, shape: Sequence[int]) -> None:
    """One pass that the caller forced (tile None or 0) on the CPU: a warning when it needs more memory than is
    available, where "auto" would have tiled. `shape` is the input's (B, 3, h, w)."""
    needed, budget = _estimate_bytes(model, *shape[:1], *shape[-2:]), _memory_budget(model.device)
    if needed > budget:
        # stacklevel 4: past this helper, super_resolve_bands and upscale, to upscale's caller
        warnings.warn(f"one pass over a {shape[-1]}x{shape[-2]} image needs about {needed / 2**30:.1f} GiB "
                      f"of {budget / 2**30:.1f} GiB available; tile='auto' would tile it", stacklevel=4)
