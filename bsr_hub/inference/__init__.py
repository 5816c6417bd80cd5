"""The inference layer: `upscale` and `upscale_many` for anything that follows the `Upscaler` protocol (a BSR
network, the bicubic baseline, a model file in ONNX Runtime or OpenCV: runtimes.py), with tiling, mirrored borders,
memory budgets and the CPU backends (eager, TorchScript, torch.compile, ONNX Runtime).

It knows no model class: `models.BSRModel.upscale` calls down into it.
"""

from .api import check_precision, ensemble_forward, super_resolve, upscale, upscale_many
from .backends import BACKENDS, resolve_backend
from .onnx import (
    INPUT_NAME,
    METADATA_BORDER_CONTEXT,
    METADATA_SCALE,
    OPSET,
    OUTPUT_NAME,
    ClampedBSR,
    trace_to_onnx,
)
from .protocol import PixelMemory, Upscaler
from .runtimes import (
    DNN_SUPERRES_ALGORITHMS,
    GraphFacts,
    OnnxRuntimeModel,
    OpenCVDnnModel,
    OpenCVSuperResModel,
    read_graph_facts,
)
from .tiling import AUTO, BORDER_CONTEXT, mirrored_border

__all__ = [
    "AUTO",
    "BACKENDS",
    "BORDER_CONTEXT",
    "DNN_SUPERRES_ALGORITHMS",
    "INPUT_NAME",
    "METADATA_BORDER_CONTEXT",
    "METADATA_SCALE",
    "OPSET",
    "OUTPUT_NAME",
    "ClampedBSR",
    "GraphFacts",
    "OnnxRuntimeModel",
    "OpenCVDnnModel",
    "OpenCVSuperResModel",
    "PixelMemory",
    "Upscaler",
    "check_precision",
    "ensemble_forward",
    "mirrored_border",
    "read_graph_facts",
    "resolve_backend",
    "super_resolve",
    "trace_to_onnx",
    "upscale",
    "upscale_many",
]
