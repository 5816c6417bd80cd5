"""What tiling, the out-of-memory fallback and evaluation need from a model: the `Upscaler` contract.

`inference.upscale`, `plan_tiling` (tiling.py) and `evaluation.evaluate_benchmark` read nothing else from a
model, so any module with these members runs through them: `BSRModel`, the bicubic baseline
(`bicubic.BicubicModel`) and the ONNX Runtime and OpenCV models of `bsr-hub eval` (runtimes.py) all do, and a
test's wrapper can too.

One member is optional: `border_context`, the LR pixels of mirrored image that inference adds beyond each border
of the image before calling the model (tiling.BORDER_CONTEXT when absent). A model that mirrors its own border,
an exported BSR graph (onnx.ClampedBSR), has 0, so that it sees exactly what the PyTorch model sees.
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
