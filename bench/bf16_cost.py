"""bf16 on a CPU that computes it natively (avx512_bf16 or amx_bf16): what it costs in Y-PSNR on Set5 and Set14
against fp32, and what it saves in time (issue 27, item 2).

    python bench/bf16_cost.py --threads 2                      # every bundled checkpoint
    python bench/bf16_cost.py --no-speed                       # scores only (they do not depend on the load)
    python bench/bf16_cost.py --no-scores --models bsr-lite-x2 bsr-tiny-x2 --output bench/results/bf16_speed.md

Two ways to run a model in bf16 are compared with fp32 (eager, the same tiling):

- `backend="eager-bf16"`: the float32 weights under bf16 autocast; BSRNetwork computes its last conv, whose output
  is the image, in float32 (models/network.py). This is what `backend="auto"` may choose (inference/autotune.py).
- bf16 weights (`model.to(torch.bfloat16)`): every layer and the output in bf16, as a caller who casts gets.

bf16 may join `backend="auto"`'s choice only where it costs at most MAX_COST_DB on both benchmarks (and is faster:
autotune measures that on each machine). Scores: the library's protocol (bsr_hub.evaluation: MATLAB-bicubic LR, Y
channel, scale-pixel shave) through `upscale` with the backend pinned. Speed (unless --no-speed): the raw forward on a
256x256 input (fp32 NCHW, fp32 channels_last, autocast over the float32 weights, bf16 weights, and the eager-bf16
runner, whose convs are cast to bf16 once; channels_last; fastest of --repeats after a warm-up) and `upscale` of a
--size noise image (median of --repeats) by eager fp32, eager-bf16 and the default path, side by side in one process.
The result goes to bench/results/bf16_cost.md with the command, the CPU and the load. On a CPU without native bf16 it
refuses with the reason and writes nothing: bf16 is emulated there, 10-200x slower.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

from common import cpu_description, machine_load, write_result

BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "benchmarks"
RESULTS = Path(__file__).resolve().parent / "results" / "bf16_cost.md"
MAX_COST_DB = 0.01
MODELS = ("bsr-lite-x2", "bsr-tiny-x2", "bsr-lite-x3", "bsr-lite-x4", "bsr-lite-x2-robust", "bsr-lite-x3-robust",
          "bsr-lite-x4-robust")  # every bundled checkpoint
WAYS = ("fp32", "eager-bf16", "bf16 weights")


class Pinned:
    """A model as evaluate_benchmark sees it (scale, device, upscale), its `upscale` pinned to one backend."""

    def __init__(self, model, backend: str):
        self.model, self.backend = model, backend
        self.scale, self.device = model.scale, model.device

    def upscale(self, x, **options):
        return self.model.upscale(x, backend=self.backend, **options)


def _fastest(run, repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def _raw_forward(model, dtype, channels_last: bool, repeats: int, autocast: bool = False) -> float:
    import torch

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)).to(dtype).contiguous(memory_format=fmt)

    def run():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            model(x)

    return _fastest(run, repeats)


def _runner_forward(model, repeats: int) -> float:
    """The runner backend="eager-bf16" builds (its convs cast to bf16 once) on a 256x256 channels_last input."""
    import torch

    from bsr_hub.inference.backends import get_runner

    runner = get_runner(model, "eager-bf16", torch.channels_last)
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        return _fastest(lambda: runner(x), repeats)


def _upscale_median(model, image, repeats: int, **options) -> float:
    model.upscale(image, **options)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.upscale(image, **options)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _scores(model, scale: int) -> dict[str, float]:
    from bsr_hub.data.benchmarks import load_benchmark
    from bsr_hub.evaluation.protocol import evaluate_benchmark

    return {name: evaluate_benchmark(model, load_benchmark(name, BENCHMARKS), scale, progress=False).psnr
            for name in ("Set5", "Set14")}


def _speed(fp32, bf16, size: int, repeats: int) -> dict[str, float]:
    import torch
    from PIL import Image

    image = Image.effect_noise((size, size), 40).convert("RGB")
    return {
        "raw forward 256x256, fp32 NCHW": _raw_forward(fp32, torch.float32, False, repeats),
        "raw forward 256x256, fp32 channels_last": _raw_forward(fp32, torch.float32, True, repeats),
        "raw forward 256x256, bf16 autocast channels_last": _raw_forward(fp32, torch.float32, True, repeats, True),
        "raw forward 256x256, bf16 weights channels_last": _raw_forward(bf16, torch.bfloat16, True, repeats),
        "raw forward 256x256, the eager-bf16 runner": _runner_forward(fp32, repeats),
        f"upscale {size}x{size}, eager fp32": _upscale_median(fp32, image, repeats, backend="eager"),
        f"upscale {size}x{size}, eager-bf16": _upscale_median(fp32, image, repeats, backend="eager-bf16"),
        f"upscale {size}x{size}, the default path": _upscale_median(fp32, image, repeats),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--size", type=int, default=512, help="side of the image upscale is timed on")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--no-speed", action="store_true", help="scores only")
    parser.add_argument("--no-scores", action="store_true", help="speed only (on a quiet machine)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch

    from bsr_hub import BSRModel
    from bsr_hub.core.cpu import NATIVE_BF16_FLAGS, has_native_bf16

    if not has_native_bf16():
        print(f"refused: this CPU ({cpu_description()}) has none of {', '.join(NATIVE_BF16_FLAGS)}; bf16 is emulated "
              "here, 10-200x slower than fp32, and upscale refuses it. Run this on a CPU with avx512_bf16.",
              file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = machine_load()
    scores, speeds = {}, {}
    for name in args.models:
        fp32 = BSRModel.from_pretrained(name).eval()
        bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
        ways = {"fp32": Pinned(fp32, "eager"), "eager-bf16": Pinned(fp32, "eager-bf16"), "bf16 weights": bf16}
        if not args.no_scores:
            scores[name] = {way: _scores(model, fp32.scale) for way, model in ways.items()}
        if not args.no_speed:
            speeds[name] = _speed(fp32, bf16, args.size, args.repeats)
        print(name, scores.get(name), speeds.get(name), flush=True)
    load_after = machine_load()

    command = "python bench/bf16_cost.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# bf16 on this CPU: cost and speed", "",
        f"Command: `{command.strip()}` (written by the script itself).", "",
        f"Machine: {cpu_description()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}.", "",
        f"Load before: {load_before}.  ", f"Load after: {load_after}.",
    ]
    if scores:
        lines += [
            "", "Y-PSNR (dB) under the published protocol through `upscale`, the backend pinned; cost = fp32 - bf16 "
            "(positive: bf16 is worse). eager-bf16: float32 weights under bf16 autocast, the output conv in float32; "
            "bf16 weights: `model.to(torch.bfloat16)`.", "",
            "| model | benchmark | fp32 | eager-bf16 | cost | bf16 weights | cost |", "|---|---|---|---|---|---|---|",
        ]
    verdicts = []
    for name, s in scores.items():
        for bench in s["fp32"]:
            f, a, w = (s[way][bench] for way in WAYS)
            lines.append(f"| {name} | {bench} | {f:.4f} | {a:.4f} | {f - a:+.4f} | {w:.4f} | {f - w:+.4f} |")
        worst = max(s["fp32"][b] - s["eager-bf16"][b] for b in s["fp32"])
        verdicts.append(f"{name}: eager-bf16 costs at most {worst:+.4f} dB: "
                        f"{'within' if worst <= MAX_COST_DB else 'over'} the {MAX_COST_DB} dB bound")
    if speeds:
        labels = list(next(iter(speeds.values())))
        lines += ["", "Seconds (raw forward: fastest of --repeats after a warm-up; upscale: median of --repeats).", "",
                  "| timing | " + " | ".join(speeds) + " |", "|---|" + "---|" * len(speeds),
                  *(f"| {label} | " + " | ".join(f"{speeds[m][label]:.3f}" for m in speeds) + " |" for label in labels)]
    if verdicts:
        lines += ["", f"Verdict (at most {MAX_COST_DB} dB lower than fp32 on Set5 and on Set14; whether it is faster "
                  "is measured by `backend=\"auto\"` on each machine):", "", *(f"- {v}" for v in verdicts)]
    write_result(args.output, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
