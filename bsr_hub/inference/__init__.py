"""The inference layer: `upscale` and `upscale_many` for anything that follows the `Upscaler` protocol (a BSR
network, the bicubic baseline), with tiling, mirrored borders, memory budgets and the CPU backends (eager,
TorchScript, torch.compile, ONNX Runtime).

It knows no model class: `models.BSRModel.upscale` calls down into it.
"""

from .api import upscale, upscale_many
from .protocol import PixelMemory, Upscaler

__all__ = ["PixelMemory", "Upscaler", "upscale", "upscale_many"]
