"""Which backend and memory layout run the network fastest on this CPU: measured here, once, and remembered.

The fastest way differs from CPU to CPU. On the 2-core AVX2 machine of bench/results/fast_path.md ONNX Runtime won
on tiles; on an AVX-512 BF16 machine (issue 27) eager PyTorch beat TorchScript and ONNX Runtime, and channels_last
ran the raw forward in about half of NCHW's time, the opposite of the AVX2 machines. So `backend="auto"` on a CPU
does not follow a fixed order measured on one of them: the first time a model and a network input shape need a
choice (`choice_for`), each lossless candidate (TUNABLE_BACKENDS, eager in NCHW and in channels_last) is timed on
one input (`probe_shape`: a cache-sized tile, or a tile-sized part of a whole image, so that the measurement costs a
pass of one tile per candidate, not of the image), the fastest is used, and the table is written to a JSON file in
the user's cache folder (`cache_path`), keyed by what makes the timings differ (`machine_key`: CPU, threads, library
versions), so later processes start with it. Once a key has a table in a process, its choice is fixed for the life
of the process.

BSR_HUB_AUTOTUNE=0 turns the measuring off (the fixed order, backends.CPU_BACKEND_PREFERENCE); BSR_HUB_CACHE names
the folder of the file.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core import __version__, describe_cpu, write_text_atomically
from .backends import (
    CPU_BUILD_MIN_PIXELS,
    LAYOUT_FREE_BACKENDS,
    _has_learned_weights,
    _onnxruntime_available,
    get_runner,
)
from .tiling import AUTO, ONNXRUNTIME_TILE_FEATURE_BYTES, Tiling, cpu_tile_side

logger = logging.getLogger(__name__)

TUNABLE_BACKENDS = ("eager", "jit", "onnxruntime")
"""What the measurement may choose from: every backend whose output equals eager's to within float rounding. Left
out: "compile", whose first call on each input shape costs 12 s on a quiet machine and over 200 s under load
(bench/results/fast_path.md), more than tuning may spend; and any lossy backend (an int8 one is faster by giving up
accuracy, which only the caller may decide)."""

TUNE_ENV = "BSR_HUB_AUTOTUNE"
"""Set to 0 (or false, no, off) to skip the measurement: "auto" then follows backends.CPU_BACKEND_PREFERENCE."""

CACHE_ENV = "BSR_HUB_CACHE"
"""A folder for bsr_hub's cache files; default $XDG_CACHE_HOME/bsr_hub, else ~/.cache/bsr_hub (the XDG layout that
huggingface_hub's ~/.cache/huggingface also follows on every platform)."""

CACHE_FILE = "autotune.json"
FORMAT_VERSION = 2  # 2: one layout-free "jit" candidate where 1 had "jit NCHW" and "jit channels_last"
MAX_ENTRIES = 256
"""Entries kept in the file (the most recent): one per machine setting, model and shape, so it stays small."""

RETIME_WITHIN = 1.5
"""Each candidate is timed once on the probe; those within this factor of the fastest are timed once more and keep
the faster of their two. One pass is what a candidate costs, but a backend's first pass at a new input size can
carry one-off work (eager PyTorch sets up oneDNN's kernels per shape); a second pass for the contenders keeps that
from deciding the choice, and the clear losers (ONNX Runtime 8-15x faster than eager on this machine under load:
bench/results/autotune.md) cost no more than one pass. Timings under load only ever grow, so the faster counts."""

WARMUP_SIDE = 32
"""Each candidate first runs once, untimed, on a WARMUP_SIDE x WARMUP_SIDE corner of the probe: the first pass of a
backend in a process carries one-off work (oneDNN's setup, the first run of a frozen graph or an ONNX Runtime
session) that says nothing of its speed; a corner takes that at a few per cent of a full probe pass."""

SHAPE_STEP = 32
"""Probe sides are rounded up to this many pixels, so that tiles and images of nearly the same size share one
measurement (1024x1024 tiles at 128, 1000x1000 at 125: both measured at 128)."""


@dataclass(frozen=True)
class Candidate:
    """One way to run the network: a backend and the memory layout its input is given in."""

    backend: str
    channels_last: bool

    @property
    def layout_free(self) -> bool:
        """Whether the input's layout leaves this backend's speed as it is: one candidate then, fit for either
        layout a caller asks for (backends.LAYOUT_FREE_BACKENDS)."""
        return self.backend in LAYOUT_FREE_BACKENDS

    @property
    def name(self) -> str:
        if self.layout_free:
            return self.backend
        return f"{self.backend} {'channels_last' if self.channels_last else 'NCHW'}"

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


CANDIDATES = (
    Candidate("eager", False),
    Candidate("eager", True),
    Candidate("jit", False),
    Candidate("onnxruntime", False),
)
_BY_NAME = {c.name: c for c in CANDIDATES}


@dataclass(frozen=True)
class Tuning:
    """One measurement: seconds per network pass for each candidate that ran (name -> seconds), and whether it was
    measured in this process (`fresh`) or read from the cache file."""

    seconds: dict[str, float]
    fresh: bool = True
    cost: float | None = None
    """Seconds the measurement took in this process, builds included (None when the table was read, not measured)."""

    def best(self, channels_last: bool | None = None, work: dict[str, float] | None = None) -> Candidate:
        """The fastest candidate, or the fastest that runs in the layout the caller asked for (a layout-free one runs
        in either). `work` scales each backend's time by what it runs of the image relative to the others (its own
        tiling: ONNX Runtime's larger tiles recompute less overlap than PyTorch's); by default all alike. Ties go to
        the earlier of CANDIDATES, so the choice is a function of the table (and `work`) alone."""
        names = [c.name for c in CANDIDATES if c.name in self.seconds
                 and (channels_last is None or c.layout_free or c.channels_last == channels_last)]
        if not names:
            return Candidate("eager", bool(channels_last))
        work = work or {}
        return _BY_NAME[min(names, key=lambda n: self.seconds[n] * work.get(_BY_NAME[n].backend, 1.0))]


def enabled() -> bool:
    return os.environ.get(TUNE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def cache_path() -> Path:
    """The cache file: $BSR_HUB_CACHE/autotune.json, else under $XDG_CACHE_HOME/bsr_hub or ~/.cache/bsr_hub."""
    folder = os.environ.get(CACHE_ENV)
    if not folder:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "bsr_hub")
    return Path(folder) / CACHE_FILE


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


def probe_shape(x_shape: torch.Size | tuple, tiling: Tiling, context: int, largest: int) -> tuple[int, int, int]:
    """(B, h, w) of the input the candidates are timed on for a (B, 3, H, W) input: one network pass (a tile of
    `tiling.size`, or the whole image with its mirrored border), each side rounded up to SHAPE_STEP and at most
    `largest` rounded up (the CPU tile side, tiling.cpu_tile_side). A whole image of up to four tiles' worth is timed
    on a tile-sized part of it: its time per pixel ranks the candidates as the whole does (the image is small enough to
    run whole because its maps stay in the caches, as a tile's do) at a quarter of the cost or less."""
    b, _, h, w = x_shape
    if tiling.size is not None and (h > tiling.size or w > tiling.size):
        h, w = min(tiling.size, h), min(tiling.size, w)
    else:
        h, w = h + 2 * context, w + 2 * context

    def side(n: int) -> int:
        return -(-min(n, largest) // SHAPE_STEP) * SHAPE_STEP

    return b, side(h), side(w)


def _key(model: torch.nn.Module, shape: tuple[int, int, int]) -> dict[str, Any]:
    return {**machine_key(), "model": model_key(model), "dtype": str(model.dtype).removeprefix("torch."),
            "shape": list(shape)}


def _key_text(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True)


# ---------------------------------------------------------------------------------------------- measuring


def available_candidates() -> list[Candidate]:
    return [c for c in CANDIDATES if c.backend in TUNABLE_BACKENDS
            and (c.backend != "onnxruntime" or _onnxruntime_available())]


def _time_candidate(model: torch.nn.Module, candidate: Candidate, x: torch.Tensor, *, warm_up: bool = True) -> float:
    """Seconds for one pass of `model` run as `candidate` on x (B, 3, h, w), after an untimed pass over a corner of x
    (WARMUP_SIDE) when `warm_up`. Neither the warm-up nor the build on the first use of a graph backend counts."""
    runner = get_runner(model, candidate.backend, candidate.memory_format)
    x = x.contiguous(memory_format=candidate.memory_format)
    with torch.no_grad():
        if warm_up:
            runner(x[:, :, :WARMUP_SIDE, :WARMUP_SIDE].contiguous(memory_format=candidate.memory_format))
        start = time.perf_counter()
        runner(x)
        return time.perf_counter() - start


def _measure(model: torch.nn.Module, shape: tuple[int, int, int]) -> dict[str, float]:
    """Seconds per pass on a (B, 3, h, w) `shape` for each available candidate: one pass each, a second for those
    within RETIME_WITHIN of the fastest (the faster of the two counts)."""
    b, h, w = shape
    generator = torch.Generator().manual_seed(0)  # content does not change the speed; a fixed input keeps it quiet
    x = torch.rand(b, 3, h, w, generator=generator).to(device=model.device, dtype=model.dtype)
    candidates = available_candidates()
    seconds = {c.name: _time_candidate(model, c, x) for c in candidates}
    fastest = min(seconds.values())
    for c in candidates:
        if seconds[c.name] <= RETIME_WITHIN * fastest:
            seconds[c.name] = min(seconds[c.name], _time_candidate(model, c, x, warm_up=False))
    return seconds


# ---------------------------------------------------------------------------------------------- the cache file


def _valid_seconds(value: Any) -> dict[str, float] | None:
    """A stored table, or None when it is not one this version can trust (hand-edited, another format, a backend
    that may not be chosen): the measurement is then redone."""
    if not isinstance(value, dict) or not value:
        return None
    if not all(name in _BY_NAME and _BY_NAME[name].backend in TUNABLE_BACKENDS for name in value):
        return None
    if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s > 0
               for s in value.values()):
        return None
    return {name: float(s) for name, s in value.items()}


def _stored_seconds(entries: dict[str, Any], key_text: str) -> dict[str, float] | None:
    entry = entries.get(key_text)
    return _valid_seconds(entry.get("seconds")) if isinstance(entry, dict) else None


def _read_entries(path: Path) -> dict[str, Any]:
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


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Held around read, merge and write, so that two processes that tuned at once both keep their entries and agree
    on one table per key. Where fcntl is missing (Windows) the write is still atomic; one entry may then be lost."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _store(key_text: str, key: dict[str, Any], seconds: dict[str, float]) -> dict[str, float]:
    """Write the table under its key and return the table to use: the one already in the file when another process
    stored one for this key while we measured (so every process on the machine uses the same choice), else ours.
    A cache that cannot be written (a read-only home) costs a measurement per process, never an error."""
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(path):
            entries = _read_entries(path)
            theirs = _stored_seconds(entries, key_text)
            if theirs is not None:
                return theirs
            # "choice": the probe's fastest, for a reader of the file; a call also weighs each backend's tiling.
            entries[key_text] = {"key": key, "seconds": seconds, "choice": Tuning(seconds).best().name,
                                 "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
            kept = dict(list(entries.items())[-MAX_ENTRIES:])
            write_text_atomically(path, json.dumps({"version": FORMAT_VERSION, "entries": kept}, indent=1) + "\n")
    except OSError as err:
        logger.warning("could not write the autotune cache %s (%s); the choice holds for this process only", path, err)
    return seconds


# ---------------------------------------------------------------------------------------------- the choice

_TUNINGS: dict[str, Tuning] = {}
"""This process's tables: once a key is here its choice never changes in this process."""
_LOCK = threading.Lock()  # one measurement at a time: concurrent ones would slow each other and skew the table


def tune(model: torch.nn.Module, shape: tuple[int, int, int], *, fresh: bool = False) -> Tuning:
    """The table for `model` on network inputs of (B, h, w) `shape`: this process's, else the cache file's, else
    measured now and stored. `fresh=True` measures again and replaces both (`bsr-hub bench --retune`)."""
    key = _key(model, shape)
    text = _key_text(key)
    with _LOCK:
        if not fresh and text in _TUNINGS:
            return _TUNINGS[text]
        stored = None if fresh else _stored_seconds(_read_entries(cache_path()), text)
        if stored is not None:
            tuning = Tuning(stored, fresh=False)
        else:
            if fresh:
                forget(text)
            start = time.perf_counter()
            seconds = _measure(model, shape)
            cost = time.perf_counter() - start
            tuning = Tuning(_store(text, key, seconds), fresh=True, cost=cost)
            # The probe's fastest; the call's choice also weighs each backend's own tiling (choice_for).
            logger.info("measured %s on %s in %.2f s: %s", model_key(model), shape, cost, tuning.best().name)
        _TUNINGS[text] = Tuning(tuning.seconds, fresh=False)  # a later lookup reads what was measured before
        return tuning


def forget(key_text: str | None = None) -> None:
    """Drop this process's table for one key (its entry in the file too), or every in-memory table (None)."""
    if key_text is None:
        _TUNINGS.clear()
        return
    _TUNINGS.pop(key_text, None)
    path = cache_path()
    with contextlib.suppress(OSError), _file_lock(path):
        entries = _read_entries(path)
        if entries.pop(key_text, None) is not None:
            write_text_atomically(path, json.dumps({"version": FORMAT_VERSION, "entries": entries}, indent=1) + "\n")


def choice_for(model: torch.nn.Module, backend: str, channels_last: bool | None, tiling: Tiling,
               x_shape: torch.Size | tuple, context: int,
               work: Callable[[str], float] | None = None, planned: bool = True) -> Candidate | None:
    """The measured choice for this call, or None where `backend="auto"` keeps its fixed rules
    (backends.resolve_backend): a backend named by the caller, a device other than the CPU, a module without
    learned weights (bicubic), a dtype other than float32 (bf16 joins only once its cost is measured:
    bench/bf16_cost.py), an input of fewer than CPU_BUILD_MIN_PIXELS pixels (a thumbnail would wait longer for the
    measurement than it saves) and BSR_HUB_AUTOTUNE=0. `work(backend)`: the LR pixels that backend's own tiling
    runs for this input (api.plan_run), so that each is judged by what it would do with the image, not the probe.
    `planned`: the tiling is `tile="auto"`'s, so the probe is capped at PyTorch's cache-sized tile; a tiling the
    caller chose (one pass, or tiles of their size) is timed on its own pass, capped at ONNX Runtime's larger tile
    (ONNXRUNTIME_TILE_FEATURE_BYTES) to bound the measurement."""
    if backend != AUTO or model.device.type != "cpu" or model.dtype != torch.float32 or not enabled():
        return None
    if not _has_learned_weights(model) or x_shape[0] * x_shape[-2] * x_shape[-1] < CPU_BUILD_MIN_PIXELS:
        return None
    largest = cpu_tile_side(model, x_shape[0], None if planned else ONNXRUNTIME_TILE_FEATURE_BYTES)
    tuning = tune(model, probe_shape(x_shape, tiling, context, largest))
    per_backend = {c.backend: work(c.backend) for c in CANDIDATES} if work is not None else None
    return tuning.best(channels_last, per_backend)


def describe(tuning: Tuning, work: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """The table as rows (candidate, seconds, relative work of its tiling, chosen), fastest first, for `bsr-hub
    bench`; `work` as in Tuning.best."""
    chosen = tuning.best(work=work).name
    work = work or {}
    rows = [{"candidate": name, "seconds": s, "work": work.get(_BY_NAME[name].backend, 1.0), "chosen": name == chosen}
            for name, s in tuning.seconds.items()]
    return sorted(rows, key=lambda row: row["seconds"] * row["work"])

