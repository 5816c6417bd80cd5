"""The bicubic baseline as a model: MATLAB's `imresize(LR, s, 'bicubic')`, run through `upscale` like any network.

Evaluation scores it as `--model bicubic` and beside every model's own numbers on its card; it satisfies the
`upscaler.Upscaler` contract, so tiling, self-ensemble and the benchmark loop treat it as they treat `BSRModel`.
"""

from __future__ import annotations

from typing import Any

import torch

from ..data import imresize
from ..inference import PixelMemory


class BicubicModel(torch.nn.Module):
    """MATLAB-compatible bicubic enlarging.

    `forward` takes (B, C, h, w) float in [0, 1] and returns (B, C, sh, sw). With `uint8=True` (the published
    baseline: MATLAB `imresize(LR, s, 'bicubic')` on the uint8 LR) the input is taken back to its uint8 values
    and each pass is rounded as MATLAB does; with `uint8=False` it is a linear, float-only interpolation,
    which commutes with flips and rotations, so self-ensemble must leave its output unchanged.
    """

    def __init__(self, scale: int, uint8: bool = True):
        super().__init__()
        self._scale = int(scale)
        self.uint8 = uint8
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # carries .device

    @property
    def scale(self) -> int:
        return self._scale

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def memory_per_input_pixel(self) -> PixelMemory:
        # No feature maps to speak of: the input, the output (s*s pixels per input pixel) and a few working copies.
        s = self._scale
        return PixelMemory(feature_map=4, peak=4 * (6 + 3 * s * s))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uint8:
            lr = torch.floor(x.clamp(0, 1) * 255 + 0.5).to(torch.uint8)  # exact: x came from a uint8 LR
            return imresize(lr, self._scale).to(x.dtype) / 255.0  # (B, C, sh, sw)
        return imresize(x, self._scale)

    def upscale(self, image: Any, **kwargs: Any) -> Any:
        from ..inference import upscale

        return upscale(self, image, **kwargs)
