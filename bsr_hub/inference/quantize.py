"""Static int8 quantization of a float32 BSR ONNX graph (ONNX Runtime's `quantize_static`), shared by
`bsr-hub export --int8` (models/export.py) and the `backend="onnxruntime-int8"` runner of `upscale` (backends.py).

    float32 graph  --(calibration: LR patches of real photos, ranges of every activation)-->  QDQ int8 graph

The graph keeps float32 RGB in [0, 1] in and out; inside it, QuantizeLinear/DequantizeLinear pairs around most
convolutions let ONNX Runtime run them as int8 (QLinearConv): weights int8 per output channel, activations uint8 with
one scale per tensor. What stays float32, and why, is `QuantSettings` (measured: bench/results/int8.md).

Calibration is deterministic: `calibration_patches` picks images and patch corners from a seeded generator over the
images sorted by path, so the same folder and seed always give the same graph.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core import open_image, require, to_uint8
from .onnx import INPUT_NAME

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

FP32_NODES = {
    # Node-name patterns (the TorchScript exporter names a node after its module path, e.g. "/model/head/Conv") of
    # the convolutions kept in float32. Measured on bsr-tiny-x2 (Set5 Y-PSNR cost against the float32 graph, MinMax
    # calibration): first one conv quantized at a time, then everything but these. They sit where an 8-bit
    # activation is shared by the whole network, feeds a skip, or lands in the image itself.
    r"/head/Conv$": "its output F0 is the long skip to the upsampler: 8-bit F0 noise reaches every output pixel "
                    "(0.07 dB on Set5 for this conv alone)",
    r"/fusion/": "group forwarding: the 1x1 and 3x3 convs that merge every group's output, added to F0 "
                 "(0.04 and 0.05 dB alone)",
    r"/upsampler/[^/]+/Conv$": "its output is pixel-shuffled straight into output resolution "
                               "(0.09 dB alone, the most sensitive conv)",
    r"/tail/Conv$": "its output is the image, less the RGB mean: 8-bit steps of its range are visible grey levels "
                    "(0.05 dB alone)",
    r"/blocks\.0/conv1/Conv$": "the first conv of each group reads the group's input, the residual stream at its "
                               "widest; with the four above kept, keeping these too took the cost from 0.10 to 0.06 dB "
                               "(bsr-tiny-x2; bsr-lite-x2 0.09 to 0.06)",
    r"/groups\.\d+/conv/Conv$": "each group's closing conv, added to the group's skip: with all the above kept, these "
                                "took the cost from 0.06 to 0.04 dB (Set14: 0.02 to 0.015) on both models",
}
"""Convolutions left in float32, with why: what `QuantSettings.fp32_nodes` defaults to."""


@dataclass(frozen=True)
class QuantSettings:
    """How `quantize_graph` quantizes; written into the int8 graph's metadata as it is (`to_dict`)."""

    calibrate_method: str = "MinMax"
    """ONNX Runtime's CalibrationMethod name: MinMax (each activation's full calibrated range), Percentile or Entropy
    (clip outliers). Measured on bsr-tiny-x2 (Set5): Entropy gave MinMax's ranges; Percentile cost 0.02 dB less on
    average, but it clips the rare large values of strong edges into local errors, and its histograms of every
    activation took 6 GB and minutes for bsr-lite-x2. MinMax it is."""
    activation_type: str = "QUInt8"
    """uint8 activations: the u8 x s8 kernels are ONNX Runtime's fast path on x86 (int8 activations: 1.5 times the
    float32 graph's time for bsr-tiny-x2 at 256x256 on this AVX2 CPU, uint8 0.9 times)."""
    weight_type: str = "QInt8"
    per_channel: bool = True
    """One weight scale per output channel: a layer's channels differ in range by an order of magnitude."""
    reduce_range: bool = True
    """7-bit weights. On x86 CPUs without VNNI (AVX2: VPMADDUBSW) uint8 x int8 products are summed in pairs into a
    saturating int16; full 8-bit weights overflow it (measured: -8 dB on Set5 for bsr-tiny-x2 on an AVX2 EPYC). With
    7 bits no sum can saturate, so the integers are exact on every CPU, VNNI or not, and the cost measured on one
    machine holds on another."""
    op_types: tuple[str, ...] = ("Conv",)
    """Only convolutions are quantized: the residual adds, the attention and the mirror/clamp wrapper stay float32.
    Quantizing the adds too (8-bit residual stream) cost 0.22 dB on Set5 for bsr-tiny-x2 instead of 0.11."""
    fp32_nodes: tuple[str, ...] = tuple(FP32_NODES)
    """Regular expressions of node names kept in float32 (`FP32_NODES` says why for each)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CalibrationSet:
    """The LR patches a graph is calibrated on, and where they came from (recorded in the int8 graph's metadata)."""

    patches: list[np.ndarray] = field(repr=False)
    """Each (1, 3, size, size) float32 RGB in [0, 1], NCHW: the graph's input convention."""
    source: str
    images: list[str]
    """The images the patches were cut from, relative to `source`, in the order they were used."""
    patch_size: int
    seed: int

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "images": self.images, "num_images": len(set(self.images)),
                "num_patches": len(self.patches), "patch_size": self.patch_size, "seed": self.seed}


def calibration_patches(folder: str | os.PathLike | Sequence[str | os.PathLike], *, count: int = 64, size: int = 64,
                        seed: int = 0, source: str | None = None) -> CalibrationSet:
    """`count` square patches of `size` pixels from the images of `folder` (searched recursively) or of a list of
    image files: a seeded permutation of the images sorted by path, cycled if there are fewer images than patches,
    one patch at a seeded corner of each (the whole image, mirrored out to `size`, if it is smaller).

    Raises:
        ValueError: no image files, or an image that cannot be read (named).
    """
    if isinstance(folder, (str, os.PathLike)):
        root = Path(folder)
        if not root.is_dir():
            raise ValueError(f"calibration folder {root} does not exist")
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        names = [p.relative_to(root).as_posix() for p in files]
        source = source or str(root)
    else:
        files = sorted(Path(p) for p in folder)
        names = [p.name for p in files]
        source = source or "files"
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {source} to calibrate int8 on")
    if count < 1 or size < 8:
        raise ValueError(f"calibration needs at least 1 patch of at least 8 pixels, got {count} of {size}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(files))
    patches, used = [], []
    decoded: dict[int, np.ndarray] = {}
    for i in range(count):
        k = int(order[i % len(files)])
        if k not in decoded:
            decoded[k] = _read_rgb(files[k])
        rgb = decoded[k]  # (H, W, 3) uint8
        h, w = rgb.shape[:2]
        top = int(rng.integers(0, h - size + 1)) if h > size else 0
        left = int(rng.integers(0, w - size + 1)) if w > size else 0
        patch = rgb[top : top + size, left : left + size]
        if patch.shape[:2] != (size, size):  # a small image: mirrored out to the patch size
            patch = np.pad(patch, ((0, size - patch.shape[0]), (0, size - patch.shape[1]), (0, 0)), mode="symmetric")
        patches.append(np.ascontiguousarray(patch.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0)
        used.append(names[k])
    return CalibrationSet(patches, source, used, size, seed)


def _read_rgb(path: Path) -> np.ndarray:
    from ..core import ImageReadError

    try:
        img = open_image(path)
    except ImageReadError as err:
        raise ValueError(f"calibration image {path}: {err}") from err
    try:
        return to_uint8(img, colour="rgb")  # (H, W, 3): grey images fed as the network is fed them
    except ImageReadError as err:
        raise ValueError(f"calibration image {path}: {err}") from err
    finally:
        img.close()


def fp32_node_names(graph: Any, patterns: Sequence[str]) -> list[str]:
    """The Conv nodes of `graph` (an onnx.ModelProto) whose names match any of `patterns`."""
    compiled = [re.compile(p) for p in patterns]
    return [n.name for n in graph.graph.node if n.op_type == "Conv" and any(c.search(n.name) for c in compiled)]


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """The quantizer logs advice through the root logger ("Please consider to run pre-processing before
    quantization": shape inference and graph fusions, which it reports as optional and which ONNX Runtime's session
    does at load anyway); a command-line user would take it for a problem. Its warnings are held back meanwhile."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


class _Patches:
    """ONNX Runtime's CalibrationDataReader protocol over the patches, fed in batches of about CALIBRATION_BATCH_PIXELS:
    MinMax keeps the minimum and maximum over everything it is fed, so batches give the ranges single patches give,
    and one run of the calibration graph (every activation an output) per batch instead of per patch cut bsr-lite's
    calibration from 11 s to a fraction of that."""

    def __init__(self, patches: list[np.ndarray]):
        per_batch = max(1, CALIBRATION_BATCH_PIXELS // max(p.shape[-1] * p.shape[-2] for p in patches))
        batches = [np.concatenate(patches[i : i + per_batch]) for i in range(0, len(patches), per_batch)]
        self._it: Iterator[np.ndarray] = iter(batches)  # each (n, 3, size, size)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {INPUT_NAME: x}


CALIBRATION_BATCH_PIXELS = 64 * 64 * 16


def quantize_graph(fp32: bytes | str | os.PathLike, target: str | os.PathLike, calibration: CalibrationSet,
                   settings: QuantSettings | None = None) -> list[str]:
    """Write the int8 (QDQ) version of the float32 graph `fp32` (its bytes or file) to `target`, calibrated on
    `calibration`. Returns the names of the convolutions kept in float32.

    Raises:
        MissingExtraError: onnx or onnxruntime is not installed.
        ValueError: a node pattern matches no convolution (a graph this was not measured on).
    """
    onnx = require("onnx", "onnxruntime", extra="export", what="int8 quantization")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    settings = settings or QuantSettings()
    graph = onnx.load_from_string(fp32) if isinstance(fp32, bytes) else onnx.load(str(fp32))
    kept = fp32_node_names(graph, settings.fp32_nodes)
    unmatched = [p for p in settings.fp32_nodes if not any(re.search(p, n) for n in kept)]
    if unmatched:
        raise ValueError(f"no convolution of the graph matches {', '.join(unmatched)}: int8 is measured for BSR graphs "
                         "as bsr_hub traces them (inference/onnx.py)")
    # The reader must be a CalibrationDataReader, a class of onnxruntime, which this module imports only here.
    reader = type("PatchReader", (_Patches, CalibrationDataReader), {})(calibration.patches)
    with tempfile.TemporaryDirectory(prefix="bsr-int8-") as work, _quiet_root_logger():
        source = Path(work) / "fp32.onnx"  # the quantizer reads a file, and writes its augmented copy beside it
        onnx.save(graph, str(source))
        quantize_static(
            str(source), str(target), reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(settings.op_types),
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            activation_type=getattr(QuantType, settings.activation_type),
            weight_type=getattr(QuantType, settings.weight_type),
            nodes_to_exclude=kept,
            calibrate_method=getattr(CalibrationMethod, settings.calibrate_method),
        )
    return kept


BACKEND_CALIBRATION = {"count": 64, "size": 32, "seed": 0}
"""The calibration of `backend="onnxruntime-int8"`: 64 patches of 32 pixels from the bundled example photos, so that
the first call costs seconds, not the minute a calibration on 64x64 patches of bsr-lite takes on 2 cores. Many small
patches rather than few large ones: MinMax ranges are set by the rarest pixels (strong edges, specular highlights),
and an activation beyond its range is clipped into a visible error (bsr-tiny-x2 on coffee.png: 16 patches of 48
pixels left 955 output pixels more than 8 grey levels from float32, these 64 of 32 pixels 89)."""


def quantize_for_backend(fp32: bytes) -> bytes:
    """The int8 graph of `fp32` (a float32 graph's bytes, as backends.py traces it), calibrated on the bundled
    example photos (`BACKEND_CALIBRATION`), as bytes for an InferenceSession."""
    from ..core import example_images

    calibration = calibration_patches(example_images(), source="bsr_hub/example_images", **BACKEND_CALIBRATION)
    with tempfile.TemporaryDirectory(prefix="bsr-int8-") as work:
        target = Path(work) / "int8.onnx"
        quantize_graph(fp32, target, calibration)
        return target.read_bytes()
