"""Peak memory of explicit tiling (`upscale(..., tile=128)`) against the input size: what grows with the image.

    python bench/tiling_memory.py                      # 1000, 2000 and 4000 px squares, bsr-tiny-x2, tile=128
    python bench/tiling_memory.py --sizes 4000 --out bench/results/tiling_memory.md

Each case runs in a fresh process, so its peak resident memory (ru_maxrss) is its own: the figure is the peak
during `upscale` minus the peak before it (model loaded, input image made). The tile bounds the network's
activations; what is left grows with the image: the input and output images themselves and the buffers the tiles
are assembled in. The model's width changes only the per-tile part, so the small bsr-tiny-x2 keeps the run short.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def measure(size: int, tile: int, model_name: str) -> dict:
    """In this process: peak memory of one upscale of a size x size RGB image (MiB above the set-up's peak)."""
    import numpy as np
    import torch
    from PIL import Image

    from bsr_hub import BSRModel

    model = BSRModel.from_pretrained(model_name)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))
    with torch.no_grad():
        model.upscale(image.crop((0, 0, 64, 64)), tile=tile, backend="eager")  # allocator and kernels warmed up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    result = model.upscale(image, tile=tile, backend="eager")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    output_bytes = result.width * result.height * 3
    return {"size": size, "tile": tile, "model": model_name, "peak_mib": (after - before) / 1024,
            "output_image_mib": output_bytes / 2**20}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000])
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--model", default="bsr-tiny-x2")
    parser.add_argument("--out", default=None, help="write a Markdown result file here")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # the child process's case
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure(args.one, args.tile, args.model)))
        return 0
    sys.path.insert(0, str(HERE))
    from common import machine_load, write_result

    rows = []
    for size in args.sizes:
        child = subprocess.run([sys.executable, __file__, "--one", str(size), "--tile", str(args.tile),
                                "--model", args.model], capture_output=True, text=True, check=True)
        row = json.loads(child.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{size}x{size} x2 at tile={args.tile}: peak {row['peak_mib']:.0f} MiB above the set-up "
              f"(the 8-bit output image alone: {row['output_image_mib']:.0f} MiB)")
    if args.out:
        command = "python bench/tiling_memory.py " + " ".join(argv if argv is not None else sys.argv[1:])
        lines = [f"# Peak memory of explicit tiling ({args.model}, tile={args.tile})", "",
                 f"Command: `{command}`", f"Machine: {machine_load()}", "",
                 "| input | peak during upscale (MiB) | 8-bit RGB output image (MiB) |", "|---|---:|---:|"]
        lines += [f"| {r['size']}x{r['size']} | {r['peak_mib']:.0f} | {r['output_image_mib']:.0f} |" for r in rows]
        write_result(Path(args.out), lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
