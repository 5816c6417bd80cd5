"""ONNX export: `bsr-hub export MODEL -o model.onnx`, for ONNX Runtime, OpenCV's dnn module and the tools built
on them, where PyTorch is not installed.

The graph takes what `BSRModel.forward` takes and returns the image, clamped, with the mirrored border `upscale`
gives the network (inference.BORDER_CONTEXT: without it the corners of flat or dark images are far off):

    input   "input"   float32 (batch, 3, height, width)                 RGB in [0, 1], NCHW; height, width dynamic
    output  "output"  float32 (batch, 3, height * scale, width * scale) RGB in [0, 1]

Next to `model.onnx` goes `model.json` with the scale, that convention, the border the graph mirrors itself and
the checkpoint's config, and the same facts are in the graph's metadata
(`InferenceSession.get_modelmeta().custom_metadata_map`), so a user of either runtime need not guess, and
`bsr-hub eval --model model.onnx` needs no `--scale`.

The graph's conventions (the names, the opset, the exporter's settings and why, `ClampedBSR`) are the inference
layer's (bsr_hub/inference/onnx.py), shared with the ONNX Runtime backend of `upscale`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core import require, write_atomically, write_text_atomically
from ..inference import (
    BORDER_CONTEXT,
    INPUT_NAME,
    METADATA_BORDER_CONTEXT,
    METADATA_SCALE,
    OPSET,
    OUTPUT_NAME,
    ClampedBSR,
    trace_to_onnx,
)
from .modeling import BSRModel

VERIFY_TOLERANCE = 1e-3
"""Largest |ONNX Runtime - PyTorch| accepted on the export-time check, in [0, 1] units (float32 reordering
differs by about 1e-6; a wrong graph differs by far more than 1/255)."""


@dataclass(frozen=True)
class OnnxExport:
    """What `export_onnx` wrote, and how far ONNX Runtime's output was from PyTorch's on the check input."""

    onnx_path: Path
    metadata_path: Path
    metadata: dict[str, Any]
    max_abs_diff: float | None


def _is_export_metadata(path: Path) -> bool:
    """Whether `path` is a sidecar an export wrote (export_metadata's keys), not some other JSON file."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(found, dict) and found.get("format") == "onnx" and "opset" in found and "input" in found


def export_metadata(model: BSRModel, source: str) -> dict[str, Any]:
    """The facts a runtime user needs, written as `model.json` and into the graph's metadata."""
    from ..core.version import __version__

    s = model.scale
    return {
        "format": "onnx",
        "opset": OPSET,
        "source": source,
        METADATA_SCALE: s,
        METADATA_BORDER_CONTEXT: BORDER_CONTEXT,  # the graph mirrors its own border (ClampedBSR)
        "input": {
            "name": INPUT_NAME,
            "dtype": "float32",
            "layout": "NCHW",
            "shape": ["batch", 3, "height", "width"],
            "channels": "RGB",
            "range": [0.0, 1.0],
        },
        "output": {
            "name": OUTPUT_NAME,
            "dtype": "float32",
            "layout": "NCHW",
            "shape": ["batch", 3, f"height*{s}", f"width*{s}"],
            "channels": "RGB",
            "range": [0.0, 1.0],
        },
        "preset": model.config.preset,
        "config": model.config.to_dict(),
        "bsr_hub_version": __version__,
        "torch_version": torch.__version__,
    }


def export_onnx(
    model: BSRModel,
    path: str | os.PathLike,
    *,
    source: str = "",
    verify: bool = True,
    overwrite: bool = False,
) -> OnnxExport:
    """Write `model` as an ONNX graph with dynamic batch, height and width, and `<stem>.json` beside it.

    Args:
        model: any BSRModel; it is exported from a float32 CPU copy, whatever its device and dtype.
        path: the `.onnx` file to write.
        source: where the checkpoint came from (a bundled name, folder or Hub id), recorded in the metadata.
        verify: run the written graph in ONNX Runtime on a small random input and raise if it differs from
            PyTorch by more than `VERIFY_TOLERANCE`.
        overwrite: replace existing files (otherwise they are an error).
    """
    onnx = require("onnx", "onnxruntime", extra="export", what="ONNX export")
    import onnxruntime as ort
    onnx_path = Path(path)
    if onnx_path.suffix != ".onnx":
        raise ValueError(f"the output file should end in .onnx, got {onnx_path}")
    metadata_path = onnx_path.with_suffix(".json")
    existing = [p for p in (onnx_path, metadata_path) if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} already exists (pass overwrite=True, or --overwrite)")
    if metadata_path.exists() and not _is_export_metadata(metadata_path):
        # `-o CHECKPOINT/config.onnx` would put its sidecar over the checkpoint's config.json.
        raise FileExistsError(f"{metadata_path} is not an earlier export's {metadata_path.name}: --overwrite replaces "
                              f"only what an export wrote; name the .onnx file otherwise")
    onnx_path.parent.mkdir(parents=True, exist_ok=True)

    # A copy: the caller's model keeps its device, dtype and mode.
    cpu_model = BSRModel(model.config)
    cpu_model.load_state_dict({k: v.detach().float().cpu() for k, v in model.state_dict().items()})
    wrapped = ClampedBSR(cpu_model.eval())
    example = torch.rand(1, 3, 24, 20)  # any size: height and width are declared dynamic
    metadata = export_metadata(model, source)

    max_diff = None

    def write_graph(tmp: str) -> None:
        nonlocal max_diff
        trace_to_onnx(wrapped, example, str(tmp))
        graph = onnx.load(str(tmp))
        graph.doc_string = (
            f"BSR super-resolution x{model.scale} (bsr_hub). Input: float32 RGB in [0, 1], NCHW, any height "
            f"and width. Output: float32 RGB in [0, 1], NCHW, {model.scale}x the height and width."
        )
        onnx.helper.set_model_props(
            graph, {k: json.dumps(v) if not isinstance(v, str) else v for k, v in metadata.items()}
        )
        onnx.checker.check_model(graph)
        onnx.save(graph, str(tmp))

        if verify:
            x = torch.rand(1, 3, 19, 23)  # a size the graph was not traced at: dynamic shapes are exercised
            session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            got = session.run(None, {INPUT_NAME: x.numpy()})[0]
            with torch.no_grad():
                want = wrapped(x).numpy()
            max_diff = float(abs(got - want).max()) if got.shape == want.shape else float("inf")
            if not max_diff <= VERIFY_TOLERANCE:
                raise RuntimeError(
                    f"the exported graph does not reproduce the model: output {got.shape} vs {want.shape}, "
                    f"max |difference| {max_diff:.3g} > {VERIFY_TOLERANCE} (please report this)"
                )

    write_atomically(onnx_path, write_graph)  # verified before it gets its real name
    write_text_atomically(metadata_path, json.dumps(metadata, indent=2) + "\n")
    return OnnxExport(onnx_path, metadata_path, metadata, max_diff)
