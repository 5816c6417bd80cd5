"""Image decoding and modes: the one place where a file, bytes or a PIL image becomes pixels.

- `MODES`: every Pillow mode the package meets, with what it is (bits per sample, grey, alpha, palette, ...).
  Every caller decides from this one table, so a mode (16-bit `I;16N`, float `F`) is never known to one
  module and unknown to the next.
- `open_image`: paths, bytes, `{"bytes", "path"}` rows of `datasets`, and PIL images -> a decoded PIL image,
  with one policy: the header is read first (a size limit refuses a huge image before any pixel is decoded),
  then everything is decoded at once (a truncated file fails here, not halfway through a network), and every
  failure is an `ImageReadError` that says which kind it is.
- `straight_mode`: palette, 1-bit, premultiplied-alpha and non-RGB colour modes to L / LA / RGB / RGBA.
- `read_png_16bit`: PNGs with 16 bits per colour sample, which Pillow would narrow to 8 bits, as uint16 arrays.
- `to_uint8`: 8-bit pixels for the protocols defined on uint8 (evaluation's HR, `bsr-hub degrade`, training
  data); deeper images are refused rather than clipped (Pillow's `convert` clips 16-bit to 0..255).

EXIF orientation is not applied here: `inference.upscale` applies it to what users hand it (a phone photo must
come out the way it is displayed), while benchmarks and training data are used as stored.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


@dataclass(frozen=True)
class Mode:
    """What a Pillow mode holds."""

    bits: int
    """Bits per sample: 1, 8, 16 or 32."""
    grey: bool = False
    alpha: bool = False
    palette: bool = False
    premultiplied: bool = False
    """Colour already multiplied by alpha (La, RGBa)."""
    floating: bool = False
    colour_space: str = "RGB"
    """RGB, or the space Pillow converts to RGB from (CMYK, YCbCr, LAB, HSV)."""

    @property
    def eight_bit(self) -> bool:
        """Samples of 8 bits or fewer: convertible to uint8 RGB / L without losing or clipping values."""
        return self.bits <= 8


MODES: dict[str, Mode] = {
    "1": Mode(bits=1, grey=True),
    "L": Mode(bits=8, grey=True),
    "LA": Mode(bits=8, grey=True, alpha=True),
    "La": Mode(bits=8, grey=True, alpha=True, premultiplied=True),
    "P": Mode(bits=8, palette=True),
    "PA": Mode(bits=8, palette=True, alpha=True),
    "RGB": Mode(bits=8),
    "RGBA": Mode(bits=8, alpha=True),
    "RGBa": Mode(bits=8, alpha=True, premultiplied=True),
    "RGBX": Mode(bits=8),
    "CMYK": Mode(bits=8, colour_space="CMYK"),
    "YCbCr": Mode(bits=8, colour_space="YCbCr"),
    "LAB": Mode(bits=8, colour_space="LAB"),
    "HSV": Mode(bits=8, colour_space="HSV"),
    "I;16": Mode(bits=16, grey=True),
    "I;16L": Mode(bits=16, grey=True),
    "I;16B": Mode(bits=16, grey=True),
    "I;16N": Mode(bits=16, grey=True),
    "I": Mode(bits=32, grey=True),
    "F": Mode(bits=32, grey=True, floating=True),
}
"""Every mode the package accepts; a mode not listed is an error naming it."""


def mode_of(img: Image.Image) -> Mode:
    try:
        return MODES[img.mode]
    except KeyError:
        raise ImageReadError(f"unsupported image mode {img.mode!r}; convert it to RGB, L or I;16 first",
                             reason="mode") from None


class ImageReadError(ValueError):
    """An image that cannot be used, and why. `reason` is one of "missing" (no such file), "not_an_image",
    "bomb" (Pillow's decompression-bomb guard), "too_large" (over `max_pixels`; `size` is the header's),
    "unreadable" (the header), "corrupt" (the pixels: truncated or damaged) and "mode" (not one this use takes)."""

    def __init__(self, message: str, reason: str, size: tuple[int, int] | None = None):
        super().__init__(message)
        self.reason = reason
        self.size = size


Source = str | os.PathLike | bytes | Image.Image | dict


def open_image(source: Source, *, max_pixels: int | None = None) -> Image.Image:
    """A decoded PIL image from a path, bytes, a `datasets` `{"bytes", "path"}` dict or a PIL image.

    Args:
        max_pixels: refuse images with more pixels (width x height), from the header, before decoding.
            Pillow's decompression-bomb guard (Image.MAX_IMAGE_PIXELS) stays on as well: it also stops files
            that lie about their size to the header check.

    Raises:
        ImageReadError: saying why, with its `reason`.
    """
    if isinstance(source, Image.Image):
        img = source
    else:
        if isinstance(source, dict):
            if source.get("bytes") is not None:
                source = source["bytes"]
            elif source.get("path"):
                source = source["path"]
            else:
                raise ImageReadError("image dict without bytes or path", reason="missing")
        if not isinstance(source, (bytes, str, os.PathLike)):
            raise ImageReadError(f"cannot read an image from a {type(source).__name__}", reason="not_an_image")
        try:
            img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        except FileNotFoundError:
            raise ImageReadError("no such file", reason="missing") from None
        except UnidentifiedImageError:
            raise ImageReadError("not an image file", reason="not_an_image") from None
        except Image.DecompressionBombError as err:
            raise ImageReadError(str(err), reason="bomb") from None
        except (OSError, SyntaxError, ValueError) as err:
            raise ImageReadError(str(err), reason="unreadable") from None
    width, height = img.size
    if max_pixels is not None and width * height > max_pixels:
        if img is not source:  # ours to close; a PIL image the caller handed in stays theirs
            img.close()
        raise ImageReadError(f"{width}x{height} = {width * height / 1e6:.1f} megapixels, more than "
                             f"{max_pixels / 1e6:g}", reason="too_large", size=(width, height))
    try:
        img.load()  # decode now: a truncated file fails here, not halfway through the network
    except Image.DecompressionBombError as err:
        raise ImageReadError(str(err), reason="bomb") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(str(err), reason="corrupt") from None
    return img


def straight_mode(img: Image.Image) -> Image.Image:
    """L, LA, RGB or RGBA (or a deeper grey mode, left as it is): 1-bit to L, a palette to RGB (RGBA when it has
    transparency), CMYK / YCbCr / LAB / HSV / RGBX to RGB, premultiplied alpha to straight alpha."""
    mode = mode_of(img)
    if img.mode == "1":
        return img.convert("L")
    if mode.palette:
        return img.convert("RGBA" if mode.alpha or img.info.get("transparency") is not None else "RGB")
    if mode.premultiplied:
        return img.convert(img.mode[:-1] + "A")
    if mode.colour_space != "RGB" or img.mode == "RGBX":
        return img.convert("RGB")
    return img


def to_uint8(img: Image.Image, *, colour: Literal["keep_grey", "rgb"] = "keep_grey") -> np.ndarray:
    """8-bit pixels, alpha dropped: (H, W) for a grey image with `colour="keep_grey"`, else (H, W, 3) RGB.
    A writable copy.

    Raises:
        ImageReadError: (reason "mode") for images of more than 8 bits per sample, whose range is unknown.
    """
    if not mode_of(img).eight_bit:
        raise ImageReadError(f"mode {img.mode} is not an 8-bit image", reason="mode")
    img = straight_mode(img)  # La and 1 convert to L only from straight modes
    img = img.convert("L" if mode_of(img).grey and colour == "keep_grey" else "RGB")
    return np.array(img)


# ----------------------------------------------------------------------------------------------------------------------
# 16 bits per sample in colour: Pillow has no such mode
# ----------------------------------------------------------------------------------------------------------------------


_PNG_16BIT_REREAD = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L", "LA;16B": "RGBA"}
"""Pillow's rawmodes for the PNGs with 16 bits per sample that it narrows to 8-bit RGB / RGBA (colour, or grey
with alpha), and the rawmode that reads back what it drops: the low bytes of RGB and RGBA (the `;16L`
unpacker keeps the second byte of each big-endian sample), all four bytes of grey + alpha."""


def narrowed_png_rawmode(img: Image.Image) -> str | None:
    """The rawmode of a PNG that Pillow has opened, not yet decoded, and will narrow to 8 bits; else None."""
    if img.format != "PNG":
        return None
    return next((t.args for t in img.tile if t.args in _PNG_16BIT_REREAD), None)


def read_png_16bit(path: str | os.PathLike) -> np.ndarray | None:
    """A PNG with 16 bits per sample and colour or alpha (48-bit RGB, 64-bit RGBA, 32-bit grey + alpha) as a
    uint16 array (H, W, C), EXIF orientation applied; None for any other file (Pillow reads those as they are).

    Pillow has no 16-bit colour modes and opens these files as 8-bit RGB / RGBA, silently dropping the low byte.
    Its PNG decoder still unfilters rows at full depth, so the file is decoded a second time with an unpacker
    that keeps the bytes the first one dropped, and the two are joined. Grey + alpha comes back as (H, W, 2).
    """
    with Image.open(path) as img:
        rawmode = narrowed_png_rawmode(img)
        if rawmode is None:
            return None
        img.tile = [t._replace(args=_PNG_16BIT_REREAD[rawmode]) for t in img.tile]  # same mode, same bits per pixel
        img.load()
        low = np.asarray(ImageOps.exif_transpose(img)).astype(np.uint16)
    if rawmode == "LA;16B":  # (grey high, grey low, alpha high, alpha low) per pixel
        return np.stack([low[..., 0] << 8 | low[..., 1], low[..., 2] << 8 | low[..., 3]], axis=-1)
    with Image.open(path) as img:  # the same file again, as Pillow unpacks it: the high bytes
        img.load()
        high = np.asarray(ImageOps.exif_transpose(img)).astype(np.uint16)
    return high << 8 | low  # (H, W, 3 or 4)
