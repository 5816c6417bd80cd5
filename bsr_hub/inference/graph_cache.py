"""ONNX graphs that `upscale`'s ONNX Runtime backends built, kept in bsr_hub's cache folder for later processes.

Building the graph is most of what `backend="onnxruntime"` costs a process before its first pass: importing `onnx`
and tracing the network, where the session itself is quick (bench/results/first_upscale.md; the int8 graph adds a
calibration of seconds). A command-line user pays that on every
`bsr-hub upscale`, so the bytes are written once to <cache folder>/onnx/ (core.cache_folder) under a key of
everything they depend on (`graph_key`: the weights themselves, the architecture, bsr_hub, torch and, for int8,
onnxruntime versions) and read back by later processes. A file that cannot be read or written costs a build, never
an error; one that ONNX Runtime refuses (damaged) is built again and replaced (backends.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch

from ..core import __version__, cache_folder, write_atomically
from .onnx import OPSET

logger = logging.getLogger(__name__)

FOLDER = "onnx"
MAX_GRAPHS = 16
"""Graphs kept (the most recently written): a few MB each (1.9 MB for bsr-lite), one per weights and backend."""


def graph_key(model: torch.nn.Module, backend: str) -> str:
    """A digest of what the graph of `model` for `backend` depends on: every parameter and buffer's name, dtype, shape
    and values, the module's class and config, the export settings and the versions that build it."""
    import importlib.metadata

    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    header = {"backend": backend, "class": type(model).__qualname__, "opset": OPSET, "bsr_hub": __version__,
              "torch": torch.__version__,
              "config": config.to_dict() if config is not None and hasattr(config, "to_dict") else None}
    if backend.endswith("int8"):  # the quantizer is onnxruntime's
        header["onnxruntime"] = importlib.metadata.version("onnxruntime")
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def graph_path(model: torch.nn.Module, backend: str) -> Path:
    return cache_folder() / FOLDER / f"{backend}-{graph_key(model, backend)}.onnx"


def cached_graph(model: torch.nn.Module, backend: str, build: Callable[[], bytes]) -> tuple[bytes, Path | None]:
    """The graph's bytes: read from the cache when there, else `build()` and stored. Also the file they were read
    from (None when built now), so that a caller whose runtime refuses them can `forget` it and build again."""
    path = graph_path(model, backend)
    with contextlib.suppress(OSError):
        return path.read_bytes(), path
    graph = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda tmp: Path(tmp).write_bytes(graph))
        kept = sorted(path.parent.glob("*.onnx"), key=_mtime, reverse=True)
        for old in kept[MAX_GRAPHS:]:
            old.unlink(missing_ok=True)
    except OSError as err:
        logger.warning("could not keep the ONNX graph in %s (%s); later processes will build it again", path, err)
    return graph, None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile by another process's pruning
        return 0.0


def forget(path: Path) -> None:
    """Remove a cached graph (one its runtime refused)."""
    with contextlib.suppress(OSError):
        path.unlink()
