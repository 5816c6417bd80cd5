"""What a `--model` value names, loaded as an `Upscaler` for the protocol:

    bicubic                         the MATLAB bicubic baseline (needs --scale)
    NAME | FOLDER | OWNER/REPO      a BSR checkpoint: bundled, a local folder or a Hub repo id (PyTorch)
    PATH.onnx | onnxruntime:PATH    an ONNX graph in ONNX Runtime: float32 RGB in [0, 1], NCHW (bsr-hub export's)
    opencv:PATH                     the same convention in OpenCV's dnn module (cv2.dnn.readNet)
    dnn_superres:ALGORITHM:PATH     an OpenCV dnn_superres model (edsr, espcn, fsrcnn or lapsrn; opencv-contrib)

A graph's scale comes from its metadata (bsr-hub export writes it) or `--scale`; both given and different is an
error, as is neither. Every model other than BSR and bicubic runs on the CPU (inference/runtimes.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import EvaluationError
from ..inference import (
    DNN_SUPERRES_ALGORITHMS,
    OnnxRuntimeModel,
    OpenCVDnnModel,
    OpenCVSuperResModel,
    Upscaler,
    read_graph_facts,
)
from .bicubic import BicubicModel

BICUBIC = "bicubic"
RUNTIME_PREFIXES = ("onnxruntime", "opencv", "dnn_superres")


@dataclass(frozen=True)
class ModelSpec:
    """A `--model` value, parsed: its `kind` (bicubic, bsr, onnxruntime, opencv, dnn_superres), the name or file it
    names, and a dnn_superres model's algorithm."""

    text: str
    kind: str
    target: str
    algorithm: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        if text == BICUBIC:
            return cls(text, BICUBIC, text)
        prefix, colon, rest = text.partition(":")
        if colon and prefix in RUNTIME_PREFIXES:
            if prefix != "dnn_superres":
                return cls(text, prefix, rest)
            algorithm, colon, path = rest.partition(":")
            if not colon or algorithm not in DNN_SUPERRES_ALGORITHMS:
                raise EvaluationError(
                    f"--model {text}: name a dnn_superres model dnn_superres:ALGORITHM:PATH, ALGORITHM one of "
                    f"{', '.join(DNN_SUPERRES_ALGORITHMS)} (it decides OpenCV's processing), e.g. "
                    "dnn_superres:espcn:ESPCN_x2.onnx"
                )
            return cls(text, "dnn_superres", path, algorithm)
        if text.endswith(".onnx"):
            return cls(text, "onnxruntime", text)
        if text.endswith(".pb"):
            raise EvaluationError(
                f"--model {text}: a TensorFlow graph. bsr-hub eval runs one only through OpenCV's dnn_superres, as "
                f"dnn_superres:ALGORITHM:{text}, and OpenCV 5 reads ONNX files only there (OpenCV 4.x with contrib "
                "reads .pb)"
            )
        return cls(text, "bsr", text)


def load_model(name: str, scale: int | None = None, device: str | torch.device = "cpu") -> Upscaler:
    """The model a `--model` value names (`ModelSpec`), checked against `scale`.

    Raises:
        EvaluationError: no scale where one is needed, or a model whose scale is not `scale`.
        ValueError: a file its runtime cannot read or run (the message says which and why).
        MissingExtraError: the runtime is not installed (the message says what to install).
    """
    spec = ModelSpec.parse(name)
    if spec.kind == BICUBIC:
        if scale is None:
            raise EvaluationError("--model bicubic needs --scale (2, 3, 4, ...)")
        return BicubicModel(scale).to(device)
    if spec.kind != "bsr":
        return _load_file_model(spec, scale)
    from ..models import BSRModel

    model = BSRModel.from_pretrained(name, map_location=device)
    if scale is not None and model.scale != scale:
        raise EvaluationError(
            f"model {name} is a x{model.scale} model but --scale {scale} was asked; "
            f"pass --scale {model.scale} or a x{scale} checkpoint"
        )
    return model.eval()


def _load_file_model(spec: ModelSpec, scale: int | None) -> Upscaler:
    path = Path(spec.target)
    if not path.is_file():
        raise EvaluationError(f"--model {spec.text}: {path} is not a file")
    if spec.kind == "dnn_superres":
        if scale is None:
            raise EvaluationError(f"--model {spec.text} needs --scale: OpenCV's dnn_superres is told the scale")
        facts = read_graph_facts(path, required=False)
        return OpenCVSuperResModel(path, spec.algorithm, scale, parameters=facts.parameters)
    facts = read_graph_facts(path, required=spec.kind == "onnxruntime")
    if facts.scale is not None and scale is not None and facts.scale != scale:
        raise EvaluationError(
            f"{spec.text} is a x{facts.scale} model (its ONNX metadata says scale {facts.scale}) but --scale {scale} "
            f"was asked; pass --scale {facts.scale} or a x{scale} model"
        )
    if facts.scale is None and scale is None:
        raise EvaluationError(f"{spec.text} carries no scale in its metadata (bsr-hub export writes one): pass --scale")
    runtime = OnnxRuntimeModel if spec.kind == "onnxruntime" else OpenCVDnnModel
    return runtime(path, facts.scale or scale, parameters=facts.parameters, border_context=facts.border_context)


def model_kind(model: Upscaler) -> str:
    """How a loaded model runs, for tables: bicubic, pytorch (a BSR checkpoint), or its runtime's `kind`."""
    if isinstance(model, BicubicModel):
        return BICUBIC
    if isinstance(model, torch.nn.Module):
        return "pytorch"
    return model.kind


def parameter_count(model: Upscaler) -> int | None:
    """Learned parameters of a PyTorch model (0 for bicubic); for a graph file the sum of its initializers' sizes,
    or None when unknown (a non-ONNX file, or no `onnx` to read it with)."""
    if isinstance(model, torch.nn.Module):
        return sum(p.numel() for p in model.parameters())
    return getattr(model, "parameters", None)
