"""PSNR and SSIM exactly as published SR tables compute them (METHOD.md section 7), vectorised in torch.

The protocol, and why each step matters (each one moves the average by 0.01 to 0.1 dB):

- the output is clamped to [0, 255] and rounded to uint8 before scoring (`quantize`);
- scores are on Y of ITU-R BT.601 YCbCr with MATLAB `rgb2ycbcr`'s coefficients, kept as float, not rounded;
- a single-channel (grey) ground truth, such as Set14's `bridge`, is scored on its own channel with no YCbCr
  offset or 219/255 range scaling, as the MATLAB scripts do (with the scaling, Set14's bicubic average comes
  out 0.09 dB high);
- `shave` (= the scale) pixels are cut from every border;
- PSNR = 10 log10(255^2 / MSE) and SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 = 0.01,
  K2 = 0.03, valid filtering, mean of the map) per image; the benchmark figure is the mean over images.

Every function takes tensors on any device, so validation during training can score on the GPU. The math is
float64 by default: float32 sums over a 500x500 image lose about 1e-4 dB, which is below the table's rounding
but needlessly close to it.

`blockiness` is no part of the protocol: it measures the JPEG block grid in an upscaled image, for the robustness
suite (`bsr_hub.evaluation.robustness`), where PSNR alone does not say whether a model smooths the grid or sharpens it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# MATLAB rgb2ycbcr (BT.601, "studio swing"): Y = 16 + (65.481 R + 128.553 G + 24.966 B), R, G, B in [0, 1].
Y_OFFSET = 16.0
Y_COEFFS = (65.481, 128.553, 24.966)
# The same luma without offset and range scaling (Y_COEFFS / 219 = 0.299, 0.587, 0.114): used when the ground
# truth is grey, so that a 3-channel output is compared with the grey values on their own scale.
_Y_RANGE = 219.0

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
DATA_RANGE = 255.0


def quantize(image01: torch.Tensor) -> torch.Tensor:
    """A float image in [0, 1] -> float values of its uint8 image (clamped, rounded half up, as MATLAB im2uint8).

    (..., H, W) -> same shape, values in {0, 1, ..., 255}.
    """
    return torch.floor(image01.clamp(0, 1) * 255.0 + 0.5)


def rgb_to_y(image: torch.Tensor) -> torch.Tensor:
    """Y of ITU-R BT.601 YCbCr as MATLAB `rgb2ycbcr` on double input, scaled to 0..255 and kept as float.

    (..., 3, H, W) with values in 0..255 -> (..., H, W) with values in 16..235.
    """
    if image.shape[-3] != 3:
        raise ValueError(f"rgb_to_y: expected 3 channels in dim -3, got shape {tuple(image.shape)}")
    weights = torch.tensor(Y_COEFFS, dtype=image.dtype, device=image.device) / 255.0
    return torch.tensordot(weights, image.movedim(-3, 0), dims=1).add_(Y_OFFSET)  # one pass over the image


def luma(image: torch.Tensor, grey_reference: bool) -> torch.Tensor:
    """The channel that is scored: (..., C, H, W) in 0..255 -> (..., H, W).

    With a colour reference: Y of a 3-channel image. With a grey reference: a 1-channel image as it is, and
    a 3-channel one as BT.601 luma without offset and range scaling (equal to the grey value when R = G = B),
    so both sides of the comparison are on the same 0..255 scale.
    """
    c = image.shape[-3]
    if c == 1:
        if not grey_reference:
            raise ValueError("luma: a 1-channel image can only be scored against a grey (1-channel) reference")
        return image.squeeze(-3)
    if c != 3:
        raise ValueError(f"luma: expected 1 or 3 channels, got {c} (shape {tuple(image.shape)})")
    if grey_reference:
        weights = torch.tensor(Y_COEFFS, dtype=image.dtype, device=image.device) / _Y_RANGE
        return torch.tensordot(weights, image.movedim(-3, 0), dims=1)
    return rgb_to_y(image)


def _shave(x: torch.Tensor, shave: int) -> torch.Tensor:
    if shave < 0:
        raise ValueError(f"shave must be >= 0, got {shave}")
    if shave == 0:
        return x
    if x.shape[-1] <= 2 * shave or x.shape[-2] <= 2 * shave:
        raise ValueError(f"image {tuple(x.shape[-2:])} is too small to shave {shave} pixels from each border")
    return x[..., shave:-shave, shave:-shave]


def psnr(sr: torch.Tensor, hr: torch.Tensor, shave: int = 0, data_range: float = DATA_RANGE) -> torch.Tensor:
    """PSNR in dB per image of two single-channel images.

    Args:
        sr, hr: (B, H, W) or (H, W) float, values in 0..data_range.
        shave: pixels cut from every border first.

    Returns:
        (B,) or () float64; inf where the images are identical.
    """
    if sr.shape != hr.shape:
        raise ValueError(f"psnr: shapes differ: {tuple(sr.shape)} vs {tuple(hr.shape)}")
    diff = _shave(sr.double() - hr.double(), shave)
    mse = diff.pow(2).mean(dim=(-2, -1))
    # mse = 0 gives +inf through the division, which is the right answer for identical images.
    return 10.0 * torch.log10(data_range**2 / mse)


def gaussian_window_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The normalised 1-D Gaussian whose outer product is MATLAB `fspecial('gaussian', size, sigma)`."""
    t = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    return g / g.sum()


def _valid_filter_matrix(n: int, g: torch.Tensor) -> torch.Tensor:
    """(n - k + 1, n) banded matrix M with (M @ x)[i] = sum_j g[j] x[i + j]: 'valid' correlation along an axis.

    The Gaussian window is separable, so the 11x11 'valid' filter is M_h @ X @ M_w^T: two matrix products,
    which are several times faster than conv2d in float64 on a CPU and run as well on a GPU.
    """
    k = g.numel()
    rows = torch.arange(n - k + 1, device=g.device)[:, None]
    cols = rows + torch.arange(k, device=g.device)[None, :]  # (n - k + 1, k)
    m = torch.zeros(n - k + 1, n, dtype=g.dtype, device=g.device)
    return m.scatter_(1, cols, g.expand(n - k + 1, k).contiguous())


def ssim(
    sr: torch.Tensor,
    hr: torch.Tensor,
    shave: int = 0,
    data_range: float = DATA_RANGE,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """SSIM per image of two single-channel images (Wang et al. 2004, as their MATLAB `ssim_index`).

    11x11 Gaussian window with sigma 1.5, 'valid' filtering (no padding), K1 = 0.01, K2 = 0.03, mean of the
    SSIM map, no downsampling.

    Args:
        sr, hr: (B, H, W) or (H, W) float, values in 0..data_range.
        shave: pixels cut from every border first.

    Returns:
        (B,) or () in `dtype`.
    """
    if sr.shape != hr.shape:
        raise ValueError(f"ssim: shapes differ: {tuple(sr.shape)} vs {tuple(hr.shape)}")
    squeeze = sr.ndim == 2
    x = _shave(sr.to(dtype), shave)
    y = _shave(hr.to(dtype), shave)
    if x.shape[-1] < SSIM_WINDOW or x.shape[-2] < SSIM_WINDOW:
        raise ValueError(f"ssim: image {tuple(x.shape[-2:])} after shaving is smaller than the {SSIM_WINDOW}x{SSIM_WINDOW} window")
    if squeeze:
        x, y = x[None], y[None]
    g = gaussian_window_1d(dtype=dtype).to(x.device)
    m_h = _valid_filter_matrix(x.shape[-2], g)  # (H - 10, H)
    m_w = _valid_filter_matrix(x.shape[-1], g)  # (W - 10, W)
    # The five local statistics at once: (B, 5, H, W) -> (B, 5, H - 10, W - 10).
    stacked = torch.stack([x, y, x * x, y * y, x * y], dim=1)
    mu_x, mu_y, e_xx, e_yy, e_xy = (m_h @ stacked @ m_w.T).unbind(1)  # each (B, h, w)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    # ssim = (2 mu_x mu_y + c1)(2 cov + c2) / ((mu_x^2 + mu_y^2 + c1)(var_x + var_y + c2)), written in place:
    # on a CPU these full-size temporaries, not the filtering, dominate the time.
    mu_xy = mu_x * mu_y
    mu_sq = mu_x.square_().add_(mu_y.square_())  # mu_x^2 + mu_y^2 (mu_x, mu_y are not needed after this)
    numerator = (2 * mu_xy + c1).mul_(e_xy.sub_(mu_xy).mul_(2).add_(c2))
    denominator = (mu_sq + c1).mul_(e_xx.add_(e_yy).sub_(mu_sq).add_(c2))
    ssim_map = numerator.div_(denominator)
    out = ssim_map.mean(dim=(-2, -1))
    return out[0] if squeeze else out


def _to_bchw_255(image: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """A uint8 image (numpy (H, W[, C]) or tensor (C, H, W) / (B, C, H, W)) -> float64 (B, C, H, W) in 0..255.

    Float tensors are taken as [0, 1] model outputs and quantised to uint8 values first (the protocol scores
    the 8-bit image a user would save).
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"{name}: numpy images must be uint8 (H, W[, C]), got {image.dtype}")
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3:
            raise ValueError(f"{name}: expected (H, W) or (H, W, C), got shape {image.shape}")
        return torch.tensor(image, dtype=torch.float64).permute(2, 0, 1)[None]  # copies: input may be read-only
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"{name}: expected a numpy array or torch tensor, got {type(image).__name__}")
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4:
        raise ValueError(f"{name}: expected a (C, H, W) or (B, C, H, W) tensor, got shape {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        return image.double()
    if image.is_floating_point():
        return quantize(image.double())
    raise ValueError(f"{name}: tensor dtype must be uint8 or float in [0, 1], got {image.dtype}")


def psnr_ssim(
    sr: np.ndarray | torch.Tensor, hr: np.ndarray | torch.Tensor, shave: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """PSNR and SSIM per image under the published protocol (Y channel, grey on its own channel, shave).

    Args:
        sr: the output: uint8 numpy (H, W[, C]) or tensor (B, C, H, W) / (C, H, W), uint8 or float in [0, 1]
            (float is clamped and rounded to uint8 values first).
        hr: the ground truth, same kinds; 1 channel means a grey ground truth, scored on its own channel.
        shave: pixels cut from every border; the protocol uses the scale.

    Returns:
        (psnr, ssim), each (B,) float64 on sr's device.
    """
    sr_t = _to_bchw_255(sr, "sr")
    hr_t = _to_bchw_255(hr, "hr").to(sr_t.device)
    if sr_t.shape[-2:] != hr_t.shape[-2:]:
        raise ValueError(
            f"psnr_ssim: output is {tuple(sr_t.shape[-2:])} but the ground truth is {tuple(hr_t.shape[-2:])}; "
            "mod-crop the ground truth to a multiple of the scale"
        )
    grey = hr_t.shape[1] == 1
    sr_y = luma(sr_t, grey_reference=grey)  # (B, H, W)
    hr_y = luma(hr_t, grey_reference=grey)
    if sr_y.shape[0] != hr_y.shape[0]:
        raise ValueError(f"psnr_ssim: batch sizes differ: {sr_y.shape[0]} vs {hr_y.shape[0]}")
    return psnr(sr_y, hr_y, shave), ssim(sr_y, hr_y, shave)


def psnr_from_mse(mse: float, data_range: float = DATA_RANGE) -> float:
    """10 log10(data_range^2 / mse); inf for mse = 0."""
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


# ---------------------------------------------------------------------------------------------------------
# Blockiness: the JPEG block grid in an upscaled image
# ---------------------------------------------------------------------------------------------------------

JPEG_BLOCK = 8
"""Side of a JPEG luma block in pixels (chroma blocks of 4:2:0 JPEG span 16, still on this grid)."""


def blockiness(image: np.ndarray | torch.Tensor, scale: int, shave: int = 0, block: int = JPEG_BLOCK) -> torch.Tensor:
    """How strongly an upscaled image shows the block grid of a JPEG-compressed LR input; 1.0 = no grid.

    JPEG codes the LR in `block` x `block` blocks, so its errors step at the block borders. An upscaler can
    smooth those steps or sharpen them like any other edge; PSNR does not say which, and the grid is what a
    viewer sees. At scale s, the border between LR pixels k - 1 and k lands between output pixels s k - 1 and
    s k, so the LR block borders are the output's steps at multiples of `block` * s (rows and columns).

    The figure is the mean absolute luma step across those block borders (horizontal steps at the border
    columns and vertical steps at the border rows) divided by the mean absolute step across the other LR pixel
    borders (the output's multiples of s that are not multiples of `block` * s). Only LR pixel borders are
    compared because an upscaler's steps depend on where they fall within the s x s cell of one LR pixel:
    against all other positions, bicubic upscaling of LR without JPEG reads 1.14 to 1.16 on Set14 at x2, x3
    and x4 with no grid at all, against the other LR pixel borders 0.99. The grid's origin is the LR's top-left
    pixel, where JPEG starts its blocks; `shave` drops steps that touch the outer pixels without moving it (the
    robustness suite shaves the scale, as the protocol's PSNR does: a model's outer pixels depend on how it pads).

    Args:
        image: the upscaled image, as `psnr_ssim`'s `sr`: uint8 numpy (H, W[, C]), or a tensor (C, H, W) /
            (B, C, H, W), uint8 or float in [0, 1] (quantised to uint8 values first). Scored on luma: Y of
            3 channels (`rgb_to_y`), a single channel as it is.
        scale: the factor the image was upscaled by (1 for a JPEG itself).
        shave: steps with a pixel closer than this to the image's border are left out.
        block: the JPEG block side in LR pixels.

    Returns:
        (B,) float64: above 1 where the grid is stronger than the image's other LR pixel borders, NaN for an
        image with no step at all.

    Raises:
        ValueError: an image too small to hold a block border and another LR pixel border.
    """
    if scale < 1 or block < 2 or shave < 0:
        raise ValueError(f"blockiness: needs scale >= 1, block >= 2, shave >= 0; got {scale}, {block}, {shave}")
    t = _to_bchw_255(image, "image")
    y = luma(t, grey_reference=t.shape[1] == 1)  # (B, H, W)
    if min(y.shape[-2:]) <= 2 * shave:
        raise ValueError(f"image {tuple(y.shape[-2:])} is too small to shave {shave} pixels from each border")
    steps = (
        (y[..., :, 1:] - y[..., :, :-1]).abs(),  # (B, H, W - 1): column k - 1 holds the step from pixel k - 1 to k
        (y[..., 1:, :] - y[..., :-1, :]).abs().transpose(-2, -1),  # (B, W, H - 1), the same for rows
    )
    border_sum = other_sum = 0.0
    border_count = other_count = 0
    for step in steps:
        n = step.shape[-1] + 1  # pixels along the steps
        step = step[..., shave : step.shape[-2] - shave, :]
        k = torch.arange(1, n, device=step.device)
        inside = (k > shave) & (k < n - shave)  # both pixels of the step, k - 1 and k, are left after shaving
        grid = inside & (k % (block * scale) == 0)
        other = inside & (k % scale == 0) & (k % (block * scale) != 0)
        border_sum = border_sum + step[..., grid].sum(dim=(-2, -1))
        other_sum = other_sum + step[..., other].sum(dim=(-2, -1))
        border_count += step.shape[-2] * int(grid.sum())
        other_count += step.shape[-2] * int(other.sum())
    if not border_count or not other_count:
        raise ValueError(
            f"blockiness: image {tuple(y.shape[-2:])} at x{scale} holds no {block}x{block} block border and other "
            f"LR pixel border (it needs more than {block * scale} pixels along a side)"
        )
    return (border_sum / border_count) / (other_sum / other_count)
