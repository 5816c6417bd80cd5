"""Evaluator benchmark: seconds to evaluate Set14 x2 with bsr-lite, untiled and tiled, and the evaluator's overhead.

    python bench/evaluate.py                  # Set14 x2, bsr-lite (random init), untiled and --tile 64
    python bench/evaluate.py --tile 128 --threads 1

The model is `BSRModel.from_preset("bsr-lite", scale=2)` with a fixed seed and random weights: timing does not
depend on the weights (PSNR of a random net is meaningless and is not reported). The evaluation is exactly what
`evaluate.py` runs (`bsr_hub.evaluation.protocol.evaluate_benchmark`), whose per-stage clocks give the split:
model = `upscale` (tiling included); overhead = reading PNGs + mod-crop/degradation + metrics (PSNR/SSIM on Y)
+ the rest of the loop, as a share of the total. Results go to bench/results/evaluate.md with the command.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "benchmarks"
RESULTS = Path(__file__).resolve().parent / "results" / "evaluate.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", default="Set14")
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--tile", type=int, default=64, help="tile size (LR pixels) of the tiled run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO))
    import torch

    from bsr_hub import BSRModel
    from bsr_hub.data.benchmarks import load_benchmark
    from bsr_hub.evaluation.protocol import evaluate_benchmark

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = BSRModel.from_preset("bsr-lite", scale=args.scale).eval()
    bench = load_benchmark(args.benchmark, DATA)
    # Warm-up on one image so that one-off costs (oneDNN primitive creation, page faults) hit neither run.
    evaluate_benchmark(model, type(bench)(bench.name, bench.images[:1]), args.scale, progress=False)

    rows = []
    for label, tile in (("untiled", None), (f"tile {args.tile}", args.tile)):
        t0 = time.perf_counter()
        result = evaluate_benchmark(model, bench, args.scale, tile=tile, progress=False)
        total = time.perf_counter() - t0
        t = result.timing_s
        overhead = total - t["model"]
        rows.append((label, total, t, overhead))
        print(f"{label}: {total:.1f} s total, model {t['model']:.1f} s, overhead {overhead / total:.1%}", flush=True)

    command = "python bench/evaluate.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"# Evaluator benchmark: {args.benchmark} x{args.scale}, bsr-lite ({model.num_parameters():,} parameters, "
        "random init: timing only)",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {len(bench.images)} images, CPU fp32. Timings on this shared 2-core "
        "machine swing by about 30 % between runs; compare rows of one run only.",
        "",
        "| run | total (s) | model (s) | read (s) | degrade (s) | metrics (s) | overhead share |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, total, t, overhead in rows:
        lines.append(
            f"| {label} | {total:.2f} | {t['model']:.2f} | {t['read']:.2f} | {t['degrade']:.2f} | "
            f"{t['metrics']:.2f} | {overhead / total:.1%} |"
        )
    lines += [
        "",
        "overhead = total - model: reading PNGs, mod-crop + MATLAB-bicubic degradation, PSNR/SSIM on Y, and the loop.",
        "",
    ]
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
