"""The ONNX graph conventions shared by `bsr-hub export` (models/export.py) and the ONNX Runtime backend of
`upscale` (backends.py), so that both trace the same way: the opset, the input and output names, the
exporter's settings (`trace_to_onnx`), and `ClampedBSR`, the network with the mirrored border `upscale` gives
it and the clamp:

    input   "input"   float32 (batch, 3, height, width)                 RGB in [0, 1], NCHW; height, width dynamic
    output  "output"  float32 (batch, 3, height * scale, width * scale) RGB in [0, 1]

Why the TorchScript-based exporter (`dynamo=False`) and opset 17: torch 2.13's default `torch.export` exporter
writes opset-18 reductions (the attention's channel max and mean) with a shared `axes` input that OpenCV 5.0's
dnn refuses to load, in both of its engines; the TorchScript exporter's opset-17 graph loads in OpenCV and
ONNX Runtime alike (tests/models/test_export.py runs both).

The export also writes facts into the graph's metadata (`METADATA_SCALE`, `METADATA_BORDER_CONTEXT`, ...), which
the runtimes of `bsr-hub eval` (runtimes.py) read back: a file that says its scale needs no `--scale`.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from .protocol import Upscaler
from .tiling import BORDER_CONTEXT, mirrored_border

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "output"
METADATA_SCALE = "scale"
"""Metadata key (a JSON integer) of the model's scale."""
METADATA_BORDER_CONTEXT = "border_context"
"""Metadata key (a JSON integer): LR pixels the graph mirrors beyond each border itself (`ClampedBSR`), so that a
runtime gives it the image as it is instead of adding BORDER_CONTEXT pixels of its own (which would only double
the mirror: within 0.001 dB of PyTorch on Set5, but not the same graph input)."""


class ClampedBSR(nn.Module):
    """`BSRModel.forward` on the image with its mirrored border, cropped back and clamped to [0, 1]: what an
    exported model's user wants as an image, the same as `upscale` in one pass."""

    def __init__(self, model: Upscaler):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        crop = BORDER_CONTEXT * self.model.scale
        y = self.model(mirrored_border(x))  # (B, 3, (H + 2c)*s, (W + 2c)*s)
        return y[:, :, crop:-crop, crop:-crop].clamp(0.0, 1.0)  # (B, 3, H*s, W*s)


def trace_to_onnx(module: nn.Module, example: torch.Tensor, target: Any) -> None:
    """`torch.onnx.export` with this project's settings (TorchScript exporter, OPSET, the input/output names, batch,
    height and width dynamic) into a path or a file object. Shared by `export_onnx` and the ONNX Runtime backend of
    `upscale`, so both run the same graph."""
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo=True; see the module docstring for why it is
        # used all the same. Its warning would only confuse a command-line user.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            target,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={
                INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                OUTPUT_NAME: {0: "batch", 2: "out_height", 3: "out_width"},
            },
        )
