"""The bundled zoo side by side: speed of every bundled checkpoint on the same inputs, in one run, with its quality.

    python bench/zoo.py                  # writes bench/results/zoo.md
    python bench/zoo.py --repeats 3      # quicker

Models are timed round-robin (one run of each, then the next round), so a load that comes and goes on this
shared machine falls on all of them alike; each figure is the median over rounds, after one warm-up run.
Inputs are crops of a bundled photo (real pixels; the speed does not depend on them). Quality is read from each
checkpoint's measured `eval_results.json`, not re-measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from common import conv_flops

RESULTS = Path(__file__).resolve().parent / "results" / "zoo.md"
SIZES = (256, 512)  # input sides: a thumbnail / video frame, and a larger crop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per model and size (median)")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image

    from bsr_hub import BSRModel, bundled_checkpoints
    from bsr_hub.core.examples import example_images

    photo = np.asarray(Image.open(example_images()[0]).convert("RGB"))
    names = list(bundled_checkpoints())
    models = {n: BSRModel.from_pretrained(n).eval() for n in names}
    crops = {}
    for size in SIZES:
        tiled = np.tile(photo, (size // photo.shape[0] + 1, size // photo.shape[1] + 1, 1))  # photos under 512 px
        crops[size] = Image.fromarray(np.ascontiguousarray(tiled[:size, :size]))

    times: dict[tuple[str, int], list[float]] = {(n, s): [] for n in names for s in SIZES}
    for size in SIZES:
        for name in names:
            models[name].upscale(crops[size], tile=None)  # warm-up (allocator, first-call costs)
        for _ in range(args.repeats):
            for name in names:
                t0 = time.perf_counter()
                models[name].upscale(crops[size], tile=None)
                times[(name, size)].append(time.perf_counter() - t0)

    def psnr(name: str, bench: str) -> str:
        store = bundled_checkpoints()[name] / "eval_results.json"
        rows = json.loads(store.read_text())["results"] if store.is_file() else []
        found = [r["psnr"] for r in rows if r["benchmark"] == bench and not r["self_ensemble"]
                 and r["degradation"] == "BI" and r["scale"] == models[name].scale]
        return f"{found[0]:.2f}" if found else "-"

    reference = "bsr-lite-x2" if "bsr-lite-x2" in names else names[0]
    lines = [
        "# The bundled zoo: speed and quality side by side",
        "",
        f"Command: `python bench/zoo.py --repeats {args.repeats}` (written by the script itself).",
        "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, Python {platform.python_version()}. fp32, batch 1, one pass (`tile=None`), trained "
        f"weights. Median of {args.repeats} round-robin runs after a warm-up. Load: {os.getloadavg()[0]:.1f} "
        "(1-minute average when the run ended; other jobs on the machine slow every model alike).",
        "",
        "| checkpoint | parameters | conv GFLOP per input MP | "
        + " | ".join(f"{s}x{s} input: s (frames/s)" for s in SIZES)
        + f" | speed vs {reference} at {SIZES[0]} | Y-PSNR Set5 / Set14 / BSD100 |",
        "|---|---|---|" + "---|" * len(SIZES) + "---|---|",
    ]
    ref = statistics.median(times[(reference, SIZES[0])])
    for name in names:
        model = models[name]
        cells = []
        for size in SIZES:
            t = statistics.median(times[(name, size)])
            cells.append(f"{t:.3f} ({1 / t:.1f})")
        speedup = ref / statistics.median(times[(name, SIZES[0])])
        quality = " / ".join(psnr(name, b) for b in ("Set5", "Set14", "BSD100"))
        lines.append(
            f"| {name} (x{model.scale}) | {model.num_parameters():,} | {conv_flops(model, 1000) / 1e9:.1f} | "
            + " | ".join(cells) + f" | {speedup:.2f}x | {quality} |"
        )
    text = "\n".join(lines) + "\n"
    Path(args.output).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
