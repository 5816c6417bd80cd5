"""The inference layer: `upscale` and `upscale_many` for anything that follows the `Upscaler` protocol (a BSR
network, the bicubic baseline), with tiling, mirrored borders, memory budgets and the CPU backends (eager,
TorchScript, torch.compile, ONNX Runtime).

It knows no model class: `models.BSRModel.upscale` calls down into it.
"""

from .api import check_precision, super_resolve, upscale, upscale_many
from .backends import BACKENDS, resolve_backend
from .onnx import INPUT_NAME, OPSET, OUTPUT_NAME, ClampedBSR, trace_to_onnx
from .protocol import PixelMemory, Upscaler
from .tiling import AUTO, BORDER_CONTEXT, mirrored_border

__all__ = [
    "AUTO",
    "BACKENDS",
    "BORDER_CONTEXT",
    "INPUT_NAME",
    "OPSET",
    "OUTPUT_NAME",
    "ClampedBSR",
    "PixelMemory",
    "Upscaler",
    "check_precision",
    "mirrored_border",
    "resolve_backend",
    "super_resolve",
    "trace_to_onnx",
    "upscale",
    "upscale_many",
]
