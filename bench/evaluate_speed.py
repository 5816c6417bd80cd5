"""evaluate.py's scoring loop: the default fast path against the forced one pass, and bicubic, side by side.

    python bench/evaluate_speed.py                                  # Set5 Set14 BSD100, x2, bsr-lite-x2
    python bench/evaluate_speed.py --benchmarks Set5 Set14          # a shorter run

For each benchmark, in this order in one process: bicubic, bsr-lite-x2 with tile=0 (one pass, eager: what
evaluate.py ran before the fast path), bsr-lite-x2 with the defaults (tile="auto", backend="auto"). Wall time is
evaluate_benchmark's own (reading, degrading, the model, metrics). The default must give the same mean PSNR / SSIM
as one pass to 0.001 dB; the largest per-image difference is shown too. Writes its own section of
bench/results/evaluate.md (replacing an earlier one; bench/evaluate.py's sections above it are kept).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

from common import machine_load

RESULTS = Path(__file__).resolve().parent / "results" / "evaluate.md"
SECTION = "## evaluate.py's default fast path, one pass and bicubic (x2, BI, trained bsr-lite-x2)"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "benchmarks"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmarks", nargs="+", default=["Set5", "Set14", "BSD100"])
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch

    from bsr_hub import BSRModel
    from bsr_hub.data.benchmarks import load_benchmark
    from bsr_hub.evaluation.bicubic import BicubicModel
    from bsr_hub.evaluation.protocol import evaluate_benchmark

    command = "python bench/evaluate_speed.py --benchmarks " + " ".join(args.benchmarks)
    load_before = machine_load()
    model = BSRModel.from_pretrained("bsr-lite-x2")
    bicubic = BicubicModel(2)
    runs = [("bicubic", bicubic, {}), ("bsr-lite-x2, one pass (tile=0, eager)", model, dict(tile=0)),
            ("bsr-lite-x2, default (tile='auto', backend='auto')", model, {})]
    rows = []
    for name in args.benchmarks:
        bench = load_benchmark(name, args.data_dir)
        results, walls = {}, {}
        for label, net, options in runs:
            start = time.perf_counter()
            results[label] = evaluate_benchmark(net, bench, 2, progress=False, **options)
            walls[label] = time.perf_counter() - start
            print(name, label, f"{results[label].psnr:.4f} dB {walls[label]:.1f} s", flush=True)
        rows.append((name, results, walls))
    load_after = machine_load()

    one, fast = runs[1][0], runs[2][0]
    lines = [
        SECTION,
        "",
        f"Command: `{command}` (written by the script itself).",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}. Same process, same images, in the order of the columns.",
        "",
        f"Load before: {load_before}.  ",
        f"Load after: {load_after}.",
        "",
        "| benchmark | images | bicubic s | one pass s | default s | one pass / default "
        "| PSNR one pass | PSNR default | SSIM one pass | SSIM default | largest per-image PSNR diff dB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r, wall in rows:
        per_image = max(abs(a["psnr"] - b["psnr"]) for a, b in zip(r[one].per_image, r[fast].per_image))
        lines.append(
            f"| {name} | {r[one].num_images} | {wall['bicubic']:.1f} | {wall[one]:.1f} | {wall[fast]:.1f} "
            f"| {wall[one] / wall[fast]:.2f}x | {r[one].psnr:.4f} | {r[fast].psnr:.4f} | {r[one].ssim:.5f} "
            f"| {r[fast].ssim:.5f} | {per_image:.5f} |"
        )
    lines += [
        "",
        "'default' is what evaluate.py runs now: on this CPU, images with more than four 2 MiB tiles' worth of pixels",
        "(more than 256x256 LR pixels for bsr-lite) go through cache-sized tiles, and inputs of 256x256 LR pixels or",
        "more run on ONNX Runtime (its graph is exported once, on the first such image: that run's time includes it);",
        "smaller ones run eager, whole (bsr_hub/inference/). Most benchmark images are below both sizes.",
        "Timings on a loaded machine swing by 30 % or more; only ratios within one run mean anything.",
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    earlier = args.output.read_text() if args.output.is_file() else ""
    earlier = earlier.split(SECTION)[0].rstrip()
    args.output.write_text((earlier + "\n\n" if earlier else "") + "\n".join(lines) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
