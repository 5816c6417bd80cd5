"""Image in, image out: `upscale` for PIL images, numpy arrays and torch tensors, with seamless tiling.

The network sees (B, 3, h, w) float RGB in [0, 1]. Everything else a user may hand us (grey, alpha, palette,
16-bit, CMYK, EXIF-rotated photos, HWC arrays, CHW tensors) is converted on the way in and restored to the
same kind on the way out; what cannot be converted is a ValueError that says why.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

if TYPE_CHECKING:
    from .modeling import BSRModel

DEFAULT_TILE_OVERLAP = 16
"""LR pixels shared by neighbouring tiles. A quarter of it on each side is discarded and the middle half is
cross-faded, which keeps tiled output within 8-bit rounding of untiled output (tests/test_inference.py)."""

MIN_TILE = 32
"""Smallest tile the out-of-memory fallback will try before giving up."""

_MODES_TO_RGB = {"CMYK", "YCbCr", "LAB", "HSV", "RGBX"}
_MODES_16BIT = {"I;16", "I;16L", "I;16B", "I;16N"}


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
    img = ImageOps.exif_transpose(img)  # a phone photo must come out the way it is displayed
    mode = img.mode
    if mode == "1":
        img, mode = img.convert("L"), "L"
    elif mode in ("P", "PA"):
        has_alpha = mode == "PA" or img.info.get("transparency") is not None
        mode = "RGBA" if has_alpha else "RGB"
        img = img.convert(mode)
    elif mode in _MODES_TO_RGB:
        img, mode = img.convert("RGB"), "RGB"
    elif mode in ("La", "RGBa"):  # premultiplied alpha
        mode = mode[:-1] + "A"
        img = img.convert(mode)

    if mode in _MODES_16BIT or mode == "I":
        arr = np.asarray(img)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(f"mode {img.mode} image has values outside 0..65535; only 16-bit integer images are supported")
        out_mode = "I" if mode == "I" else "I;16"
        return arr.astype(np.float32) / 65535.0, _Restore("pil", True, False, out_mode, "PIL")
    if mode not in ("L", "LA", "RGB", "RGBA"):
        raise ValueError(f"unsupported PIL image mode {img.mode!r}; convert it to RGB, L or I;16 first")
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


def _restore(y: torch.Tensor, spec: _Restore) -> Any:
    """(B, C, H, W) float in [0, 1] (C = 1..4, alpha last) -> the caller's kind, dtype and layout.

    Works in place on `y` (ours to spend): for a large image every full-size temporary is hundreds of MiB.
    """
    y = y.clamp_(0, 1)
    if spec.kind == "torch":
        y = y.to(device=spec.device, dtype=spec.dtype)
        return y[0] if spec.layout == "CHW" else y
    if spec.kind == "numpy":
        dtype = np.dtype(spec.dtype)
    else:
        dtype = np.dtype(np.uint16) if spec.dtype in ("I;16", "I") else np.dtype(np.uint8)
    if dtype in (np.uint8, np.uint16):
        y = y.mul_(np.iinfo(dtype).max).round_().to(torch.int32 if dtype == np.uint16 else torch.uint8)
    arr = y[0].permute(1, 2, 0).cpu().numpy()  # (H, W, C), a view
    if spec.kind == "numpy":
        arr = arr[:, :, 0] if spec.layout == "HW" else arr
        return np.ascontiguousarray(arr.astype(dtype, copy=False))
    if spec.dtype in ("I;16", "I"):
        grey = np.ascontiguousarray(arr[:, :, 0])
        return Image.fromarray(grey.astype(np.uint16) if spec.dtype == "I;16" else grey)
    img = Image.fromarray(np.ascontiguousarray(arr[:, :, 0] if arr.shape[2] == 1 else arr))
    return img if img.mode == spec.dtype else img.convert(spec.dtype)  # (H, W, 2) -> LA, 3 -> RGB, 4 -> RGBA


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


def _run_tiled(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    scale: int,
    tile: int,
    overlap: int,
) -> torch.Tensor:
    """Super-resolve (B, C, H, W) tile by tile into a (B, C, sH, sW) buffer on x's device."""
    b, c, h, w = x.shape
    if h <= tile and w <= tile:
        return forward(x)
    overlap = min(overlap, tile // 2)
    stride = tile - overlap
    out = torch.zeros(b, c, h * scale, w * scale, device=x.device)
    weight = torch.zeros(1, 1, h * scale, w * scale, device=x.device)
    ys, xs = _tile_starts(h, tile, stride), _tile_starts(w, tile, stride)
    for y0 in ys:
        th = min(tile, h)
        wy = _ramp(th * scale, overlap * scale, lead=y0 > 0, trail=y0 + th < h)
        for x0 in xs:
            tw = min(tile, w)
            wx = _ramp(tw * scale, overlap * scale, lead=x0 > 0, trail=x0 + tw < w)
            window = (wy[:, None] * wx[None, :]).to(x.device)  # (th*s, tw*s)
            y = forward(x[:, :, y0 : y0 + th, x0 : x0 + tw]).to(x.device)  # (B, C, th*s, tw*s)
            region = (slice(None), slice(None), slice(y0 * scale, (y0 + th) * scale), slice(x0 * scale, (x0 + tw) * scale))
            out[region] += y * window
            weight[region] += window
    return out.div_(weight)


def _estimate_bytes(model: BSRModel, b: int, h: int, w: int) -> int:
    """Rough peak activation memory of one forward pass (inference, fp32): the G group outputs kept for
    fusion, a few working maps, and the upsampler's maps at output resolution."""
    cfg = model.config
    c, g, s = cfg.num_features, cfg.num_groups, cfg.scale
    per_lr_pixel = (g + 6) * c + 3 * c * s * s
    return 4 * b * h * w * per_lr_pixel


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


def _auto_tile(model: BSRModel, x: torch.Tensor) -> int | None:
    """A tile size when the whole image would not fit in memory, else None (untiled)."""
    b, _, h, w = x.shape
    budget = _memory_budget(model.device)
    if _estimate_bytes(model, b, h, w) <= budget:
        return None
    tile = 1024
    while tile > MIN_TILE and _estimate_bytes(model, b, tile, tile) > budget:
        tile //= 2
    warnings.warn(
        f"a {w}x{h} image does not fit in memory untiled; using tile={tile} (pass tile= to choose)", stacklevel=3
    )
    return tile


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
    tile: int | None = None,
    tile_overlap: int = DEFAULT_TILE_OVERLAP,
    self_ensemble: bool = False,
    channels_last: bool | None = None,
) -> torch.Tensor:
    """The network on a (B, 3, h, w) float RGB batch in [0, 1] -> (B, 3, sh, sw), clamped, on x's device.

    Runs on the model's device and dtype. On an out-of-memory error the tile is halved and the image retried
    (down to MIN_TILE), with a warning, instead of failing.
    """
    check_precision(model)
    device, dtype = model.device, model.dtype
    if channels_last is None:
        # On CUDA it feeds the tensor cores; on this CPU bench/inference.py measured NCHW slightly faster
        # (0.74 vs 0.69 output MP/s for bsr-lite x2 at 256x256), so the CPU keeps the default layout.
        channels_last = device.type == "cuda"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def forward(t: torch.Tensor) -> torch.Tensor:
        t = t.to(device=device, dtype=dtype).contiguous(memory_format=memory_format)
        y = _ensemble(model, t) if self_ensemble else model(t)
        return y.float()

    if tile is None:
        tile = _auto_tile(model, x)
    while True:
        try:
            with torch.no_grad():
                if tile is None:
                    return forward(x).to(x.device).clamp_(0, 1)
                return _run_tiled(forward, x, model.scale, tile, tile_overlap).clamp_(0, 1)
        except torch.cuda.OutOfMemoryError:
            current = tile or max(x.shape[-2:])
            smaller = current // 2
            if smaller < max(MIN_TILE, tile_overlap + 1):
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            warnings.warn(f"out of memory at tile={tile}; retrying with tile={smaller}", stacklevel=2)
            tile = smaller


def upscale(
    model: BSRModel,
    image: Any,
    *,
    tile: int | None = None,
    tile_overlap: int = DEFAULT_TILE_OVERLAP,
    self_ensemble: bool = False,
    channels_last: bool | None = None,
) -> Any:
    """Super-resolve an image by the model's scale; returns the same kind of object.

    Args:
        image: a PIL image (RGB, L, RGBA, LA, P, I;16, I, CMYK, ...; EXIF orientation applied), a numpy array
            (HxW or HxWxC with C = 1..4; uint8, uint16, or float in [0, 1]) or a torch tensor (BxCxHxW or CxHxW,
            float in [0, 1]). Grey stays grey; an alpha channel is upscaled with bicubic, separately.
        tile: process the image in tiles of this many LR pixels (bounded memory for any size). None: whole
            image, unless it would not fit in memory, in which case a tile size is chosen with a warning.
        tile_overlap: LR pixels shared by neighbouring tiles, cross-faded so there are no seams.
        self_ensemble: average the 8 flips/rotations (the "+" results in papers; 8x slower).
        channels_last: use the channels_last memory format (None: on CUDA only; on the CPU it measured slower).
    """
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, int) or tile < 1):
        raise ValueError(f"tile must be a positive integer number of LR pixels, got {tile!r}")
    if isinstance(tile_overlap, bool) or not isinstance(tile_overlap, int) or tile_overlap < 0:
        raise ValueError(f"tile_overlap must be a non-negative integer, got {tile_overlap!r}")

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
    colour = x[:, :1] if spec.grey else x[:, :3]
    rgb = colour.expand(-1, 3, -1, -1) if spec.grey else colour  # the network is RGB; grey is replicated
    y = super_resolve(
        model, rgb, tile=tile, tile_overlap=tile_overlap, self_ensemble=self_ensemble, channels_last=channels_last
    )  # (B, 3, sH, sW)
    if spec.grey:
        y = y.mean(dim=1, keepdim=True)  # (B, 1, sH, sW)
    if spec.alpha:
        alpha = F.interpolate(x[:, -1:], scale_factor=model.scale, mode="bicubic", align_corners=False)
        y = torch.cat([y, alpha.clamp(0, 1).to(y.device)], dim=1)
    return _restore(y, spec)
