"""Picture Information Content (PIC), equation (1) of the BSR paper (docs/METHOD.md section 2).

Per pixel and per colour channel a Sobel gradient magnitude ``G = |Gx| + |Gy|`` [paper]; per pixel the maximum
over channels [paper]; PIC of a patch is the **mean** of that per-pixel map over the patch's valid interior
(``(P - 2) x (P - 2)`` pixels, no padding, so patch borders make no fake edges) [ours], or its sum
(``reduction="sum"``, the paper's raw L1 norm). Values are on the 0..255 scale: PIC lies in 0..2040, typically
0..150 for natural images.

Because the valid interior of a patch only reads pixels inside the patch, the per-pixel map of a whole image gives
every patch's PIC exactly:

    PIC(y, x) = mean of map[y : y + P - 2, x : x + P - 2]     (map indices are image indices minus 1)

and an integral image (summed-area table) of the map makes that O(1) per patch position (`dense_pic`).

Everything here is batched torch and runs on whatever device the input lives on.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Reduction = Literal["mean", "sum"]


def _as_batch(images: torch.Tensor, name: str) -> tuple[torch.Tensor, bool]:
    """(C, H, W) or (B, C, H, W) -> float (B, C, H, W), and whether a batch dimension was added."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() == 3:
        images, added = images.unsqueeze(0), True
    elif images.dim() == 4:
        added = False
    else:
        raise ValueError(f"{name} must be (C, H, W) or (B, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[-2] < 3 or images.shape[-1] < 3:
        raise ValueError(f"{name} must be at least 3x3 pixels for a valid Sobel, got {tuple(images.shape[-2:])}")
    if images.dtype == torch.uint8:
        # int16 holds every intermediate exactly (|Gx| + |Gy| <= 2040) and is several times faster than float.
        images = images.to(torch.int16)
    elif not images.is_floating_point():
        images = images.float()
    return images, added


def gradient_map(images: torch.Tensor) -> torch.Tensor:
    """The per-pixel map ``max_c (|Gx| + |Gy|)`` on the valid interior.

    Args:
        images: (B, C, H, W) or (C, H, W), values on the 0..255 scale (uint8 or float). Any number of channels;
            a grey image is simply C = 1 (its map equals that of the same image replicated to 3 channels).

    Returns:
        (B, H - 2, W - 2) or (H - 2, W - 2), same float dtype and device as the input (float32 for uint8).
    """
    x, added = _as_batch(images, "images")
    # Separable Sobel by slicing (faster than a 1-channel conv2d on CPU, and exact for integer inputs):
    # Gx = [1 2 1]^T * [-1 0 1], Gy = [-1 0 1]^T * [1 2 1], both on the valid interior.
    dx = x[..., :, 2:] - x[..., :, :-2]  # (B, C, H, W-2)
    gx = dx[..., :-2, :] + 2 * dx[..., 1:-1, :] + dx[..., 2:, :]  # (B, C, H-2, W-2)
    dy = x[..., 2:, :] - x[..., :-2, :]  # (B, C, H-2, W)
    gy = dy[..., :, :-2] + 2 * dy[..., :, 1:-1] + dy[..., :, 2:]  # (B, C, H-2, W-2)
    g = (gx.abs() + gy.abs()).amax(dim=1)  # (B, H-2, W-2): |Gx| + |Gy|, max over channels
    if not g.is_floating_point():
        g = g.float()  # exact: integers up to 2040
    return g[0] if added else g


def pic(patches: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """PIC of each patch.

    Args:
        patches: (B, C, P, P) or (C, P, P) on the 0..255 scale (non-square patches work too).
        reduction: ``"mean"`` over the (P-2)^2 valid interior [ours, size-independent], or ``"sum"`` (the paper's
            raw L1 norm).

    Returns:
        (B,) or a 0-d tensor.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    g = gradient_map(patches)  # (B, P-2, P-2) or (P-2, P-2)
    return g.mean(dim=(-2, -1)) if reduction == "mean" else g.sum(dim=(-2, -1))


def _accumulator_dtype(device: torch.device) -> torch.dtype:
    # float64 keeps the summed-area table exact for integer-valued maps of any practical size (values up to
    # 2040 * H * W); MPS has no float64, where float32 is the best available (exact below about 8000 pixels).
    return torch.float32 if device.type == "mps" else torch.float64


def integral_image(values: torch.Tensor) -> torch.Tensor:
    """Summed-area table with a zero first row and column: ``S[..., i, j] = values[..., :i, :j].sum()``.

    Args:
        values: (..., H, W).

    Returns:
        (..., H + 1, W + 1) in float64 (float32 on MPS).
    """
    s = values.to(_accumulator_dtype(values.device)).cumsum(-2).cumsum(-1)  # (..., H, W)
    return F.pad(s, (1, 0, 1, 0))  # (..., H+1, W+1)


def dense_pic(
    images: torch.Tensor, patch_size: int, stride: int = 1, reduction: Reduction = "mean"
) -> torch.Tensor:
    """PIC of every ``patch_size`` patch whose top-left corner lies on a ``stride`` grid, in O(1) per position.

    Entry ``[..., i, j]`` is the PIC of ``images[..., y:y+P, x:x+P]`` with ``y = i * stride``, ``x = j * stride``;
    it equals ``pic`` of that crop (up to float rounding).

    Args:
        images: (B, C, H, W) or (C, H, W) on the 0..255 scale, with H, W >= patch_size.
        patch_size: P, at least 3.
        stride: grid step of the top-left corners (1 = every position).
        reduction: as in `pic`.

    Returns:
        (B, ny, nx) or (ny, nx) with ``ny = (H - P) // stride + 1`` (likewise nx), in the input's float dtype.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 3:
        raise ValueError(f"patch_size must be an integer >= 3, got {patch_size!r}")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    x, added = _as_batch(images, "images")
    h, w = x.shape[-2:]
    if h < patch_size or w < patch_size:
        raise ValueError(f"image of {h}x{w} pixels is smaller than patch_size {patch_size}")
    g = gradient_map(x)  # (B, H-2, W-2)
    s = integral_image(g)  # (B, H-1, W-1)
    q = patch_size - 2  # side of the valid interior
    # Interior of the patch at (y, x) covers map rows y .. y+q-1 and columns x .. x+q-1.
    ys = torch.arange(0, h - patch_size + 1, stride, device=x.device)
    xs = torch.arange(0, w - patch_size + 1, stride, device=x.device)
    y0, y1, x0, x1 = ys[:, None], ys[:, None] + q, xs[None, :], xs[None, :] + q
    total = s[:, y1, x1] - s[:, y0, x1] - s[:, y1, x0] + s[:, y0, x0]  # (B, ny, nx)
    if reduction == "mean":
        total = total / (q * q)
    total = total.to(g.dtype)
    return total[0] if added else total
