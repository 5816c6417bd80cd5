"""Does the pass the backends are timed on decide which one `upscale` picks? (issue 27: autotune.plan_probes)

    python bench/probe_sizes.py --threads 2            # writes bench/results/probe_sizes.md
    python bench/probe_sizes.py --models bsr-tiny-x2 --sizes 256x256 --rounds 5

For `bsr-tiny-x2` and `bsr-lite-x2` at each size, every candidate of autotune (eager NCHW, eager channels_last, jit,
onnxruntime) is

- run through `upscale(model, image, backend=..., channels_last=...)` on its own tiling: what it really takes;
- timed on one pass of PyTorch's cache-sized tile (the probe before plan_probes: one tile-sized input for every
  candidate), its time scaled by the passes its own tiling makes of the image;
- timed on one pass of its own tiling (plan_probes: ONNX Runtime's larger tile, or the whole image where the plan
  runs it whole), scaled the same way.

Each probe is the median of the rounds here (autotune times one or two passes), so the table shows what each probe
predicts, not its one-pass noise. For each way the pick is the least estimate; "pick's real time" is that pick's
`upscale` time over the fastest `upscale` time. Rounds are interleaved, the order rotated each round, and the median
reported: compare within this run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import cpu_description, machine_load, write_result

RESULTS = Path(__file__).resolve().parent / "results" / "probe_sizes.md"
MODELS = ("bsr-tiny-x2", "bsr-lite-x2")
SIZES = ("256x256", "512x512", "1280x720")


def _photo(width: int, height: int):
    from PIL import Image

    from bsr_hub.core.examples import example_images

    image = Image.open(example_images()[2]).convert("RGB")  # chelsea: a real photo, resized to the size asked for
    return image.resize((width, height), Image.BICUBIC)


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _configs(name: str, width: int, height: int):
    """(label, run) per configuration, and each candidate's two probes (shape, passes per image); all warmed up."""
    from bsr_hub import BSRModel
    from bsr_hub.inference import autotune
    from bsr_hub.inference.api import resolve_tiling
    from bsr_hub.inference.backends import get_runner
    from bsr_hub.inference.tiling import AUTO, BORDER_CONTEXT, DEFAULT_TILE_OVERLAP, cpu_tile_side, pixels_run

    model = BSRModel.from_pretrained(name).eval()
    image = _photo(width, height)
    shape = (1, 3, height, width)

    def tiling_for(backend: str):
        return resolve_tiling(AUTO, DEFAULT_TILE_OVERLAP, model, shape, backend)

    own = autotune.plan_probes(model, shape, BORDER_CONTEXT, tiling_for)
    old_shape = autotune.probe_shape(shape, tiling_for("eager"), BORDER_CONTEXT, cpu_tile_side(model, 1))
    old = {n: autotune.Probe(old_shape, pixels_run(height, width, tiling_for(autotune._BY_NAME[n].backend),
                                                   BORDER_CONTEXT) / (old_shape[1] * old_shape[2])) for n in own}
    runs: list[tuple[str, Callable[[], object]]] = []
    for n in own:
        c = autotune._BY_NAME[n]
        runs.append((f"upscale|{n}",
                     lambda c=c: model.upscale(image, backend=c.backend, channels_last=c.channels_last)))
        for way, probe in (("cache-sized tile", old[n]), ("own tiling's pass", own[n])):
            x = torch.rand(*probe.shape[:1], 3, *probe.shape[1:]).contiguous(memory_format=c.memory_format)
            runner = get_runner(model, c.backend, c.memory_format)
            runs.append((f"{way}|{n}", torch.no_grad()(lambda r=runner, x=x: r(x))))
    for _, run in runs:
        run()
    return runs, {"cache-sized tile": old, "own tiling's pass": own}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), help="WxH of the LR input")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = machine_load()
    lines = ["# The pass the backends are timed on, and what `upscale` then picks (issue 27)", "",
             f"Command: `python bench/probe_sizes.py {' '.join(argv if argv is not None else sys.argv[1:])}`. "
             f"{torch.get_num_threads()} threads, torch {torch.__version__}.", "",
             f"CPU: {cpu_description()}. Load before: {load_before}", "",
             "Median of the interleaved rounds (order rotated each round). 'upscale': the candidate named to "
             "`upscale` on its own tiling. 'estimate': one pass on the probe (median) x its passes per image. "
             "'pick': the least estimate of that way; its real time is its upscale time over the fastest upscale.", ""]
    for name in args.models:
        for size in args.sizes:
            width, height = (int(v) for v in size.split("x"))
            runs, probes = _configs(name, width, height)
            times: dict[str, list[float]] = {label: [] for label, _ in runs}
            for r in range(args.rounds):
                for label, run in runs[r % len(runs):] + runs[: r % len(runs)]:
                    times[label].append(_timed(run))
            median = {label: statistics.median(t) for label, t in times.items()}
            real = {n: median[f"upscale|{n}"] for n in probes["own tiling's pass"]}
            fastest = min(real.values())
            lines += [f"## {name}, {size}", "",
                      "| candidate | upscale (s) | cache-sized tile: pass | estimate (s) | own tiling: pass "
                      "| estimate (s) |",
                      "|---|---:|---|---:|---|---:|"]
            estimates = {way: {n: median[f"{way}|{n}"] * p.work for n, p in ps.items()} for way, ps in probes.items()}
            for n in real:
                cells = [f"{real[n]:.3f}"]
                for way, ps in probes.items():
                    _, h, w = ps[n].shape
                    cells += [f"{w}x{h}", f"{estimates[way][n]:.3f}"]
                lines.append(f"| {n} | " + " | ".join(cells) + " |")
            lines.append("")
            for way in probes:
                pick = min(estimates[way], key=estimates[way].get)
                lines.append(f"- {way}: picks {pick}, whose real time is **{real[pick] / fastest:.2f}x** the fastest "
                             f"({min(real, key=real.get)})")
            lines.append("")
            print(f"{name} {size}: done", file=sys.stderr)
    lines += [f"Load after: {machine_load()}", ""]
    write_result(args.output, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
