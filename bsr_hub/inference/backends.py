"""How the network is run: eager PyTorch (in float32 or under bf16 autocast), a frozen TorchScript graph,
torch.compile or ONNX Runtime.

`resolve_backend` turns the caller's `backend` ("auto" by default, from measurements:
bench/results/fast_path.md) into one of BACKENDS, and `get_runner` builds that backend's callable once per
model and weights and caches it.
"""

from __future__ import annotations

import copy
import io
import threading
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import torch

from .graph_cache import cached_graph
from .graph_cache import keep as keep_graph
from .onnx import INPUT_NAME, trace_to_onnx
from .tiling import AUTO

BACKENDS = ("eager", "jit", "compile", "onnxruntime", "onnxruntime-int8", "eager-bf16")
"""eager: the nn.Module as it is. eager-bf16: the float32 module under bf16 autocast, where the device computes bf16
natively (a CPU with avx512_bf16 or AMX, a GPU with bf16); BSRNetwork keeps its output conv in float32 there. jit: a
traced TorchScript graph, frozen (weights become constants) and passed through torch.jit.optimize_for_inference (conv
+ ReLU fusion, MKL-DNN layouts). compile: torch.compile with the inductor backend and freezing; compiled once per
input shape (about a minute on this CPU), reused after. onnxruntime: the model exported to ONNX (opset 17, any height
and width) and run by ONNX Runtime's CPU provider; needs the `export` extra. onnxruntime-int8: that graph statically
quantized to int8 (quantize.py), calibrated on patches of the bundled example photos when first built; lossy
(bench/results/int8.md measures its cost), so only when named: "auto" never picks it."""

CPU_BACKEND_PREFERENCE = ("onnxruntime", "jit", "eager")
"""What `backend="auto"` runs on the CPU when nothing was measured (BSR_HUB_AUTOTUNE=0; otherwise autotune.py
measures eager, jit, onnxruntime and, where the CPU has native bf16, eager-bf16 on this machine and runs the
fastest): the first of these that is available
(onnxruntime only with the `export` extra). The order comes from one machine and does not hold on another: on an
AVX-512 BF16 EPYC (issue 27) eager beat jit and onnxruntime at 1024x1024. bench/fast_path.py times every backend
side by side on bsr-lite-x2. With training jobs on the cores, ONNX Runtime took about a third of eager's and jit's time on the same tiles (bench/results/fast_path_384.md); on the
quieter machine the backends were within 25 % of each other at 1024x1024 (bench/results/fast_path.md: compile 3.4,
onnxruntime 4.0, eager channels_last 4.3, jit 4.7 s). jit and eager are within noise; jit comes first as it fuses
conv + ReLU. torch.compile, the fastest once built there, is left out of the default: its first call on each new
tile shape costs 12 s on the quiet machine and over 200 s under load, more than it saves on one image."""

# Built runners, per model: rebuilding a frozen graph or an ONNX session costs seconds, compiling a minute.
_RUNNERS: weakref.WeakKeyDictionary[torch.nn.Module, dict] = weakref.WeakKeyDictionary()
_RUNNERS_LOCK = threading.Lock()


def _weights_key(model: torch.nn.Module) -> tuple:
    # A frozen graph or an exported model holds a copy of the weights: any in-place change (an optimizer step bumps
    # `_version`) or a move (new storage) must rebuild it rather than silently run the old weights.
    return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in model.parameters())


def _onnxruntime_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def _has_learned_weights(model: Any) -> bool:
    """Whether "auto" may build a graph backend for `model` on the CPU: only for a module with learned weights
    (any parameter), such as a BSR network. Inference knows no model class, so it asks what the module holds:
    the bicubic baseline (evaluation.bicubic.BicubicModel) has no parameter, only a buffer that carries its
    device, and a fixed interpolation gains nothing from a frozen graph or an export, so it stays eager."""
    return isinstance(model, torch.nn.Module) and next(model.parameters(), None) is not None


CPU_BUILD_MIN_PIXELS = 256 * 256
"""`backend="auto"` builds its graph (an ONNX export or a frozen trace: one to a few seconds, once per model) only for
inputs of at least this many LR pixels, or once it is built anyway: a smaller image runs eager in less time."""


def resolve_backend(model: torch.nn.Module, backend: str, pixels: int | None = None) -> str:
    """"auto" -> eager off the CPU (and for a bf16 model on it), else the first available of CPU_BACKEND_PREFERENCE
    (eager for an input of fewer than CPU_BUILD_MIN_PIXELS `pixels`); names are checked. This is the fixed rule,
    for where nothing was measured: on the CPU, `upscale` first asks autotune.choice_for, which measures the
    backends on this machine once per model and set of probes (each backend's pass for the input) and then keeps
    that table for the life of the process (and in the cache file for later ones). Either way the choice for an
    input never depends on what earlier calls happened to build: the backends agree only to within rounding, and
    the same image must give the same result whatever was upscaled before in the process."""
    if backend not in (AUTO, *BACKENDS):
        raise ValueError(f"backend must be 'auto' or one of {', '.join(BACKENDS)}; got {backend!r}")
    if backend == AUTO:
        if model.device.type != "cpu" or not _has_learned_weights(model) or model.dtype != torch.float32:
            # On a GPU eager channels_last is what was measured; other modules (bicubic) stay as they are; bf16 on a
            # CPU runs eager, as measured (issue 27): the graph backends were built and timed for float32.
            return "eager"
        available = {"eager": True, "jit": True, "compile": True, "onnxruntime": _onnxruntime_available()}
        preferred = next(b for b in CPU_BACKEND_PREFERENCE if available[b])
        small = pixels is not None and pixels < CPU_BUILD_MIN_PIXELS
        return "eager" if small else preferred
    if backend == "eager-bf16":
        check_native_bf16(model)
    if backend in ("onnxruntime", "onnxruntime-int8") and model.device.type != "cpu":
        raise ValueError(f"backend={backend!r} runs on the CPU only; the model is on {model.device}")
    if backend in ("onnxruntime", "onnxruntime-int8"):
        from ..core import require

        require("onnxruntime", "onnx", extra="export", what=f"backend={backend!r}")
    return backend


def check_native_bf16(model: torch.nn.Module) -> None:
    """ValueError, saying why, unless `model` is a float32 network that keeps its output in float32 under autocast
    (`output_fp32_under_autocast`: the bound on bf16's cost rests on it) on a device that computes bf16 natively
    (elsewhere bf16 is emulated: 10 to 200 times slower than float32 on a CPU)."""
    from ..core import cpu

    if model.dtype != torch.float32:
        raise ValueError(f"backend='eager-bf16' runs a float32 model under bf16 autocast; this one is {model.dtype}")
    if not getattr(model, "output_fp32_under_autocast", False):
        raise ValueError(f"backend='eager-bf16' needs a network that computes its output in float32 under autocast "
                         f"(output_fp32_under_autocast, as BSRNetwork does); {type(model).__name__} does not say so: "
                         "model.to(torch.bfloat16) runs every layer in bf16")
    if cpu.native_bf16(model.device):
        return
    if model.device.type == "cpu":
        raise ValueError(f"backend='eager-bf16': this CPU ({cpu.describe_cpu()}) has no native bf16 "
                         f"({' or '.join(cpu.NATIVE_BF16_FLAGS)}), where bf16 runs 10 to 200 times slower than float32")
    where = torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else str(model.device)
    raise ValueError(f"backend='eager-bf16': {where} has no native bf16")


def _bf16_autocast_runner(model: torch.nn.Module) -> Callable:
    """A private copy of `model` whose convs hold their weights in bf16, cast once (autocast alone would cast the
    float32 weights at every call; bench/bf16_cost.py times both), run under bf16 autocast. The model's
    `output_conv` and its buffers (the RGB mean) stay float32: the network computes its output in float32."""
    copy_ = copy.deepcopy(model).eval()
    keep = getattr(copy_, "output_conv", None)
    for module in copy_.modules():
        if isinstance(module, torch.nn.Conv2d) and module is not keep:
            module.to(torch.bfloat16)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return copy_(x)

    return run


LAYOUT_FREE_BACKENDS = ("jit", "onnxruntime", "onnxruntime-int8")
"""Backends whose speed and result do not depend on the input's memory layout, so one build serves both: ONNX
Runtime takes NCHW numpy whatever it is given, and the frozen TorchScript graph reorders its input into oneDNN's
blocked layout at its first convolution: NCHW and channels_last inputs ran it within 1 % of each other
(bench/results/jit_layout.md). The layout it is traced in matters a little more (bsr-lite's graph traced on a
channels_last example ran 5 % faster on either input there; bsr-tiny's the same), so it is traced in that one."""


def _build_runner(model: torch.nn.Module, backend: str, memory_format: torch.memory_format) -> Callable:
    if backend in LAYOUT_FREE_BACKENDS:
        # Built once for either layout (LAYOUT_FREE_BACKENDS); the ONNX export makes its example contiguous itself.
        memory_format = torch.channels_last
    if backend == "eager-bf16":
        return _bf16_autocast_runner(model)
    example = torch.rand(1, 3, 32, 32, device=model.device, dtype=model.dtype).contiguous(memory_format=memory_format)
    if backend == "jit":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice: the graph is what we want here
            traced = torch.jit.trace(copy.deepcopy(model).eval(), example, check_trace=False)
            return torch.jit.optimize_for_inference(torch.jit.freeze(traced))
    if backend == "compile":
        # A private copy: the cache must not keep the caller's model alive, and freezing treats weights as constants.
        return torch.compile(copy.deepcopy(model).eval(), backend="inductor", dynamic=False, options={"freezing": True})
    if backend in ("onnxruntime", "onnxruntime-int8"):
        from ..core import require

        ort = require("onnxruntime", "onnx", extra="export", what=f"backend={backend!r}")
        if backend == "onnxruntime-int8" and model.dtype != torch.float32:
            raise ValueError(f"backend='onnxruntime-int8' quantizes a float32 model; this one is {model.dtype}")

        def build() -> bytes:
            buffer = io.BytesIO()
            try:
                trace_to_onnx(model, example.contiguous(), buffer)
            except Exception as err:  # torch reports a missing `onnx` as its own error type
                raise ImportError(f"backend={backend!r} could not export the model ({err}); "
                                  "pip install 'bsr-hub[export]'") from err
            if backend == "onnxruntime-int8":
                from .quantize import quantize_for_backend

                return quantize_for_backend(buffer.getvalue())  # calibrated on the bundled photos: seconds
            return buffer.getvalue()

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the same threads PyTorch would use
        # Built once per weights on this machine and kept in the cache folder: a later process skips importing
        # `onnx` and tracing (graph_cache.py).
        graph, cached = cached_graph(model, backend, build)
        try:
            session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        except Exception:  # onnxruntime's own error types: a damaged cache file is built again and replaced
            if cached is None:
                raise
            graph = build()
            keep_graph(cached, graph)
            session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

        def run(x: torch.Tensor) -> torch.Tensor:
            (y,) = session.run(None, {INPUT_NAME: x.detach().float().contiguous().numpy()})
            return torch.from_numpy(y)

        return run
    raise ValueError(backend)


def get_runner(model: torch.nn.Module, backend: str, memory_format: torch.memory_format) -> Callable:
    """The callable that runs `model` with `backend` (resolved, not "auto"): built once, reused while the weights,
    device and dtype stay the same."""
    if backend == "eager":
        return model
    # eager-bf16's copy takes either layout: one copy, whatever the layout asked for.
    layout_free = backend in LAYOUT_FREE_BACKENDS or backend == "eager-bf16"
    key = (backend, None if layout_free else memory_format, _weights_key(model))
    # One build at a time: concurrent first calls (a demo's simultaneous requests) would otherwise run
    # torch.onnx.export in parallel, which it refuses ("GLOBALS.in_onnx_export must be False").
    with _RUNNERS_LOCK:
        runners = _RUNNERS.setdefault(model, {})
        if key not in runners:
            # A graph built for other weights holds a full copy of them: dropped. Graphs of these weights in other
            # backends or layouts stay, so that the measured choice (autotune.py) is not built a second time.
            for stale in [k for k in runners if k[2] != key[2]]:
                del runners[stale]
            runners[key] = _build_runner(model, backend, memory_format)
        return runners[key]
