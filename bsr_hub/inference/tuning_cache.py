"""What an autotune table is stored under, and the file it is stored in: the machine and library versions
(`machine_key`), the network's architecture (`model_key`), every candidate's probe (`table_key`), and the JSON file in
the user's cache folder (`cache_path`, `read_entries`). autotune.py measures the tables and decides what to store.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
from pathlib import Path
from typing import Any

import torch

from ..core import __version__, cache_folder, describe_cpu

logger = logging.getLogger(__name__)

CACHE_FILE = "autotune.json"
FORMAT_VERSION = 4
"""4: times taken with a pause after ONNX Runtime's pass (autotune.SETTLE_AFTER): a table of 3 timed the candidate after
it on cores its threads still spun on, so it is measured again rather than trusted. 3: keyed by every candidate's
probe (2: one shape for all; 1: "jit NCHW" and "jit channels_last")."""
MAX_ENTRIES = 256
"""Entries kept in the file (the most recent): one per machine setting, model and shape, so it stays small."""


def cache_path() -> Path:
    """The cache file: autotune.json in bsr_hub's cache folder (core.cache_folder: $BSR_HUB_CACHE, else under
    $XDG_CACHE_HOME/bsr_hub or ~/.cache/bsr_hub)."""
    return cache_folder() / CACHE_FILE


@functools.cache  # read once per process: metadata lookups scan site-packages, and every large upscale asks
def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_key() -> dict[str, Any]:
    """What makes the same network's timings differ between runs: the CPU (model and the flags that select kernels:
    two "AMD EPYC" of this project differ in AVX-512), torch's thread count and the versions of what runs it."""
    return {"cpu": describe_cpu(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "onnxruntime": _version("onnxruntime"), "bsr_hub": __version__}


def model_key(model: torch.nn.Module) -> str:
    """The network's architecture, not its weights (two checkpoints of one preset run at the same speed): its config
    when it has one (a BSR network), else its class and parameter shapes."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        text = json.dumps(config.to_dict(), sort_keys=True, default=str)
        label = getattr(config, "preset", None) or "custom"
    else:
        text = json.dumps([type(model).__qualname__] + [[n, list(p.shape)] for n, p in model.named_parameters()])
        label = type(model).__name__
    return f"{label}:{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def table_key(model: torch.nn.Module, probes: dict[str, Any]) -> dict[str, Any]:
    """What a table is stored under: the machine, the model and every candidate's probe shape (`probes`: name ->
    autotune.Probe). One table is always
    measured together, in one process at one moment: times taken under different loads are never weighed against
    each other."""
    return {**machine_key(), "model": model_key(model), "dtype": str(model.dtype).removeprefix("torch."),
            "probes": {name: list(p.shape) for name, p in sorted(probes.items())}}


def key_text(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True)


def read_entries(path: Path) -> dict[str, Any]:
    """The file's entries; {} for a missing, unreadable or corrupt file (it is measured again and rewritten)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        logger.warning("ignoring the unreadable autotune cache %s (%s); measuring again", path, err)
        return {}
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]
