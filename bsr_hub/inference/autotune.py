"""Which backend and memory layout run the network fastest on this CPU: measured here, once, and remembered.

The fastest way differs from CPU to CPU. On the 2-core AVX2 machine of bench/results/fast_path.md ONNX Runtime won on
tiles; on an AVX-512 BF16 machine (issue 27) eager PyTorch beat TorchScript and ONNX Runtime, and channels_last ran
the raw forward in about half of NCHW's time, the opposite of the AVX2 machines. So `backend="auto"` on a CPU does not
follow a fixed order measured on one of them: the first time a model and an input need a choice (`choice_for`), each
candidate (TUNABLE_BACKENDS: the lossless ones, eager in NCHW and in channels_last, and bf16 autocast where the CPU
computes bf16 natively) is timed on one pass of the tiling its backend would run for that input (`plan_probes`: a
tile, or the whole image where the plan runs it whole), and the candidate with the least estimated time for the image
(one pass x the passes its tiling makes) is used. The table is written to a JSON file in the user's cache folder
(tuning_cache.py), keyed by what makes its times differ (the CPU, threads, library versions), the model and every
candidate's probe (rounded, so that nearby sizes share one), so that later calls and processes whose candidates have
the same probes start with it. A table is always measured whole, at one moment; once a key has one in a process, its
choice never changes there.

BSR_HUB_AUTOTUNE=0 turns the measuring off (the fixed order, backends.CPU_BACKEND_PREFERENCE); BSR_HUB_CACHE names
the folder of the file.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..core import cpu, file_lock, write_text_atomically
from .backends import (
    CPU_BUILD_MIN_PIXELS,
    LAYOUT_FREE_BACKENDS,
    _has_learned_weights,
    _onnxruntime_available,
    get_runner,
)
from .tiling import AUTO, ONNXRUNTIME_TILE_FEATURE_BYTES, Tiling, cpu_tile_side, pixels_run
from .tuning_cache import (
    FORMAT_VERSION,
    MAX_ENTRIES,
    cache_path,
    key_text,
    model_key,
    read_entries,
    table_key,
)

logger = logging.getLogger(__name__)

TUNABLE_BACKENDS = ("eager", "jit", "onnxruntime", "eager-bf16")
"""What the measurement may choose from: every backend whose output equals eager's to within float rounding, and
bf16 autocast where the CPU computes bf16 natively and the network keeps its output in float32 (BSRNetwork's
`output_fp32_under_autocast`): measured within 0.01 dB of float32 on Set5 and Set14 (bench/results/bf16_cost.md),
the bound issue 27 set. Left out: "compile", whose first call on each input shape costs 12 s on a quiet machine and
over 200 s under load (bench/results/fast_path.md), more than tuning may spend; and int8, faster by giving up 0.01-0.04
dB on Set5 and Set14 (bench/results/int8.md), which only the caller may decide."""

TUNE_ENV = "BSR_HUB_AUTOTUNE"
"""Set to 0 (or false, no, off) to skip the measurement: "auto" then follows backends.CPU_BACKEND_PREFERENCE."""

RETIME_WITHIN = 1.5
"""Each candidate is timed once on its probe; those whose estimated time for the image is within this factor of the
least are timed once more and keep the faster of their two. One pass is what a candidate costs, but a backend's
first pass at a new input size can carry one-off work (eager PyTorch sets up oneDNN's kernels per shape); a second
pass for the contenders keeps that from deciding the choice, and the clear losers (ONNX Runtime 8-15x faster than
eager on this machine under load: bench/results/autotune.md) cost no more than one pass. Timings under load only ever
grow, so the faster counts."""

WARMUP_SIDE = 32
"""Each candidate first runs once, untimed, on a WARMUP_SIDE x WARMUP_SIDE corner of the probe: the first pass of a
backend in a process carries one-off work (oneDNN's setup, the first run of a frozen graph or an ONNX Runtime
session) that says nothing of its speed; a corner takes that at a few per cent of a full probe pass."""

SETTLE_AFTER = {"onnxruntime": 0.1}
"""Seconds to wait after timing a backend before timing the next: ONNX Runtime's threads keep spinning after a run
(its default intra-op spinning), so a PyTorch pass started at once shares the cores with them. On the AVX-512 machine
(bench/results/ort_spin.md, 2 threads, quiet) bsr-tiny's 160x160 probe took 1.65x its time in eager and 1.84x in
eager-bf16 right after a 640x640 ONNX Runtime run, 1.43-1.54x 10 ms after, 1.03-1.15x 25 ms after, and no longer
than alone from 50 ms on. Without the wait the candidate timed after ONNX Runtime (eager-bf16) lost choices it wins:
in bench/results/cpu_inference_avx512.md as of commit 6386366 the default ran ONNX Runtime where eager-bf16 took 0.65x
its time (bsr-lite-x2, 1280x720); the same run with the wait chose eager-bf16 in five of six cases."""

_clock = time.perf_counter  # what the measuring's costs are read from (a test's fake timer advances its own)

SHAPE_STEP = 32
"""Probes are squares whose side is rounded up to this many pixels up to 256, to twice this up to 512 and to four
times beyond (`probe_side`): tiles and images of nearly the same size share one measurement (1024x1024 tiles of 128
and 1000x1000 ones of 125 are both measured at 128), and a folder of photos of every size costs a dozen measurements
per model, not one per size. A pass's time follows its pixel count (the feature maps' size against the caches) far
more than its aspect."""


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
    Candidate("eager-bf16", True),  # oneDNN's bf16 convolutions want channels_last
)
_BY_NAME = {c.name: c for c in CANDIDATES}


@dataclass(frozen=True)
class Probe:
    """What one candidate is timed on for one call: a (B, h, w) network input, and how many such passes its own
    tiling makes of the image (the LR pixels that tiling runs, border and overlaps included, over the probe's), so that
    its time for the image is estimated as one pass x `work`."""

    shape: tuple[int, int, int]
    work: float = 1.0


@dataclass(frozen=True)
class Tuning:
    """One call's measurement: seconds per pass on its probe for each candidate that ran (name -> seconds), the probes
    (name -> Probe), and whether any of it was measured in this process (`fresh`) or all read from a table."""

    seconds: dict[str, float]
    probes: dict[str, Probe]
    fresh: bool = True
    cost: float | None = None
    """Seconds the measuring took in this process, builds included (None when nothing was measured)."""
    costs: dict[str, float] | None = None
    """What measuring each candidate took in this process (name -> seconds: its build on first use, warm-up, passes),
    None when nothing was measured."""
    builds: dict[str, float] | None = None
    """Of `costs`, the build on first use (name -> seconds: ONNX Runtime's export and session, TorchScript's freeze,
    bf16's copy of the weights; 0 for eager and for a runner this process had already built)."""

    def image_seconds(self, name: str) -> float:
        """The candidate's estimated time for the image: one pass on its probe x its probe passes per image."""
        return self.seconds[name] * self.probes[name].work

    def best(self, channels_last: bool | None = None) -> Candidate:
        """The candidate with the least estimated time for the image, or the least of those that run in the layout
        the caller asked for (a layout-free one runs in either). Ties go to the earlier of CANDIDATES, so the choice
        is a function of the table alone."""
        names = [c.name for c in CANDIDATES if c.name in self.seconds
                 and (channels_last is None or c.layout_free or c.channels_last == channels_last)]
        if not names:
            return Candidate("eager", bool(channels_last))
        return _BY_NAME[min(names, key=self.image_seconds)]


def enabled() -> bool:
    return os.environ.get(TUNE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def probe_side(pixels: float) -> int:
    """The side of the square probe for a pass of `pixels` pixels (SHAPE_STEP)."""
    side = math.ceil(math.sqrt(pixels))
    step = SHAPE_STEP * (1 if side <= 256 else 2 if side <= 512 else 4)
    return -(-side // step) * step


def probe_shape(x_shape: torch.Size | tuple, tiling: Tiling, context: int,
                largest: int | None = None) -> tuple[int, int, int]:
    """(B, s, s) of the probe for the pass `tiling` makes for a (B, 3, H, W) input (a tile of `tiling.size`, or the
    whole image with its mirrored border, each side at most `largest` when given): a square of about its pixels,
    rounded up (probe_side)."""
    b, _, h, w = x_shape
    if tiling.size is not None and (h > tiling.size or w > tiling.size):
        h, w = min(tiling.size, h), min(tiling.size, w)
    else:
        h, w = h + 2 * context, w + 2 * context
    if largest:
        h, w = min(h, largest), min(w, largest)
    side = probe_side(h * w)
    return b, side, side


def plan_probes(model: torch.nn.Module, x_shape: torch.Size | tuple, context: int,
                tiling_for: Callable[[str], Tiling], planned: bool = True) -> dict[str, Probe]:
    """Each available candidate's Probe for a (B, 3, H, W) input: a pass of its own backend's tiling (`tiling_for`,
    api.plan_run's: ONNX Runtime's tiles are larger than PyTorch's), so that each is timed on what it would run
    and its time per pixel there is the one that counts. In bench/results/probe_sizes.md this estimated ONNX
    Runtime's real time better than one cache-sized tile did (0.97x against 1.31x of it for bsr-tiny at 1280x720,
    0.80x against 1.29x for bsr-lite at 512x512) and picked the same candidates in all six cases. `planned`: the tiling
    is `tile="auto"`'s, whose passes are bounded by memory-sized tiles; a tiling the caller chose (one pass of a large
    image, or large tiles) is timed on a part of its pass of at most ONNX Runtime's tile side, to bound the cost."""
    b, _, h, w = x_shape
    largest = None if planned else cpu_tile_side(model, b, ONNXRUNTIME_TILE_FEATURE_BYTES)
    probes = {}
    for candidate in available_candidates(model):
        tiling = tiling_for(candidate.backend)
        shape = probe_shape(x_shape, tiling, context, largest)
        probes[candidate.name] = Probe(shape, pixels_run(h, w, tiling, context) / (shape[1] * shape[2]))
    return probes


# ---------------------------------------------------------------------------------------------- measuring


_EXACT = contextvars.ContextVar("bsr_hub_autotune_exact", default=False)


@contextlib.contextmanager
def exact_only():
    """Within it, `backend="auto"` chooses among the candidates whose output equals eager's to float rounding (no
    bf16): the evaluation protocol scores under it, so that a published score never depends on which backend won a
    timing on the machine that measured it."""
    token = _EXACT.set(True)
    try:
        yield
    finally:
        _EXACT.reset(token)


def available_candidates(model: torch.nn.Module) -> list[Candidate]:
    """The candidates that can run `model` here: ONNX Runtime where it is installed, bf16 autocast where the CPU
    computes bf16 natively and the network keeps its output in float32 (TUNABLE_BACKENDS), outside `exact_only`."""
    bf16 = cpu.has_native_bf16() and getattr(model, "output_fp32_under_autocast", False) and not _EXACT.get()
    return [c for c in CANDIDATES if c.backend in TUNABLE_BACKENDS
            and (c.backend != "onnxruntime" or _onnxruntime_available()) and (c.backend != "eager-bf16" or bf16)]


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


def _measure(model: torch.nn.Module, probes: dict[str, Probe]
             ) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Seconds per pass on its probe for each candidate of `probes`: one pass each, a second for those whose estimated
    time for the image is within RETIME_WITHIN of the least; after ONNX Runtime's, a pause (SETTLE_AFTER). Also what
    measuring each cost here (its build on first use, warm-up, passes and pause) and, of that, the build, so that a
    user can see where a first call's time went (`bsr-hub bench`): on the AVX-512 machine most of it is ONNX
    Runtime's export and its passes on its larger tile (bench/results/first_upscale_avx512.md)."""
    inputs: dict[tuple[int, int, int], torch.Tensor] = {}
    for b, h, w in {p.shape for p in probes.values()}:
        generator = torch.Generator().manual_seed(0)  # content does not change the speed; a fixed input keeps it quiet
        inputs[(b, h, w)] = torch.rand(b, 3, h, w, generator=generator).to(device=model.device, dtype=model.dtype)
    costs, builds = dict.fromkeys(probes, 0.0), dict.fromkeys(probes, 0.0)

    def timed(name: str, warm_up: bool = True) -> float:
        candidate = _BY_NAME[name]
        start = _clock()
        get_runner(model, candidate.backend, candidate.memory_format)  # built here on first use, then kept
        builds[name] += _clock() - start
        seconds = _time_candidate(model, candidate, inputs[probes[name].shape], warm_up=warm_up)
        if candidate.backend in SETTLE_AFTER:
            time.sleep(SETTLE_AFTER[candidate.backend])  # the next candidate gets the cores to itself
        costs[name] += _clock() - start
        return seconds

    seconds = {name: timed(name) for name in probes}
    least = min(s * probes[name].work for name, s in seconds.items())
    for name, p in probes.items():
        if seconds[name] * p.work <= RETIME_WITHIN * least:
            seconds[name] = min(seconds[name], timed(name, warm_up=False))
    return seconds, costs, builds


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


def _store(key_text: str, key: dict[str, Any], seconds: dict[str, float], replace: bool = False) -> dict[str, float]:
    """Write the table under its key and return the table to use: the one already in the file when another process
    stored one for this key while we measured (so every process on the machine makes the same choice), else ours;
    ours in any case with `replace` (a measurement asked for anew). A cache that cannot be written (a read-only home)
    costs a measurement per process, never an error."""
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(path):  # two processes that tuned at once agree on one table per key
            entries = read_entries(path)
            theirs = None if replace else _stored_seconds(entries, key_text)
            if theirs is not None and set(theirs) == set(seconds):
                return theirs
            entries.pop(key_text, None)  # (re)inserted last: the most recent entries are the ones kept
            entries[key_text] = {"key": key, "seconds": seconds, "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
            kept = dict(list(entries.items())[-MAX_ENTRIES:])
            write_text_atomically(path, json.dumps({"version": FORMAT_VERSION, "entries": kept}, indent=1) + "\n")
    except OSError as err:
        logger.warning("could not write the autotune cache %s (%s); the choice holds for this process only", path, err)
    return seconds


# ---------------------------------------------------------------------------------------------- the choice

_TUNINGS: dict[str, dict[str, float]] = {}
"""This process's tables (key text -> candidate -> seconds): once a key is here its choice never changes in this
process."""
_LOCK = threading.Lock()  # one measurement at a time: concurrent ones would slow each other and skew the table


def tune(model: torch.nn.Module, probes: dict[str, Probe], *, fresh: bool = False) -> Tuning:
    """The times of the candidates of `probes` (plan_probes) for `model`, each on its probe: this process's table for
    these probes, else the cache file's, else measured now, all together, and stored. Another image whose candidates
    have the same probes reuses it. `fresh=True` measures again and replaces both (`bsr-hub bench --retune`)."""
    key = table_key(model, probes)
    text = key_text(key)
    with _LOCK:
        if not fresh:
            table = _TUNINGS.get(text) or _stored_seconds(read_entries(cache_path()), text)
            if table is not None and set(table) == set(probes):
                _TUNINGS[text] = table
                return Tuning(table, probes, fresh=False)
        start = _clock()
        measured, costs, builds = _measure(model, probes)
        cost = _clock() - start
        table = _TUNINGS[text] = _store(text, key, measured, replace=fresh)
        tuning = Tuning(table, probes, fresh=True, cost=cost, costs=costs, builds=builds)
        shapes = sorted({p.shape for p in probes.values()})
        logger.info("measured %s on %s in %.2f s: %s (%s)", model_key(model), shapes, cost, tuning.best().name,
                    ", ".join(f"{name} {seconds:.2f} s, build {builds[name]:.2f} s" for name, seconds in costs.items()),
                    extra={"tuning": tuning})  # the whole measurement, for a handler that wants more than the line
        return tuning


def forget() -> None:
    """Drop this process's tables (a new process's start; the cache file stays)."""
    _TUNINGS.clear()


def choice_for(model: torch.nn.Module, backend: str, channels_last: bool | None, x_shape: torch.Size | tuple,
               context: int, tiling_for: Callable[[str], Tiling], planned: bool = True) -> Candidate | None:
    """The measured choice for this call, or None where `backend="auto"` keeps its fixed rules
    (backends.resolve_backend): a backend named by the caller, a device other than the CPU, a module without
    learned weights (bicubic), a dtype other than float32 (a bf16 model runs eager; bf16 autocast of a float32 one is
    a candidate where the CPU has it: TUNABLE_BACKENDS), an input of fewer than CPU_BUILD_MIN_PIXELS pixels (a thumbnail would wait longer for the
    measurement than it saves) and BSR_HUB_AUTOTUNE=0. `tiling_for(backend)`: the tiling that backend would run
    (api.plan_run); each candidate is timed on a pass of it and judged by its estimated time for the whole image
    (plan_probes). `planned`: as in plan_probes."""
    if backend != AUTO or model.device.type != "cpu" or model.dtype != torch.float32 or not enabled():
        return None
    if not _has_learned_weights(model) or x_shape[0] * x_shape[-2] * x_shape[-1] < CPU_BUILD_MIN_PIXELS:
        return None
    return tune(model, plan_probes(model, x_shape, context, tiling_for, planned)).best(channels_last)
