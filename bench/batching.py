"""Does batching equal-size images help `bsr-hub upscale` on a folder? One run, side by side.

    python bench/batching.py                      # 8 crops of 128x128 and 8 of 256x256, batch 1 / 4 / 8
    python bench/batching.py --sizes 128          # the small crops only

Times `upscale_many(model, images, batch_size=b)` (what `bsr-hub upscale --batch-size b` calls) on the bundled
bsr-lite-x2 with the default tile and backend, median of --repeats after one untimed call; the batch sizes
alternate within each repeat so that load changes hit them alike. Writes bench/results/batching.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from common import machine_load, write_result

RESULTS = Path(__file__).resolve().parent / "results" / "batching.md"
PHOTO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "benchmarks" / "Set14" / "baboon.png"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch
    from PIL import Image

    from bsr_hub import BSRModel
    from bsr_hub.inference.api import upscale_many

    model = BSRModel.from_pretrained("bsr-lite-x2")
    photo = Image.open(PHOTO).convert("RGB")
    load = machine_load()
    rows = []
    for size in args.sizes:
        crops = [photo.crop((x, y, x + size, y + size)) for x in (0, 200) for y in (0, 60, 120, 200)][:8]
        sizes = (1, 4, 8)
        for b in sizes:
            upscale_many(model, crops, batch_size=b)  # builds the backend, warms the allocator
        times = {b: [] for b in sizes}
        for _ in range(args.repeats):
            for b in sizes:
                start = time.perf_counter()
                upscale_many(model, crops, batch_size=b)
                times[b].append(time.perf_counter() - start)
        base = statistics.median(times[1])
        for b in sizes:
            med = statistics.median(times[b])
            rows.append(f"| {size}x{size} | {b} | {med:.2f} | {base / med:.2f}x |")
            print(rows[-1], flush=True)
    lines = [
        "# Batching equal-size images (bsr-hub upscale --batch-size)",
        "",
        f"Command: `python bench/batching.py --repeats {args.repeats} --sizes {' '.join(map(str, args.sizes))}` "
        "(written by the script itself).",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}; bundled bsr-lite-x2, default tile and backend, 8 crops of Set14 baboon.",
        "",
        f"Load at the start: {load}.",
        "",
        f"| crop | batch size | seconds for 8 images (median of {args.repeats}) | speed-up vs batch 1 |",
        "|---|---|---|---|",
        *rows,
    ]
    write_result(args.output, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
