"""Image in, image out: what `upscale` accepts and how it hands the result back.

The network sees (B, 3, h, w) float RGB in [0, 1]. Everything else a user may hand us (grey, alpha, palette,
16-bit, CMYK, EXIF-rotated photos, HWC arrays, CHW tensors) is converted on the way in (`_prepare`,
`_network_input`) and restored to the same kind on the way out (`_Output`); what cannot be converted is a
ValueError that says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from ..core import MODES, narrowed_png_rawmode, straight_mode


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

