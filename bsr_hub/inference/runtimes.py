"""Super-resolution models that are files for another runtime, as `Upscaler`s, so that `bsr-hub eval` scores them
through the same `upscale` (tiling, mirrored border, self-ensemble) and the same protocol as a BSR network:

    OnnxRuntimeModel     an ONNX graph run by ONNX Runtime's CPU provider. Input float32 RGB in [0, 1], NCHW, the
                         convention of `bsr-hub export` (a float16 input is fed float16); any height and width, or
                         a fixed size, which is then covered in windows of that size.
    OpenCVDnnModel       the same convention run by OpenCV's dnn module (`cv2.dnn.readNet`: ONNX, and whatever
                         other formats the installed OpenCV reads).
    OpenCVSuperResModel  an OpenCV dnn_superres model (`cv2.dnn_superres`, in opencv-contrib only): uint8 BGR into
                         `DnnSuperResImpl.upsample`, which applies its algorithm's own processing (edsr: BGR less
                         the DIV2K mean; espcn, fsrcnn, lapsrn: the Y of YCrCb as NHWC, chroma resized
                         bilinearly), uint8 BGR out.

All run on the CPU with `threads` threads (default: PyTorch's, so that a leaderboard times every runtime alike).

What OpenCV 5.1 can and cannot load (measured with opencv-contrib-python-headless 5.1.0.95; the evidence is in
bench/results/leaderboard.md): `DnnSuperResImpl.readModel` hands every file to the ONNX importer, so the classic
TensorFlow `.pb` models (FSRCNN_x2.pb, ...) fail with `model_proto.has_graph()`; an ONNX file loads, and runs when
it follows the algorithm's convention above. A `bsr-hub export` graph loads but does not run there: its input
convention is not dnn_superres's, and creating a DnnSuperResImpl registers dnn_superres's own DepthToSpace layer
(TensorFlow's order) for every net read after it in the process, which PixelShuffle's DepthToSpace does not survive
(76x88 out for a 20x24 input at x2). It runs in OpenCV as an `OpenCVDnnModel`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core import MissingExtraError, require
from .api import upscale
from .onnx import METADATA_BORDER_CONTEXT, METADATA_SCALE
from .protocol import PixelMemory
from .tiling import BORDER_CONTEXT, _mirror_index

DNN_SUPERRES_ALGORITHMS = ("edsr", "espcn", "fsrcnn", "lapsrn")
"""The algorithm names `DnnSuperResImpl.setModel` knows: each picks its pre- and post-processing."""

NOMINAL_MEMORY = PixelMemory(feature_map=4, peak=4 * 64)
"""What these models tell `plan_tiling`: their runtimes hold memory PyTorch cannot see or estimate, so `tile="auto"`
runs whole images up to about 2 megapixels on the CPU (4 tiles of 724 px) and tiles larger ones."""

PROBE_SIZE = 32
"""Side of the input every model is run on once when it is loaded, to check its scale before any scoring."""


@dataclass(frozen=True)
class GraphFacts:
    """What an ONNX file says about itself: `bsr-hub export` writes the scale and the border it mirrors itself into
    the graph's metadata; other files may say nothing (None)."""

    scale: int | None
    border_context: int
    """LR pixels `upscale` mirrors beyond each border before calling the graph: 0 for a graph that does it itself."""
    parameters: int | None
    """The sum of the sizes of the graph's initializers: its weights, and any constant tensors stored with them."""


def read_graph_facts(path: str | os.PathLike, *, required: bool = True) -> GraphFacts:
    """Read an ONNX file's metadata and initializers (needs `onnx`, the export extra).

    With `required=False` a missing `onnx` or a file that is not ONNX gives unknown facts instead of an error (an
    OpenCV model may be another format, and OpenCV needs no `onnx`).

    Raises:
        MissingExtraError: `onnx` is not installed (with `required`).
        ValueError: the file is not a readable ONNX model (with `required`).
    """
    unknown = GraphFacts(None, BORDER_CONTEXT, None)
    try:
        onnx = require("onnx", extra="export", what="reading an ONNX model")
    except MissingExtraError:
        if required:
            raise
        return unknown
    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError, an OSError, ... : all "not an ONNX file" to the user
        if required:
            raise ValueError(f"{path} is not a readable ONNX model ({_reason(err)})") from err
        return unknown
    props = {p.key: p.value for p in graph.metadata_props}
    mirrors_itself = bool(_metadata_int(props, METADATA_BORDER_CONTEXT))  # bsr-hub export's ClampedBSR
    parameters = sum(int(np.prod(t.dims, dtype=np.int64)) for t in graph.graph.initializer)
    scale = _metadata_int(props, METADATA_SCALE) or None  # a stated scale of 0 is no scale: --scale must say it
    return GraphFacts(scale, 0 if mirrors_itself else BORDER_CONTEXT, parameters)


def _metadata_int(props: dict[str, str], key: str) -> int | None:
    try:
        value = json.loads(props[key])
    except (KeyError, ValueError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _reason(err: BaseException) -> str:
    """An error's message in one line: its last non-empty line, where OpenCV and ONNX Runtime put the reason."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


class _FileModel:
    """What the three runtimes share: the file, the scale, the CPU and float32, the nominal memory, `upscale`, and
    the check of every output's size against the scale. A subclass runs one image in `_forward`."""

    kind = ""
    hint = ""
    """Said after a wrong output size: what this runtime feeds the model, and what to try instead."""

    def __init__(self, path: str | os.PathLike, scale: int, *, parameters: int | None, border_context: int,
                 threads: int | None):
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale!r}")
        self.path = str(path)
        self._scale = scale
        self.parameters = parameters
        self.border_context = border_context  # read by upscale (protocol.py)
        self.threads = threads or torch.get_num_threads()

    @property
    def scale(self) -> int:
        return self._scale

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def memory_per_input_pixel(self) -> PixelMemory:
        return NOMINAL_MEMORY

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) float RGB in [0, 1] -> (B, 3, h*s, w*s) float32, one image at a time (a graph may fix its
        batch at 1)."""
        x = x.detach().float().cpu()
        return torch.cat([self._forward(x[i : i + 1].contiguous()) for i in range(x.shape[0])])

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _checked(self, y: np.ndarray, x_shape: tuple[int, ...]) -> torch.Tensor:
        """The runtime's (1, 3, sh, sw) output as a tensor, or a ValueError that says what came back instead."""
        h, w = x_shape[-2:]
        want = (1, 3, h * self.scale, w * self.scale)
        if tuple(y.shape) != want:
            ratio = y.shape[-1] / w if y.ndim >= 2 else 0
            found = f" ({ratio:g} times the input)" if y.ndim == 4 and ratio == y.shape[-2] / h else ""
            raise ValueError(f"{self.path}: a {w}x{h} input came back as an array of shape {tuple(y.shape)}, not "
                             f"{want} for x{self.scale}{found}. {self.hint}".rstrip())
        return torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))

    def _probe(self) -> None:
        """Run one small input, so that a wrong scale or convention fails on loading, not after a benchmark."""
        self(torch.rand(1, 3, PROBE_SIZE, PROBE_SIZE, generator=torch.Generator().manual_seed(0)))

    def upscale(self, image: Any, **options: Any) -> Any:
        return upscale(self, image, **options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, scale={self.scale})"


class OnnxRuntimeModel(_FileModel):
    """An ONNX super-resolution graph in ONNX Runtime (CPU provider): float32 (or float16) RGB in [0, 1], NCHW."""

    kind = "onnxruntime"
    hint = ("ONNX Runtime feeds it float32 RGB in [0, 1], NCHW (bsr-hub export's convention) and expects the same "
            "layout back, scale times larger.")

    def __init__(self, path: str | os.PathLike, scale: int, *, parameters: int | None = None,
                 border_context: int = BORDER_CONTEXT, threads: int | None = None):
        super().__init__(path, scale, parameters=parameters, border_context=border_context, threads=threads)
        ort = require("onnxruntime", extra="export", what="an ONNX model")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        try:
            self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # ONNX Runtime's own error types (InvalidProtobuf, Fail, ...)
            raise ValueError(f"ONNX Runtime could not read {self.path}: {_reason(err)}") from err
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{self.path} has {len(inputs)} inputs; a super-resolution graph takes one image")
        self.input_name = inputs[0].name
        types = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
        if inputs[0].type not in types:
            raise ValueError(f"{self.path} takes {inputs[0].type}; bsr-hub eval feeds float32 (or float16) RGB in "
                             "[0, 1], NCHW")
        self.input_dtype = types[inputs[0].type]
        self.fixed_size = _fixed_size(self.path, inputs[0].shape)
        self._probe()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fixed_size == (None, None):
            return self._run(x)
        return in_fixed_windows(self._run, x, self.fixed_size, self.scale)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        (y, *_) = self.session.run(None, {self.input_name: x.numpy().astype(self.input_dtype, copy=False)})
        return self._checked(y, tuple(x.shape))


def _fixed_size(path: str, shape: list[Any]) -> tuple[int | None, int | None]:
    """The fixed (height, width) of an NCHW RGB input shape (None where dynamic); a ValueError for another layout."""
    if len(shape) != 4:
        raise ValueError(f"{path} takes a {len(shape)}-D input {shape}; bsr-hub eval feeds (1, 3, height, width)")
    batch, channels, *size = (d if isinstance(d, int) and d > 0 else None for d in shape)
    if channels != 3 and size[1] in (1, 3):
        raise ValueError(f"{path} takes {shape}, NHWC it seems; bsr-hub eval feeds RGB as (1, 3, height, width), "
                         "NCHW")
    if channels not in (None, 3):
        raise ValueError(f"{path} takes {channels} channels in dimension 1 of {shape}; bsr-hub eval feeds RGB, 3 "
                         "channels, NCHW (a Y-only model is not supported)")
    if batch not in (None, 1):
        raise ValueError(f"{path} fixes its batch at {batch}; bsr-hub eval feeds one image at a time")
    return size[0], size[1]


def _windows(length: int, size: int | None) -> list[tuple[int, int, int]]:
    """(start, keep_from, keep_to) of windows of `size` along an axis of `length` (a dynamic axis: one window of
    the whole length): each window's output is kept `margin` pixels away from its sides inside the image, and the
    kept spans cover the axis once, without blending."""
    if size is None or length <= size:
        return [(0, 0, length)]
    margin = min(BORDER_CONTEXT, (size - 1) // 4)
    starts = [*range(0, length - size, size - 2 * margin), length - size]
    spans, done = [], 0
    for i, start in enumerate(starts):
        end = length if i == len(starts) - 1 else start + size - margin
        spans.append((start, done, end))
        done = end
    return spans


def in_fixed_windows(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, size: tuple[int | None, int | None],
                     scale: int) -> torch.Tensor:
    """Run a graph with a fixed input size over (1, 3, h, w) of any size: windows of that size (an image smaller
    than the window is mirrored out to it), each output kept away from the window's inner sides (`_windows`)."""
    h, w = x.shape[-2:]
    height, width = size[0] or h, size[1] or w
    rows = _mirror_index(h, 0, max(height - h, 0))
    cols = _mirror_index(w, 0, max(width - w, 0))
    out = x.new_empty(x.shape[0], 3, h * scale, w * scale)
    for top, keep_top, keep_bottom in _windows(h, size[0]):
        for left, keep_left, keep_right in _windows(w, size[1]):
            window = x.index_select(-2, rows[top : top + height]).index_select(-1, cols[left : left + width])
            y = run(window.contiguous())  # (1, 3, height*s, width*s)
            out[:, :, keep_top * scale : keep_bottom * scale, keep_left * scale : keep_right * scale] = y[
                :, :, (keep_top - top) * scale : (keep_bottom - top) * scale,
                (keep_left - left) * scale : (keep_right - left) * scale,
            ]
    return out


def _opencv(what: str) -> Any:
    return require("cv2", extra="robustness", what=what)


class _OpenCVThreads:
    """OpenCV's thread count is process-wide: set it for one call and put it back."""

    def __init__(self, cv2: Any, threads: int):
        self.cv2, self.threads = cv2, threads

    def __enter__(self) -> None:
        self.before = self.cv2.getNumThreads()
        self.cv2.setNumThreads(self.threads)

    def __exit__(self, *exc: object) -> None:
        self.cv2.setNumThreads(self.before)


class OpenCVDnnModel(_FileModel):
    """A graph in OpenCV's dnn module (`cv2.dnn.readNet`), with bsr-hub export's convention: float32 RGB in [0, 1],
    NCHW in and out."""

    kind = "opencv-dnn"
    hint = ("OpenCV's dnn feeds it float32 RGB in [0, 1], NCHW (bsr-hub export's convention). If cv2.dnn_superres "
            "was used earlier in this process, its DepthToSpace layer replaced OpenCV's for every net read after it.")

    def __init__(self, path: str | os.PathLike, scale: int, *, parameters: int | None = None,
                 border_context: int = BORDER_CONTEXT, threads: int | None = None):
        super().__init__(path, scale, parameters=parameters, border_context=border_context, threads=threads)
        self.cv2 = _opencv("an OpenCV model (opencv:PATH)")
        try:
            self.net = self.cv2.dnn.readNet(self.path)
        except self.cv2.error as err:
            raise ValueError(f"OpenCV {self.cv2.__version__}'s dnn could not read {self.path}: {_reason(err)}") from err
        self._probe()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with _OpenCVThreads(self.cv2, self.threads):
            try:
                self.net.setInput(x.numpy())
                y = self.net.forward()
            except self.cv2.error as err:
                raise ValueError(f"OpenCV's dnn could not run {self.path}: {_reason(err)}") from err
        return self._checked(y, tuple(x.shape))


class OpenCVSuperResModel(_FileModel):
    """A model of OpenCV's dnn_superres module (opencv-contrib): `readModel(path)`, `setModel(algorithm, scale)`,
    `upsample` on the uint8 BGR image. The input is taken back to its uint8 values (exact: evaluation's LR is uint8)."""

    kind = "opencv-dnn_superres"

    def __init__(self, path: str | os.PathLike, algorithm: str, scale: int, *, parameters: int | None = None,
                 threads: int | None = None):
        super().__init__(path, scale, parameters=parameters, border_context=BORDER_CONTEXT, threads=threads)
        if algorithm not in DNN_SUPERRES_ALGORITHMS:
            raise ValueError(f"dnn_superres algorithm must be one of {', '.join(DNN_SUPERRES_ALGORITHMS)}, got "
                             f"{algorithm!r}")
        self.algorithm = algorithm
        self.hint = (f"dnn_superres ran it as '{algorithm}' (its own input convention; a bsr-hub export does not "
                     "follow it: score that as opencv:PATH).")
        cv2 = self.cv2 = _opencv("an OpenCV dnn_superres model")
        if not hasattr(cv2, "dnn_superres"):
            raise MissingExtraError(
                f"cv2.dnn_superres is not in the installed OpenCV {cv2.__version__}: it comes with "
                "opencv-contrib-python-headless (pip uninstall opencv-python-headless && pip install "
                "opencv-contrib-python-headless; both install the cv2 module, keep one)"
            )
        self.sr = cv2.dnn_superres.DnnSuperResImpl_create()
        try:
            self.sr.readModel(self.path)
        except cv2.error as err:
            why = ("; OpenCV 5 reads dnn_superres models as ONNX only (the classic TensorFlow .pb files need "
                   "OpenCV 4.x with contrib, or a conversion to ONNX)") if int(cv2.__version__.split(".")[0]) >= 5 else ""
            raise ValueError(f"OpenCV {cv2.__version__}'s dnn_superres could not read {self.path}: "
                             f"{_reason(err)}{why}") from err
        self.sr.setModel(algorithm, scale)
        self._probe()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        bgr = np.ascontiguousarray(torch.floor(x[0].clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0)
                                   .numpy()[:, :, ::-1])  # (h, w, 3) uint8 BGR
        with _OpenCVThreads(self.cv2, self.threads):
            try:
                y = self.sr.upsample(bgr)  # (h*s, w*s, 3) uint8 BGR, if the model follows the algorithm's convention
            except self.cv2.error as err:
                raise ValueError(f"OpenCV's dnn_superres could not run {self.path} as '{self.algorithm}': "
                                 f"{_reason(err)}") from err
        y = np.asarray(y)
        if y.ndim != 3 or y.shape[-1] != 3:
            return self._checked(y, tuple(x.shape))  # says what came back
        rgb = y[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255.0  # (1, 3, h*s, w*s)
        return self._checked(rgb, tuple(x.shape))
