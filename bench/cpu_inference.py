"""CPU inference at the hardware's edge (issue 27): every backend x precision x layout, side by side in one run.

    python bench/cpu_inference.py                    # writes bench/results/cpu_inference.md
    python bench/cpu_inference.py --rounds 5 --sizes 256x256 512x512 1280x720
    python bench/cpu_inference.py --models bsr-tiny-x2 --sizes 256x256 --graphs   # + jit / torch.compile graphs

For `bsr-tiny-x2` and `bsr-lite-x2` (the bundled weights: int8 calibration depends on them) at each size:

- the network's raw forward on the whole image, for every backend (eager, jit, onnxruntime, onnxruntime-int8), in
  NCHW and channels_last where the backend has a layout, in fp32, and in bf16 where the CPU computes it natively
  (eager-bf16: the float32 model under bf16 autocast, its convs cast once, the output conv in float32; and a model
  whose weights are all bf16, `model.to(torch.bfloat16)`);
- `upscale(model, image)` as a user calls it (the default: `backend="auto"`, tiles as planned), and with each
  backend named;
- an ESPCN-shaped network (5x5 1->64, 3x3 64->32, 3x3 32->s^2, pixel shuffle, on Y; random weights: speed does not
  depend on them) in OpenCV's dnn with dnn_superres's colour handling around it: what OpenCV's ESPCN costs here.
  OpenCV 5.1 cannot load the published ESPCN .pb files (bench/results/leaderboard.md), so its graph is rebuilt;

against the speed of a plain 64->64 3x3 convolution measured in the same run, in fp32 and (where native) bf16 (the
practical ceiling: what the network's convolutions could reach if nothing else cost anything).

Rounds are interleaved (every configuration once per round, in an order shuffled each round with a fixed seed) and
the median is reported, so a neighbour's load falls on all of them alike and no configuration always follows the same
other one: compare ratios within this run, not with other files.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from common import conv_flops, cpu_description, machine_load, write_result

from bsr_hub.inference.autotune import SETTLE_AFTER

RESULTS = Path(__file__).resolve().parent / "results" / "cpu_inference.md"
MODELS = ("bsr-tiny-x2", "bsr-lite-x2")
SIZES = ("256x256", "512x512", "1280x720")
BACKENDS = ("eager", "jit", "onnxruntime", "onnxruntime-int8", "eager-bf16")
HAS_LAYOUT = {"eager": True, "jit": True, "onnxruntime": False, "onnxruntime-int8": False, "eager-bf16": False}
PRECISION = {"onnxruntime-int8": "int8", "eager-bf16": "bf16 autocast channels_last"}


@dataclass
class Row:
    model: str
    size: str
    path: str  # "raw" (the network on the whole image) or "upscale"
    config: str
    times: list[float]
    flops: float = 0.0

    @property
    def seconds(self) -> float:
        return statistics.median(self.times)


def _parse_size(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    return int(w), int(h)


def _photo(width: int, height: int):
    """A real photograph at the benchmark's size (the bundled chelsea.png, resized): content matters to no fp32
    timing, but int8 runs on calibrated ranges and a real image keeps them realistic."""
    from PIL import Image

    from bsr_hub.core.examples import example_images

    (chelsea,) = [p for p in example_images() if p.name == "chelsea.png"]
    return Image.open(chelsea).convert("RGB").resize((width, height), Image.BICUBIC)


SETTLE_S = SETTLE_AFTER["onnxruntime"]
"""Pause after every timed configuration, autotune's pause after ONNX Runtime: its threads spin after a run and slow
whatever is timed next (bench/results/ort_spin.md), and the shuffled order puts any configuration after it."""


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    time.sleep(SETTLE_S)
    return seconds


def _conv_ceiling(dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of a plain 64->64 3x3 conv on 256x256 in `dtype`, the faster of the two layouts (best of 5)."""
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).eval().to(dtype)
    best = float("inf")
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.rand(1, 64, 256, 256).to(dtype).contiguous(memory_format=fmt)
        with torch.no_grad():
            conv(x)
            best = min(best, *(_timed(lambda x=x: conv(x)) for _ in range(5)))
    return 2 * 64 * 64 * 9 * 256 * 256 / best / 1e9


def _espcn(scale: int, width: int, height: int) -> Callable[[], object]:
    """OpenCV dnn running an ESPCN-shaped graph the way dnn_superres runs ESPCN: BGR -> YCrCb, the network on Y,
    Cr and Cb resized bicubically, back to BGR."""
    import cv2

    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 64, 5, padding=2), torch.nn.Tanh(), torch.nn.Conv2d(64, 32, 3, padding=1), torch.nn.Tanh(),
        torch.nn.Conv2d(32, scale * scale, 3, padding=1), torch.nn.PixelShuffle(scale),
    ).eval()
    buffer = io.BytesIO()
    torch.onnx.export(net, torch.rand(1, 1, height, width), buffer, input_names=["x"], output_names=["y"],
                      opset_version=17, dynamo=False)
    dnn = cv2.dnn.readNetFromONNX(np.frombuffer(buffer.getvalue(), np.uint8))
    image = np.asarray(_photo(width, height))[:, :, ::-1].copy()

    def run() -> np.ndarray:
        ycc = cv2.cvtColor(image, cv2.COLOR_BGR2YCrCb)
        y = ycc[:, :, 0].astype(np.float32)[None, None] / 255
        dnn.setInput(y)
        out_y = dnn.forward()[0, 0]
        up = cv2.resize(ycc, (width * scale, height * scale), interpolation=cv2.INTER_CUBIC)
        up[:, :, 0] = np.clip(out_y * 255, 0, 255).astype(np.uint8)
        return cv2.cvtColor(up, cv2.COLOR_YCrCb2BGR)

    return run


BUILDS: dict[tuple[str, str, str], float] = {}
"""Seconds from nothing built to the first result, per (model, size, graph configuration) of `--graphs`: the trace
and freeze, or torch.compile's build (its on-disk cache in a new empty folder, as on a user's first call)."""


def _configs(name: str, width: int, height: int, graphs: bool = False,
             ) -> list[tuple[str, str, Callable[[], object], float]]:
    """(path, config, run, flops) for one model and size; each run is warmed up once here. `graphs` adds the raw
    forward as frozen TorchScript and torch.compile graphs of the fp32 and the bf16-weights model."""
    from bsr_hub import BSRModel
    from bsr_hub.core.cpu import has_native_bf16
    from bsr_hub.inference.backends import get_runner

    model = BSRModel.from_pretrained(name).eval()
    flops = conv_flops(model, 16) * (width * height) / 16**2
    image = _photo(width, height)
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float().div(255)  # (1, 3, H, W)
    found: list[tuple[str, str, Callable[[], object], float]] = []

    def raw(runner, layout, tensor):
        t = tensor.contiguous(memory_format=layout)
        return lambda: runner(t)

    backends = [b for b in BACKENDS if b != "eager-bf16" or has_native_bf16()]
    for backend in backends:
        layouts = ((torch.contiguous_format, torch.channels_last) if HAS_LAYOUT[backend] else
                   (torch.channels_last,) if backend == "eager-bf16" else (torch.contiguous_format,))
        for layout in layouts:
            label = "NCHW" if layout == torch.contiguous_format else "channels_last"
            config = f"{backend} {PRECISION.get(backend, 'fp32')}" + (f" {label}" if HAS_LAYOUT[backend] else "")
            with torch.no_grad():
                runner = get_runner(model, backend, layout)
                found.append(("raw", config, torch.no_grad()(raw(runner, layout, x)), flops))
    if has_native_bf16():
        half = BSRModel.from_pretrained(name).eval().to(torch.bfloat16)
        found.append(("raw", "eager bf16 weights channels_last",
                      torch.no_grad()(raw(half, torch.channels_last, x.to(torch.bfloat16))), flops))
    if graphs:
        # Fused graphs of the same networks (issue 27's ESPCN target): much of bsr-tiny's eager forward is element-wise
        # work (ReLU, residual adds, the attention's pooling and product) that a graph can fuse into or around the
        # convolutions. torch.compile builds once per input shape: its build (and first call) is timed here.
        variants = [(model, "fp32", x)] + ([(half, "bf16 weights", x.to(torch.bfloat16))] if has_native_bf16() else [])
        for net, precision, tensor in variants:
            for backend in ("compile",) if net is model else ("jit", "compile"):  # fp32 jit: a row above already
                config = f"{backend} {precision} channels_last"
                start = time.perf_counter()
                with torch.no_grad():
                    run = raw(get_runner(net, backend, torch.channels_last), torch.channels_last, tensor)
                    run()
                BUILDS[(name, f"{width}x{height}", config)] = time.perf_counter() - start
                found.append(("raw", config, torch.no_grad()(run), flops))
    found.append(("upscale", "default (auto)", lambda: model.upscale(image), flops))
    for backend in backends:
        found.append(("upscale", f"backend={backend}", lambda b=backend: model.upscale(image, backend=b), flops))
    if has_native_bf16():
        found.append(("upscale", "bf16 model (default otherwise)", lambda: half.upscale(image), flops))
        if graphs:
            start = time.perf_counter()
            half.upscale(image, backend="compile")
            BUILDS[(name, f"{width}x{height}", "upscale bf16 model backend=compile")] = time.perf_counter() - start
            found.append(("upscale", "bf16 model, backend=compile", lambda: half.upscale(image, backend="compile"),
                          flops))
    found.append(("espcn", "ESPCN-shaped, OpenCV dnn", _espcn(model.scale, width, height), 0.0))
    for _, _, run, _ in found:
        run()  # warm-up: graphs built, kernels and thread pools ready
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), help="WxH of the LR input")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="threads for every runtime (default: torch's)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--graphs", action="store_true",
                        help="add jit and torch.compile graphs of the fp32 and bf16-weights models (compile builds per "
                        "shape: slow)")
    args = parser.parse_args(argv)

    import cv2

    if args.graphs:
        # torch.compile keeps what it built in a cache folder across processes: a new one, so the builds timed here are
        # what a user's first call costs (the folder is left in the temp dir; a few MB).
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bsr_bench_inductor_")
    if args.threads:
        torch.set_num_threads(args.threads)  # ONNX Runtime's sessions take torch's count (inference/backends.py)
    threads = torch.get_num_threads()
    cv2.setNumThreads(threads)
    load_before = machine_load()
    from bsr_hub.core.cpu import has_native_bf16

    ceiling = _conv_ceiling()
    bf16_ceiling = _conv_ceiling(torch.bfloat16) if has_native_bf16() else None
    rows: list[Row] = []
    chosen: dict[tuple[str, str], str] = {}
    for name in args.models:
        for size in args.sizes:
            width, height = _parse_size(size)
            configs = _configs(name, width, height, args.graphs)
            chosen[(name, size)] = _auto_choice(name, width, height)
            times: dict[str, list[float]] = {f"{p}|{c}": [] for p, c, _, _ in configs}
            for r in range(args.rounds):
                # A new order each round (seeded, so a rerun repeats it), so that no configuration always runs right
                # after the same other one: the last run's threads or caches can slow the next (the default once ran
                # 1.46x slower than the same plan named, right after the int8 session, in a fixed order at fe09365;
                # an order rotated each round, as at 627099c, still kept every configuration's neighbour).
                order = random.Random(f"{name} {size} {r}").sample(configs, len(configs))
                for path, config, run, _ in order:
                    times[f"{path}|{config}"].append(_timed(run))
            rows += [Row(name, size, p, c, times[f"{p}|{c}"], f) for p, c, _, f in configs]
            print(f"{name} {size}: done", file=sys.stderr)
    write_result(args.output, _report(args, rows, (ceiling, bf16_ceiling), chosen, threads, load_before))
    return 0


def _auto_choice(name: str, width: int, height: int) -> str:
    """What the default `upscale` runs for this input, in words: the measured backend and layout and the tiling
    planned for it (api.plan_run, after the warm-up made the measurement)."""
    from bsr_hub import BSRModel
    from bsr_hub.inference import api

    plan = api.plan_run(BSRModel.from_pretrained(name), (1, 3, height, width))
    layout = "" if plan.backend.startswith("onnxruntime") else (
        " channels_last" if plan.memory_format(plan.tiling.whole) == torch.channels_last else " NCHW")
    tiles = "the whole image" if plan.tiling.whole else f"tiles of {plan.tiling.size}"
    return f"{plan.backend}{layout} on {tiles}"


def _report(args, rows: list[Row], ceilings: tuple[float, float | None], chosen, threads: int,
            load_before: str) -> list[str]:
    from bsr_hub.core.version import __version__

    ceiling, bf16_ceiling = ceilings
    command = "python bench/cpu_inference.py" + ("" if sys.argv[1:] == [] else " " + " ".join(sys.argv[1:]))
    lines = [
        "# CPU inference: every backend, precision and layout, side by side (issue 27)",
        "",
        (f"Command: `{command}` (written by the script). bsr_hub {__version__}, torch {torch.__version__}, "
        f"{threads} threads for every runtime."),
        "",
        f"CPU: {cpu_description()}. Load before: {load_before}; after: {machine_load()}.",
        "",
        f"Plain 64->64 3x3 convolution on 256x256 (the ceiling), fastest layout: **{ceiling:.0f} GFLOP/s** in fp32"
        + (f", {bf16_ceiling:.0f} GFLOP/s in bf16." if bf16_ceiling else "; no native bf16."),
        "",
        (f"Median of {args.rounds} interleaved rounds per configuration (order shuffled each round). raw: the network "
        "on the whole image; "
        "upscale: `model.upscale(image)` on a PIL image (conversion, border, tiles, output included). "
        "fps = 1 / s; '% ceiling' = the network's convolution FLOPs / s over the fp32 ceiling."),
        "",
    ]
    for (name, size), group in _grouped(rows).items():
        # The default never runs int8, so it is held to the fastest forward in fp32 or bf16; int8 is shown beside it.
        raw = [r for r in group if r.path == "raw" and "int8" not in r.config]
        best_raw = min(raw, key=lambda r: r.seconds)
        default = next(r for r in group if r.path == "upscale" and r.config == "default (auto)")
        lines += [
            f"## {name}, {size}",
            "",
            (f"`backend=\"auto\"` chose: {chosen[(name, size)]}. Default `upscale` vs the fastest raw forward "
            f"other than int8 ({best_raw.config}): **{default.seconds / best_raw.seconds:.2f}x** its time."),
            "",
        ]
        builds = [f"{config} {seconds:.1f} s" for (m, z, config), seconds in BUILDS.items() if (m, z) == (name, size)]
        if builds:
            lines += ["Graph builds, from nothing to the first result: " + ", ".join(builds) + ".", ""]
        lines += [
            "| path | configuration | s | fps | % ceiling |",
            "|---|---|---:|---:|---:|",
        ]
        for r in group:
            share = f"{100 * r.flops / r.seconds / 1e9 / ceiling:.0f}" if r.flops else "-"
            lines.append(f"| {r.path} | {r.config} | {r.seconds:.3f} | {1 / r.seconds:.2f} | {share} |")
        lines.append("")
    return lines


def _grouped(rows: list[Row]) -> dict[tuple[str, str], list[Row]]:
    out: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        out.setdefault((r.model, r.size), []).append(r)
    return out


if __name__ == "__main__":
    sys.exit(main())
