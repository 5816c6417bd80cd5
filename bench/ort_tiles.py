"""ONNX Runtime on cache-sized tiles, on what `tile="auto"` plans for it, on mid-sized tiles and on the whole image:
time and peak memory, side by side (why tiling.ONNXRUNTIME_TILE_FEATURE_BYTES exists).

    python bench/ort_tiles.py [--threads 1] [--repeats 2] [--sizes 512x512 704x704 1024x1024 1280x720]

bsr-lite-x2 through `upscale(..., backend="onnxruntime", tile=N)` on Set14's baboon resized to each size, N being
what `plan_tiling` gives for PyTorch (2 MiB feature maps), what it gives for ONNX Runtime (the default), tiles of
16 MiB maps split evenly (as `plan_tiling` would with that target), and 0 (one pass). Each row runs in a fresh child
process: one untimed call (the export and ONNX Runtime's first run at that shape), then --repeats timed calls (the
fastest counts); peak RSS is the child's. The rows run one after another. Writes bench/results/ort_tiles.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import cpu_description, machine_load, write_result

PHOTO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "benchmarks" / "Set14" / "baboon.png"

CHILD = r"""
import json, resource, sys, time
import torch
from PIL import Image
from bsr_hub import BSRModel
torch.set_num_threads(int(sys.argv[1]))
w, h, tile, repeats = (int(a) for a in sys.argv[2:6])
model = BSRModel.from_pretrained("bsr-lite-x2").eval()
image = Image.open(sys.argv[6]).convert("RGB").resize((w, h), Image.BICUBIC)
model.upscale(image, backend="onnxruntime", tile=tile)
best = float("inf")
for _ in range(repeats):
    start = time.perf_counter()
    model.upscale(image, backend="onnxruntime", tile=tile)
    best = min(best, time.perf_counter() - start)
print(json.dumps({"seconds": best, "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sizes", nargs="+", default=["512x512", "704x704", "1024x1024", "1280x720"])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ort_tiles.md")
    args = parser.parse_args()

    from bsr_hub import BSRModel
    from bsr_hub.inference import tiling

    lite = BSRModel.from_preset("bsr-lite", scale=2)
    command = (f"python bench/ort_tiles.py --threads {args.threads} --repeats {args.repeats} "
               f"--sizes {' '.join(args.sizes)}")
    lines = ["# ONNX Runtime: cache-sized tiles, the default plan, mid-sized tiles, the whole image", "",
             f"`{command}`; CPU: {cpu_description()}.", f"Load at the start: {machine_load()}.", "",
             ("bsr-lite-x2, `upscale(backend=\"onnxruntime\")`, fastest of the timed calls, peak RSS of the row's own "
              "process (model, image and output included)."), "",
             "| size | tiles | LR pixels run (with border) | s | vs cache-sized | peak GiB |",
             "|---|---|---:|---:|---:|---:|"]
    for size in args.sizes:
        w, h = (int(v) for v in size.split("x"))
        ort_side = tiling.cpu_tile_side(lite, 1, tiling.ONNXRUNTIME_TILE_FEATURE_BYTES)
        mid = tiling._best_tile(h, w, ort_side, tiling.DEFAULT_TILE_OVERLAP)
        rows = {"cache-sized (2 MiB maps)": tiling.plan_tiling(lite, 1, h, w).size or 0,
                "default for onnxruntime": tiling.plan_tiling(lite, 1, h, w, backend="onnxruntime").size or 0,
                "mid-sized (16 MiB maps)": 0 if mid >= max(w, h) else mid,
                "whole image": 0}
        results = {}
        for label, tile in rows.items():
            out = subprocess.run([sys.executable, "-c", CHILD, str(args.threads), str(w), str(h), str(tile),
                                  str(args.repeats), str(PHOTO)], capture_output=True, text=True, check=True)
            results[label] = json.loads(out.stdout.strip().splitlines()[-1])
        base = results["cache-sized (2 MiB maps)"]["seconds"]
        for label, tile in rows.items():
            r = results[label]
            pixels = tiling.pixels_run(h, w, tiling.Tiling(tile or None))
            what = f"{tile}x{tile}" if tile else "one pass"
            lines.append(f"| {w}x{h} | {label}: {what} | {pixels:,} | {r['seconds']:.2f} | "
                         f"{r['seconds'] / base:.2f} | {r['peak_gib']:.2f} |")
    lines += ["", f"Load at the end: {machine_load()}."]
    write_result(args.out, lines)


if __name__ == "__main__":
    main()
