"""What tiling, the out-of-memory fallback and evaluation need from a model: the `Upscaler` contract.

`inference.upscale`, `plan_tiling` (tiling.py) and `evaluation.evaluate_benchmark` read nothing else from a
model, so any module with these members runs through them: `BSRModel` and the bicubic baseline
(`bicubic.BicubicModel`) both do, and a test's wrapper can too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class PixelMemory:
    """Activation bytes of one forward pass per input (LR) pixel of one image, in float32."""

    feature_map: int
    """One feature map: what CPU tiles are sized by (a map should stay in the cache)."""
    peak: int
    """Everything alive at the peak of the pass: what decides whether an image fits in device memory."""

    def __post_init__(self) -> None:
        if self.feature_map < 1 or self.peak < self.feature_map:
            raise ValueError(f"expected 1 <= feature_map <= peak bytes per pixel, got {self.feature_map}, {self.peak}")


@runtime_checkable
class Upscaler(Protocol):
    """A super-resolution model as inference sees it: (B, 3, h, w) float in [0, 1] -> (B, 3, h*scale, w*scale)."""

    @property
    def scale(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def memory_per_input_pixel(self) -> PixelMemory: ...
