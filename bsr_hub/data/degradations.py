"""How LR images are made: MATLAB-compatible bicubic `imresize`, mod-crop, and the BI / BD degradations.

Published SR tables use MATLAB's `imresize(HR, 1/s, 'bicubic')`; PIL, OpenCV and `F.interpolate` differ from it
by tenths of a dB, so they cannot be used to make LR images for benchmarking. What makes this implementation
exact (verified pixel for pixel on `../shared/data/reference_LR`, METHOD.md section 1):

- the cubic kernel with a = -0.5, stretched by 1/scale when shrinking (antialiasing);
- MATLAB's output-to-input coordinate map `u = x / scale + 0.5 * (1 - 1 / scale)` (1-based);
- border indices clamped (replicate);
- the height pass runs before the width pass;
- for uint8 input each pass is rounded half up and clipped to 0..255 before the next; float input stays float.

Array layouts: numpy arrays are (H, W) or (H, W, C); torch tensors are (..., H, W), e.g. (C, H, W) or
(B, C, H, W). Each pass is one matrix product with a small (out, in) weight matrix, so there are no Python
loops over pixels and the torch path runs on any device.
"""

from __future__ import annotations

import math
from typing import Literal, TypeVar

import numpy as np
import torch

Array = TypeVar("Array", np.ndarray, torch.Tensor)
Degradation = Literal["BI", "BD"]
DEGRADATIONS: tuple[str, ...] = ("BI", "BD")

# BD as in the RDN/RCAN/SRMD MATLAB test code: Gaussian blur with this sigma, replicate padding, decimation.
BD_SIGMA = 1.6


# ---------------------------------------------------------------------------------------------------------
# Bicubic imresize
# ---------------------------------------------------------------------------------------------------------


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's `cubic`)."""
    ax = np.abs(x)
    ax2, ax3 = ax**2, ax**3
    return (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))


def resize_weights(in_length: int, out_length: int, scale: float, antialias: bool = True) -> np.ndarray:
    """The (out_length, in_length) float64 matrix of one bicubic pass, as MATLAB's `contributions`.

    Row i holds the weights that output sample i gives to each input sample; each row sums to 1. Taps that fall
    outside the input are folded onto the border sample (clamped indices), which is what MATLAB's output
    matches (METHOD.md section 1).
    """
    kernel_width = 4.0
    if scale < 1 and antialias:
        # Shrinking: the kernel is stretched by 1/scale so that it low-passes (antialiasing).
        def kernel(t: np.ndarray) -> np.ndarray:
            return scale * cubic(scale * t)

        kernel_width /= scale
    else:
        kernel = cubic
    x = np.arange(1, out_length + 1, dtype=np.float64)  # 1-based output coordinates, as in MATLAB
    u = x / scale + 0.5 * (1 - 1 / scale)  # where each output sample sits in input coordinates
    left = np.floor(u - kernel_width / 2)
    taps = math.ceil(kernel_width) + 2
    indices = left[:, None] + np.arange(taps)[None, :]  # (out, taps), 1-based
    weights = kernel(u[:, None] - indices)
    weights /= weights.sum(axis=1, keepdims=True)
    indices = np.clip(indices, 1, in_length).astype(np.int64) - 1  # replicate border, 0-based
    matrix = np.zeros((out_length, in_length), dtype=np.float64)
    rows = np.repeat(np.arange(out_length), taps)
    np.add.at(matrix, (rows, indices.ravel()), weights.ravel())
    return matrix


def _round_uint8(x: Array) -> Array:
    """MATLAB's cast to uint8: round half up (the values are non-negative after clipping), clip to 0..255."""
    if isinstance(x, torch.Tensor):
        return torch.floor(x + 0.5).clamp_(0, 255)
    return np.clip(np.floor(x + 0.5), 0, 255)


def _output_size(in_length: int, scale: float) -> int:
    # MATLAB: ceil(in * scale). Rounding first keeps 1/3 * 3 style float noise from adding a pixel.
    return math.ceil(round(in_length * scale, 9))


def imresize(image: Array, scale: float, antialias: bool = True) -> Array:
    """MATLAB-compatible bicubic resize by `scale` (< 1 shrinks, > 1 enlarges).

    Args:
        image: numpy (H, W) or (H, W, C), or torch (..., H, W). uint8 input follows MATLAB's uint8 semantics
            (each pass rounded half up and clipped) and returns uint8; float input is computed and returned in
            float (float64 math for numpy, the tensor's dtype for torch), without clipping.
        scale: the factor, e.g. 1 / 3 to shrink by 3 or 2 to enlarge by 2. The output size is
            ceil(size * scale), as in MATLAB.
        antialias: stretch the kernel when shrinking (MATLAB's default `'Antialiasing', true`).

    Returns:
        The resized image, same kind, layout and dtype as `image`.
    """
    if not scale > 0 or not math.isfinite(scale):
        raise ValueError(f"imresize: scale must be a positive finite number, got {scale!r}")
    is_torch = isinstance(image, torch.Tensor)
    if is_torch:
        if image.ndim < 2:
            raise ValueError(f"imresize: a tensor must be (..., H, W), got shape {tuple(image.shape)}")
        h_axis, w_axis = image.ndim - 2, image.ndim - 1
        is_uint8 = image.dtype == torch.uint8
        if not (is_uint8 or image.is_floating_point()):
            raise ValueError(f"imresize: tensor dtype must be uint8 or floating point, got {image.dtype}")
    elif isinstance(image, np.ndarray):
        if image.ndim not in (2, 3):
            raise ValueError(f"imresize: an array must be (H, W) or (H, W, C), got shape {image.shape}")
        h_axis, w_axis = 0, 1
        is_uint8 = image.dtype == np.uint8
        if not (is_uint8 or np.issubdtype(image.dtype, np.floating)):
            raise ValueError(f"imresize: array dtype must be uint8 or floating point, got {image.dtype}")
    else:
        raise ValueError(f"imresize: expected a numpy array or torch tensor, got {type(image).__name__}")

    in_h, in_w = image.shape[h_axis], image.shape[w_axis]
    out_h, out_w = _output_size(in_h, scale), _output_size(in_w, scale)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"imresize: scale {scale} makes an empty image from {in_h}x{in_w}")
    weights_h = resize_weights(in_h, out_h, scale, antialias)  # (out_h, in_h)
    weights_w = resize_weights(in_w, out_w, scale, antialias)  # (out_w, in_w)

    if is_torch:
        # uint8 is computed in float64 so that rounding at .5 is decided exactly as MATLAB's double math does.
        work_dtype = torch.float64 if is_uint8 else image.dtype
        x = image.to(work_dtype)
        wh = torch.from_numpy(weights_h).to(device=image.device, dtype=work_dtype)
        ww = torch.from_numpy(weights_w).to(device=image.device, dtype=work_dtype)
        x = torch.matmul(wh, x)  # (..., out_h, W): height pass first
        if is_uint8:
            x = _round_uint8(x)
        x = torch.matmul(x, ww.T)  # (..., out_h, out_w)
        return _round_uint8(x).to(torch.uint8) if is_uint8 else x

    work = image.astype(np.float64)
    x = np.tensordot(weights_h, work, axes=([1], [0]))  # (out_h, W[, C]): height pass first
    if is_uint8:
        x = _round_uint8(x)
    x = np.moveaxis(np.tensordot(weights_w, x, axes=([1], [1])), 0, 1)  # (out_h, out_w[, C])
    return _round_uint8(x).astype(np.uint8) if is_uint8 else x.astype(image.dtype, copy=False)


# ---------------------------------------------------------------------------------------------------------
# Mod-crop and the degradations
# ---------------------------------------------------------------------------------------------------------


def _check_scale(scale: int) -> int:
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale must be a positive integer (2, 3, 4, ...), got {scale!r}")
    return int(scale)


def modcrop(image: Array, scale: int) -> Array:
    """Crop the bottom and right so that height and width are multiples of `scale` (MATLAB `modcrop`).

    numpy (H, W[, C]) or torch (..., H, W). Returns a view.
    """
    scale = _check_scale(scale)
    if isinstance(image, torch.Tensor):
        h, w = image.shape[-2:]
        return image[..., : h - h % scale, : w - w % scale]
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
        raise ValueError(f"modcrop: expected a (H, W[, C]) numpy array or a tensor, got {getattr(image, 'shape', type(image))}")
    h, w = image.shape[:2]
    return image[: h - h % scale, : w - w % scale]


def gaussian_kernel_1d(size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian of `size` taps centred at (size - 1) / 2 (MATLAB `fspecial('gaussian')`
    is the outer product of this with itself; its eps-thresholding never triggers for these sizes)."""
    t = np.arange(size, dtype=np.float64) - (size - 1) / 2
    k = np.exp(-(t**2) / (2 * sigma**2))
    return k / k.sum()


def bd_kernel_size(scale: int, sigma: float = BD_SIGMA) -> int:
    """Kernel size of the standard BD code: 7 at x3 with sigma 1.6, else ceil(3 sigma) * 2 + 1 for odd scales
    and ceil(3 sigma) * 2 + 2 (even, so that decimation can hit block centres) for even scales."""
    if scale % 2 == 1:
        return 7 if (scale == 3 and sigma == 1.6) else math.ceil(sigma * 3) * 2 + 1
    return math.ceil(sigma * 3) * 2 + 2


def blur_downsample(hr: np.ndarray, scale: int, sigma: float = BD_SIGMA) -> np.ndarray:
    """BD: Gaussian blur (replicate padding, rounded to uint8 as MATLAB's `imfilter` on uint8), then keep the
    pixel at the centre of every `scale` x `scale` block.

    Odd scales (the published BD setting is x3): a 7x7 kernel, keep pixels 1, 4, 7, ... (0-based) at x3.
    Even scales (the SRMD/IRCNN convention; no published BD table uses them): a 12x12 kernel (even, so
    MATLAB's `imfilter` centres output j at input j + 0.5), keep pixels s/2 - 1, s/2 - 1 + s, ... whose blur
    is centred on the middle of each block. Both put every LR sample at its block's centre.

    Args:
        hr: uint8 (H, W) or (H, W, C), already mod-cropped.
    """
    size = bd_kernel_size(scale, sigma)
    k = gaussian_kernel_1d(size, sigma)
    # MATLAB imfilter's anchor for a kernel of `size` taps is floor((size + 1) / 2) (1-based): taps reach
    # `before` pixels back and `after` forward.
    before = (size + 1) // 2 - 1
    after = size - 1 - before
    h, w = hr.shape[:2]
    x = hr.astype(np.float64)
    # Separable blur as two (out, in) matrices with clamped indices (= replicate padding); exact in float64.
    blur_h = _filter_matrix(h, k, before, after)  # (H, H)
    blur_w = _filter_matrix(w, k, before, after)  # (W, W)
    x = np.tensordot(blur_h, x, axes=([1], [0]))
    x = np.moveaxis(np.tensordot(blur_w, x, axes=([1], [1])), 0, 1)
    blurred = _round_uint8(x).astype(np.uint8)
    start = scale // 2 if scale % 2 == 1 else scale // 2 - 1
    return np.ascontiguousarray(blurred[start::scale, start::scale])


def _filter_matrix(length: int, kernel: np.ndarray, before: int, after: int) -> np.ndarray:
    """(length, length) matrix applying the correlation `kernel` with replicate borders along one axis."""
    idx = np.arange(length)[:, None] + np.arange(-before, after + 1)[None, :]  # (length, taps)
    idx = np.clip(idx, 0, length - 1)
    m = np.zeros((length, length), dtype=np.float64)
    np.add.at(m, (np.repeat(np.arange(length), kernel.size), idx.ravel()), np.tile(kernel, length))
    return m


def degrade(hr: np.ndarray, scale: int, kind: Degradation = "BI") -> np.ndarray:
    """Make the LR image of a benchmark or training HR image, as published SR tables do.

    The HR is mod-cropped to a multiple of `scale` first, so the LR is exactly (H // scale, W // scale).

    Args:
        hr: uint8 numpy array, (H, W) grey or (H, W, C) with C = 1 or 3. The channel layout is kept (a grey
            image gives a grey LR; METHOD.md's "replicate grey to 3 channels" is done where the model input is
            made, and gives the same pixels since every channel is degraded alone).
        scale: integer factor (2, 3, 4, ...).
        kind: "BI" (MATLAB bicubic, antialiased) or "BD" (Gaussian blur sigma 1.6, then decimation).

    Returns:
        The uint8 LR image.
    """
    scale = _check_scale(scale)
    if scale < 2:
        raise ValueError(f"degrade: scale must be at least 2, got {scale}")
    if kind not in DEGRADATIONS:
        raise ValueError(f"degrade: kind must be one of {DEGRADATIONS}, got {kind!r}")
    if not isinstance(hr, np.ndarray) or hr.dtype != np.uint8:
        raise ValueError(
            f"degrade: expected a uint8 numpy array (np.asarray(PIL image)), got "
            f"{type(hr).__name__} of dtype {getattr(hr, 'dtype', None)}"
        )
    if hr.ndim not in (2, 3) or (hr.ndim == 3 and hr.shape[2] not in (1, 3)):
        raise ValueError(
            f"degrade: expected (H, W) or (H, W, 3) (or (H, W, 1)), got shape {hr.shape}; "
            "convert RGBA or palette images to RGB first"
        )
    if hr.shape[0] < scale or hr.shape[1] < scale:
        raise ValueError(f"degrade: image {hr.shape[0]}x{hr.shape[1]} is smaller than the scale {scale}")
    hr = modcrop(hr, scale)
    if kind == "BI":
        return imresize(hr, 1 / scale)
    return blur_downsample(hr, scale)


# ---------------------------------------------------------------------------------------------------------
# Files: `bsr-hub degrade`
# ---------------------------------------------------------------------------------------------------------


def degrade_files(
    inputs: list[str], output: str, scale: int, kind: Degradation = "BI", overwrite: bool = False
) -> tuple[int, list[str]]:
    """Write the LR of every HR image file (folders recursively) into `output` as PNG, same names and sub-folders.

    A file given directly lands at `output/<stem>.png`; files found under a folder keep their path relative to
    it. Grey images stay grey; other modes are converted to RGB first (alpha is dropped).

    Returns:
        (number written, messages about the files that failed or were skipped).
    """
    from PIL import Image

    from ..core import plan_jobs, save_image_atomic
    from ..core import ImageReadError, open_image, to_uint8

    done, problems = 0, []
    for job in plan_jobs(inputs, output, ".png", overwrite):
        src, target = job.source, job.target
        if job.failure or job.skip:
            problems.append(f"failed {src}: {job.failure}" if job.failure else f"skipped {src}: {job.skip}")
            continue
        try:
            with open_image(src) as img:
                # Deeper modes are refused: Pillow's convert() would clip them to 0..255, a silently wrong LR.
                hr = to_uint8(img, colour="keep_grey")
            lr = degrade(hr, scale, kind)
        except ImageReadError as err:
            detail = "; the LR protocol is defined on uint8" if err.reason == "mode" else ""
            problems.append(f"failed {src}: {err}{detail}")
            continue
        except ValueError as err:  # too small to degrade at this scale
            problems.append(f"failed {src}: {err}")
            continue
        save_image_atomic(Image.fromarray(lr), target)
        done += 1
    return done, problems
