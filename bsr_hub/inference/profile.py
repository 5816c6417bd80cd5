"""Where `upscale`'s time goes on this machine, against the network's own raw forward (for `bsr-hub bench`).

`profile_upscale` runs the default path as `upscale` does (api.plan_run: tiling, the measured backend and layout),
with a clock around each step: conversion in (the caller's image to float RGB), the network (each pass of the
runner alone), conversion out (clamping and writing the caller's samples), and tiling (what is left: windows,
mirrored borders, the layout copy, cross-fading). The raw forward is the fastest measured candidate
(autotune.tune, each on a pass of its own tiling) on the image's pixels alone, with no border, overlap or
conversion: what `upscale` would take if nothing but the network cost time.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from .api import plan_run, upscale
from .autotune import Tuning, plan_probes, tune
from .backends import LAYOUT_FREE_BACKENDS, get_runner
from .convert import _network_input, _Output, _prepare
from .tiling import AUTO, BORDER_CONTEXT, DEFAULT_TILE_OVERLAP, Tiling, _run_tiled, resolve_tiling

STEPS = ("conversion in", "network", "tiling", "conversion out")


@dataclass(frozen=True)
class UpscaleProfile:
    """One image's measurements. `steps`: seconds per step (STEPS) of the instrumented run with the smallest total;
    `upscale`: the median of plain `upscale` calls; `raw_forward`: the network alone over the image's pixels."""

    steps: dict[str, float]
    upscale: float
    raw_forward: float
    raw_forward_how: str
    passes: int
    plan: str
    runs_as: str
    tuning: Tuning

    def as_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "upscale": self.upscale, "raw_forward": self.raw_forward,
                "raw_forward_how": self.raw_forward_how, "upscale_over_raw_forward": self.upscale / self.raw_forward,
                "passes": self.passes, "plan": self.plan, "runs_as": self.runs_as}


def _instrumented(model: torch.nn.Module, image: Any) -> tuple[dict[str, float], int]:
    """One upscale of `image`, step by step as api.upscale and api.super_resolve_bands run it (without their
    out-of-memory retry): seconds per step, and the number of network passes."""
    clock = time.perf_counter
    seconds = dict.fromkeys(STEPS, 0.0)
    start = clock()
    x, spec = _prepare(image)
    output = _Output(spec, x, model.scale, counts=[x.shape[0]])
    x = _network_input(x, spec)  # (B, 3, H, W) float
    seconds["conversion in"] = clock() - start
    plan = plan_run(model, x.shape)
    memory_format = plan.memory_format(whole=plan.tiling.whole)
    runner = get_runner(model, plan.backend, memory_format)
    passes = 0

    def forward(t: torch.Tensor) -> torch.Tensor:
        nonlocal passes
        t = t.to(dtype=model.dtype).contiguous(memory_format=memory_format)  # the layout copy counts as tiling
        begin = clock()
        y = runner(t)
        seconds["network"] += clock() - begin
        passes += 1
        return y.float()

    def emit(row: int, band: torch.Tensor) -> None:
        begin = clock()
        output.write(row, band.clamp_(0, 1))
        seconds["conversion out"] += clock() - begin

    with torch.no_grad():
        _run_tiled(forward, x, model.scale, plan.tiling.size, plan.tiling.overlap, emit, context=plan.context)
    begin = clock()
    output.finished()
    seconds["conversion out"] += clock() - begin
    seconds["tiling"] = clock() - start - sum(seconds.values())
    return seconds, passes


def _raw_forward(model: torch.nn.Module, x: torch.Tensor, tuning: Tuning, whole: bool) -> tuple[float, str]:
    best = tuning.best()
    shape = tuning.probes[best.name].shape
    # A tiled plan is compared with its own tile's time scaled to the image's pixels, not with one whole pass: for
    # eager PyTorch a whole large image is slower than its tiles (its maps leave the caches), but ONNX Runtime ran
    # bsr-lite-x2 whole faster than on cache-sized tiles (bench/results/ort_tiles.md), so for it this understates
    # the gap to the fastest raw forward.
    if not whole:
        pixels = x.shape[0] * x.shape[-2] * x.shape[-1]
        seconds = tuning.seconds[best.name] * pixels / math.prod(shape)
        return seconds, f"{best.name} on one {shape[1]}x{shape[2]} probe, scaled to the image's pixels"
    runner = get_runner(model, best.backend, best.memory_format)
    x = x.to(dtype=model.dtype).contiguous(memory_format=best.memory_format)
    times = []
    with torch.no_grad():
        runner(x)
        for _ in range(3):
            begin = time.perf_counter()
            runner(x)
            times.append(time.perf_counter() - begin)
    return min(times), f"{best.name} on the image itself, no border (fastest of 3)"


def profile_upscale(model: torch.nn.Module, image: Any, *, repeats: int = 3, retune: bool = False) -> UpscaleProfile:
    """Measure the default `upscale(model, image)` step by step (`repeats` times, after one untimed call that
    measures the backends if needed and builds the chosen one) and the raw forward it is compared with."""
    x, spec = _prepare(image)
    x = _network_input(x, spec)
    context = getattr(model, "border_context", BORDER_CONTEXT)

    def tiling_for(name: str) -> Tiling:
        return resolve_tiling(AUTO, DEFAULT_TILE_OVERLAP, model, x.shape, name)

    # The table `bsr-hub bench` prints, measured whatever upscale uses (a named backend, BSR_HUB_AUTOTUNE=0).
    tuning = tune(model, plan_probes(model, x.shape, context, tiling_for), fresh=retune)
    plan = plan_run(model, x.shape)
    upscale(model, image)  # builds what the timed calls reuse
    totals = []
    for _ in range(repeats):
        begin = time.perf_counter()
        upscale(model, image)
        totals.append(time.perf_counter() - begin)
    runs = [_instrumented(model, image) for _ in range(repeats)]
    steps, passes = min(runs, key=lambda run: sum(run[0].values()))
    raw, how = _raw_forward(model, x, tuning, plan.tiling.whole)
    layout = "channels_last" if plan.memory_format(plan.tiling.whole) == torch.channels_last else "NCHW"
    runs_as = plan.backend if plan.backend in LAYOUT_FREE_BACKENDS else f"{plan.backend} {layout}"
    where = "whole image" if plan.tiling.whole else f"tiles of {plan.tiling.size}"
    return UpscaleProfile(steps, statistics.median(totals), raw, how, passes, f"{where} ({plan.tiling.reason})",
                          runs_as, tuning)
