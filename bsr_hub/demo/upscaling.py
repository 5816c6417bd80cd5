"""One demo request without gradio: the upload checked before it is decoded (`open_upload`), the tile setting,
the upscale and its description (`upscale_upload`), and the detail view (the most structured region, bicubic
beside BSR, every output pixel drawn as a square)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageOps

from .models import ModelCache
from .settings import DEFAULT_MAX_MEGAPIXELS, DemoInputError

DETAIL_INPUT_PX = 48
"""Side of the detail region in input pixels (shown as DETAIL_INPUT_PX * scale output pixels per side)."""
DETAIL_DISPLAY_PX = 400
"""About how wide each detail is drawn: output pixels are enlarged by a whole factor, nearest-neighbour, so that
every pixel the network made is a visible square, not smoothed again by the browser."""


def open_upload(path: str | os.PathLike, max_pixels: int) -> Image.Image:
    """Open an uploaded file as a decoded PIL image, or raise DemoInputError saying why not.

    The size is checked from the header, before any pixel is decoded. Pillow's decompression-bomb guard
    (Image.MAX_IMAGE_PIXELS) is left as it is: it also stops files that lie about their size to the header check.
    """
    from ..core import ImageReadError, open_image

    try:
        return open_image(path, max_pixels=max_pixels)
    except ImageReadError as err:
        if err.reason == "too_large":
            width, height = err.size
            message = (f"The image is {width}x{height} = {width * height / 1e6:.1f} megapixels; this demo accepts up "
                       f"to {max_pixels / 1e6:g} megapixels. Crop or shrink it, or use `bsr-hub upscale` on your own "
                       "machine.")
        elif err.reason == "not_an_image":
            message = "That file is not an image Pillow can read (PNG, JPEG, WebP, TIFF, BMP, ...)."
        elif err.reason == "bomb":
            message = f"Refused: the image is too large to decode safely ({err})."
        elif err.reason == "corrupt":  # the header was fine, the pixels were not
            message = f"The image could not be decoded (truncated or corrupt?): {err}"
        else:
            message = f"The file could not be read as an image: {err}"
        raise DemoInputError(message) from None


ONE_PASS = "one pass"
TILE_CHOICES = ["auto", ONE_PASS, "128", "256", "512", "1024"]


def parse_tile(tile: Any) -> int | str:
    """The tile setting in the words of `upscale(tile=...)` and `bsr-hub upscale --tile`: "auto" (or empty) is
    the automatic choice (the whole image, or cache-sized tiles where those are faster), so the demo gives
    exactly what `model.upscale(img)` gives; 0 or "one pass" is the whole image at once; n > 0 is tiles of n
    input pixels."""
    if tile is None or (isinstance(tile, str) and tile.strip().lower() in ("", "auto")):
        return "auto"
    if isinstance(tile, str) and tile.strip().lower() == ONE_PASS:
        return 0
    try:
        value = float(tile)
    except (TypeError, ValueError):
        raise DemoInputError(f'tile size must be "auto", "one pass" or a whole number of pixels, got {tile!r}') from None
    if value < 0 or value != int(value):
        raise DemoInputError(f'tile size must be "auto", 0 (one pass) or a positive whole number, got {tile!r}')
    return int(value)


def display_copy(img: Image.Image) -> Image.Image:
    """An 8-bit copy for the browser's comparison slider (16-bit and exotic modes are not displayable)."""
    if img.mode in ("L", "LA", "RGB", "RGBA"):
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        import numpy as np

        arr = np.asarray(img).astype(np.float64) / 65535.0
        return Image.fromarray(np.rint(np.clip(arr, 0, 1) * 255).astype(np.uint8))
    return img.convert("RGBA" if "transparency" in img.info else "RGB")


@dataclass
class UpscaleResult:
    image: Image.Image
    """Exactly `model.upscale(upload)`: what is downloaded as a lossless PNG."""
    bicubic: Image.Image
    """The input enlarged with Pillow's bicubic to the same size, for the comparison slider."""
    info: str
    seconds: float = field(default=0.0)


def upscale_upload(
    cache: ModelCache,
    path: str | os.PathLike,
    label: str,
    *,
    self_ensemble: bool = False,
    tile: Any = "auto",
    max_pixels: int = int(DEFAULT_MAX_MEGAPIXELS * 1_000_000),
) -> UpscaleResult:
    """One demo request, without gradio: validate, upscale, and describe what was done."""
    tile_px = parse_tile(tile)
    entry, model = cache.get(label)
    with open_upload(path, max_pixels) as img:
        start = time.perf_counter()
        try:
            result = model.upscale(img, tile=tile_px, self_ensemble=bool(self_ensemble))
        except ValueError as err:  # a mode or value the network cannot take; the message says which
            raise DemoInputError(f"This image cannot be upscaled: {err}") from None
        seconds = time.perf_counter() - start
        shown = display_copy(
            ImageOps.exif_transpose(img)
        )  # upscale applies EXIF rotation; so must the preview
    bicubic = shown.resize(result.size, Image.Resampling.BICUBIC)
    tiles = {"auto": "", 0: ", in one pass"}.get(tile_px, f", tiles of {tile_px} px")
    info = (
        f"**{entry.name}** ({entry.source}) · preset `{entry.preset}` · {model.num_parameters():,} parameters · "
        f"{img.width}x{img.height} → {result.width}x{result.height} in {seconds:.2f} s on {model.device.type}"
        f"{' with self-ensemble' if self_ensemble else ''}{tiles} · "
        f"benchmark: {entry.benchmark}"
    )
    return UpscaleResult(result, bicubic, info, seconds)


# ---------------------------------------------------------------------------------------------- the detail view


def most_structured_point(img: Image.Image, region: int = DETAIL_INPUT_PX) -> tuple[float, float]:
    """The centre of the `region` x `region` window with the highest PIC (the paper's measure of structure,
    `bsr_hub.data.pic`), as fractions (x, y) of the width and height. An image too small to measure gives its centre."""
    import numpy as np
    import torch

    from ..data import dense_pic

    rgb = np.array(display_copy(img).convert("RGB"))  # (H, W, 3) uint8, a writable copy for torch
    h, w = rgb.shape[:2]
    side = min(region, h, w)
    if side < 3:
        return 0.5, 0.5
    stride = max(1, side // 8)  # a few pixels off the best window is invisible; a whole-image scan is not
    scores = dense_pic(torch.from_numpy(rgb).permute(2, 0, 1), side, stride=stride)  # (ny, nx)
    iy, ix = divmod(int(scores.argmax()), scores.shape[1])
    return (ix * stride + side / 2) / w, (iy * stride + side / 2) / h


def detail_views(
    upload: Image.Image, result: Image.Image, x: float, y: float, region: int = DETAIL_INPUT_PX
) -> tuple[Image.Image, Image.Image]:
    """Bicubic and BSR over the same region, centred at fractions (x, y) of the image and clamped inside it,
    each enlarged with nearest-neighbour pixels. `upload` is the input, `result` the model's output."""
    shown, out = display_copy(upload).convert("RGB"), display_copy(result).convert("RGB")
    scale = out.width // max(shown.width, 1)
    if scale < 1 or out.size != (shown.width * scale, shown.height * scale):
        raise ValueError(f"a {out.width}x{out.height} result is not this {shown.width}x{shown.height} upload upscaled")
    side = min(region, shown.width, shown.height) * scale  # in output pixels
    left = min(max(round(x * out.width - side / 2), 0), out.width - side)
    top = min(max(round(y * out.height - side / 2), 0), out.height - side)
    box = (left, top, left + side, top + side)
    bicubic = shown.resize(out.size, Image.Resampling.BICUBIC).crop(box)
    zoom = max(1, round(DETAIL_DISPLAY_PX / side))
    enlarge = (side * zoom, side * zoom)
    return (
        bicubic.resize(enlarge, Image.Resampling.NEAREST),
        out.crop(box).resize(enlarge, Image.Resampling.NEAREST),
    )

