"""ONNX graphs that `upscale`'s ONNX Runtime backends built, kept in bsr_hub's cache folder for later processes.

Building the graph is most of what `backend="onnxruntime"` costs a process before its first pass: importing `onnx`
and tracing the network, where the session itself is quick (bench/results/first_upscale.md; the int8 graph adds a
calibration of seconds). A command-line user pays that on every `bsr-hub upscale`, so the bytes are written once to
<cache folder>/onnx/ (core.cache_folder) under a key of everything they depend on (`graph_key`: the weights themselves, the architecture, the code that defines and exports
it, the bsr_hub, torch and, for int8, onnxruntime versions) and read back by later processes. A file that cannot be
read or written costs a build, never an error; one that ONNX Runtime refuses (damaged) is built again and replaced
(backends.py).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from ..core import __version__, cache_folder, write_atomically
from .onnx import OPSET

logger = logging.getLogger(__name__)

FOLDER = "onnx"
MAX_GRAPHS = 16
"""Graphs kept (the most recently used): a few MB each (1.9 MB for bsr-lite), one per weights and backend."""


def _source_files(model: torch.nn.Module, backend: str) -> list[str]:
    """The files of the code the graph comes from: the modules defining the model's classes (torch's own are covered by
    its version), the export settings, and the quantizer for int8. bsr_hub's version alone would not do: it stays
    the same while a checkout's code changes, and ONNX Runtime would run a stale graph without complaint."""
    from . import onnx as export_settings

    names = {type(m).__module__ for m in model.modules()} | {export_settings.__name__}
    if backend.endswith("int8"):
        names.add(__name__.rsplit(".", 1)[0] + ".quantize")
    files = []
    for name in sorted(n for n in names if n.split(".")[0] != "torch"):
        # Imported here for sure, so that the key is the same whether or not a build has run in this process.
        path = getattr(importlib.import_module(name), "__file__", None)
        if path:
            files.append(path)
    return files


def graph_key(model: torch.nn.Module, backend: str) -> str:
    """A digest of what the graph of `model` for `backend` depends on: every parameter and buffer's name, dtype, shape
    and values (and any other state, by its repr), the module's class and config, the code that defines and exports
    it, the opset, and the versions that build it."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    header = {"backend": backend, "class": f"{type(model).__module__}.{type(model).__qualname__}", "opset": OPSET,
              "bsr_hub": __version__, "torch": torch.__version__,
              "config": config.to_dict() if config is not None and hasattr(config, "to_dict") else repr(config)}
    if backend.endswith("int8"):  # the quantizer is onnxruntime's (installed as onnxruntime, -gpu, -openvino...)
        import onnxruntime

        header["onnxruntime"] = onnxruntime.__version__
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    for path in _source_files(model, backend):
        digest.update(Path(path).read_bytes())
    for name, value in model.state_dict().items():
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:  # extra state (Module.get_extra_state): whatever the module keeps beside its tensors
            digest.update(f"{name}:{value!r}".encode())
    return digest.hexdigest()[:32]


def cached_graph(model: torch.nn.Module, backend: str, build: Callable[[], bytes]) -> tuple[bytes, Path | None]:
    """The graph's bytes: read from the cache when there, else `build()` and stored. Also the file they were read
    from (None when built now), so that a caller whose runtime refuses them can build them again and `keep` those.
    A key that cannot be computed (state that does not hash) or a folder that cannot be written costs a build, never
    an error."""
    try:
        path = cache_folder() / FOLDER / f"{backend}-{graph_key(model, backend)}.onnx"
    except (TypeError, ValueError, RuntimeError, AttributeError, OSError) as err:  # state it cannot digest
        logger.warning("not caching the ONNX graph of %s (%s)", type(model).__name__, err)
        return build(), None
    try:
        graph = path.read_bytes()
        os.utime(path)  # used now: the pruning keeps the most recently used
        return graph, path
    except OSError:
        pass
    graph = build()
    keep(path, graph)
    return graph, None


def keep(path: Path, graph: bytes) -> None:
    """Write `graph` to `path` (replacing what is there) and prune the folder to the MAX_GRAPHS most recently used."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda tmp: Path(tmp).write_bytes(graph))
        kept = sorted((p for p in path.parent.glob("*.onnx") if p != path), key=_mtime, reverse=True)
        for old in kept[MAX_GRAPHS - 1:]:
            old.unlink(missing_ok=True)
    except OSError as err:
        logger.warning("could not keep the ONNX graph in %s (%s); later processes will build it again", path, err)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile by another process's pruning
        return 0.0
