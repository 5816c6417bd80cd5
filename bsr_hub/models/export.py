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

`bsr-hub export MODEL -o model.onnx --int8` (`export_onnx_int8`) writes the same graph statically quantized to int8
(inference/quantize.py: what is quantized, and why), with the same convention and facts, plus how it was quantized
and calibrated, and its PSNR cost against the float32 graph measured under the published protocol.

The graph's conventions (the names, the opset, the exporter's settings and why, `ClampedBSR`) are the inference
layer's (bsr_hub/inference/onnx.py), shared with the ONNX Runtime backend of `upscale`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
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
from ..inference.quantize import CalibrationSet, QuantSettings, quantize_graph
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


def check_targets(path: str | os.PathLike, overwrite: bool) -> tuple[Path, Path]:
    """(the .onnx file, its .json sidecar), checked before any work: a wrong suffix, files that exist without
    `overwrite`, or a sidecar name that would replace a JSON file no export wrote are errors. Makes the folder."""
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
    if not os.access(onnx_path.parent, os.W_OK):
        raise PermissionError(f"cannot write into {onnx_path.parent}")
    return onnx_path, metadata_path


def set_graph_metadata(graph: Any, metadata: dict[str, Any], scale: int) -> None:
    """The graph's doc string and `metadata` as its metadata_props (JSON for anything but a string)."""
    import onnx

    graph.doc_string = (
        f"BSR super-resolution x{scale} (bsr_hub). Input: float32 RGB in [0, 1], NCHW, any height "
        f"and width. Output: float32 RGB in [0, 1], NCHW, {scale}x the height and width."
    )
    del graph.metadata_props[:]
    onnx.helper.set_model_props(graph, {k: json.dumps(v) if not isinstance(v, str) else v for k, v in metadata.items()})


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
    onnx_path, metadata_path = check_targets(path, overwrite)

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
        set_graph_metadata(graph, metadata, model.scale)
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


INT8_MAX_COST_DB = 0.10
"""The largest PSNR cost (fp32 - int8, dB, on any benchmark measured) `export_onnx_int8` accepts by default (issue 27:
at most 0.10 dB, target 0.03)."""

NOT_MEASURED = "not measured"


class QuantizationCostError(ValueError):
    """The int8 graph costs more PSNR than the caller accepts: nothing was written."""


def export_onnx_int8(
    model: BSRModel,
    path: str | os.PathLike,
    calibration: CalibrationSet,
    *,
    measure: Callable[[Path, Path], dict[str, Any]] | None,
    max_cost_db: float = INT8_MAX_COST_DB,
    settings: QuantSettings | None = None,
    source: str = "",
    overwrite: bool = False,
) -> OnnxExport:
    """Write `model` as a statically quantized int8 ONNX graph (QDQ, per-channel int8 weights, calibrated on
    `calibration`) with `<stem>.json` beside it: the float32 export's facts, plus how it was quantized and calibrated,
    and its measured PSNR cost.

    Args:
        measure: `measure(fp32_graph, int8_graph)` scores both (evaluation.quantization_cost); its result is written
            into the metadata as `psnr_cost`. None writes `psnr_cost: "not measured"`, never a number.
        max_cost_db: a measured cost above this on any benchmark raises QuantizationCostError and writes nothing
            (an earlier file at `path` stays as it was).
        settings: what is quantized and how (default: inference.quantize.QuantSettings()).

    Raises:
        QuantizationCostError: the measured cost is over `max_cost_db`.
    """
    onnx = require("onnx", "onnxruntime", extra="export", what="int8 ONNX export")
    onnx_path, metadata_path = check_targets(path, overwrite)
    with tempfile.TemporaryDirectory(prefix="bsr-int8-export-") as work:
        fp32 = export_onnx(model, Path(work) / "fp32.onnx", source=source)  # verified against PyTorch
        int8_path = Path(work) / "int8.onnx"
        settings = settings or QuantSettings()
        kept = quantize_graph(fp32.onnx_path, int8_path, calibration, settings)
        cost = measure(fp32.onnx_path, int8_path) if measure is not None else NOT_MEASURED
        if cost != NOT_MEASURED and not cost["max_cost_db"] <= max_cost_db:
            per_set = ", ".join(f"{k} {v['cost_db']:+.3f}" for k, v in cost["benchmarks"].items())
            raise QuantizationCostError(
                f"int8 costs {cost['max_cost_db']:.3f} dB PSNR against float32 ({per_set} dB), over the "
                f"{max_cost_db:g} dB accepted; nothing was written. Calibrate on other images (--calibration DIR) "
                f"or accept it (--max-cost {cost['max_cost_db']:.2f})"
            )
        metadata = {
            **fp32.metadata,
            "precision": "int8",
            "quantization": {
                "tool": f"onnxruntime.quantization.quantize_static (onnxruntime {_ort_version()})",
                "format": "QDQ",
                **settings.to_dict(),
                "fp32_nodes": kept,
                "calibration": calibration.describe(),
            },
            "psnr_cost": cost,
            "psnr_cost_accepted_db": max_cost_db,
        }
        graph = onnx.load(str(int8_path))
        set_graph_metadata(graph, metadata, model.scale)
        onnx.checker.check_model(graph)
        write_atomically(onnx_path, lambda tmp: onnx.save(graph, tmp))
    write_text_atomically(metadata_path, json.dumps(metadata, indent=2) + "\n")
    return OnnxExport(onnx_path, metadata_path, metadata, fp32.max_abs_diff)


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
