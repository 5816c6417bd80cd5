"""Peak memory of explicit tiling (`upscale(..., tile=128)`) against the image size: what grows with the image.

    python bench/tiling_memory.py                      # 1000 and 2000 px squares, bsr-tiny-x2, tile=128
    python bench/tiling_memory.py --model bsr-tiny --scale 4 --sizes 3088x2056 --before HEAD~1 \\
        --out bench/results/tiling_memory.md           # a 12352x8224 result, this tree against an older one

Each case runs in a fresh process and reads its own peak resident memory (VmHWM in /proc/self/status; ru_maxrss
would start from the parent's peak, ENVIRONMENT.md): the figure is the peak during `upscale` of an RGB PIL image
minus the peak before it (model loaded, input image made), and, beside it, what is left once the output image
itself is taken off. The tile bounds the network's activations; what is left grows with the image: the input's
float copy and whatever the result is assembled in. The model's width changes only the per-tile part, so a small
model keeps the run short: a name that is not bundled (`bsr-tiny`) is that preset, randomly initialised, and
`interpolate` is no network at all (torch's bicubic), which leaves the image buffers alone.

`--before REV` runs every case a second time, side by side, on the package as it was at REV (`git archive` of
`bsr_hub/` into a temporary folder put first on the child's sys.path).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def peak_rss_kib() -> int:
    """This process's own peak resident memory (KiB)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def size_arg(text: str) -> tuple[int, int]:
    """"1000" (a square) or "3088x2056" (width x height)."""
    width, _, height = text.partition("x")
    return int(width), int(height or width)


def interpolate_model(scale: int):
    """torch's bicubic `F.interpolate` standing in for a network (`--model interpolate`): the tiles, their outputs
    and the assembly are the same, the network's own activations are left out, and 100 M output pixels take a
    minute or two here instead of a quarter of an hour."""
    import torch
    import torch.nn.functional as F

    from bsr_hub.inference.protocol import PixelMemory

    class Interpolate(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale, self.device, self.dtype = scale, torch.device("cpu"), torch.float32

        def memory_per_input_pixel(self) -> PixelMemory:
            return PixelMemory(feature_map=12, peak=12 * (1 + scale * scale))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)  # (B, 3, sh, sw)

    return Interpolate()


def measure(width: int, height: int, tile: int, model_name: str, scale: int | None) -> dict:
    """In this process: peak memory of one upscale of a width x height RGB image (MiB above the set-up's peak)."""
    import numpy as np
    import torch
    from PIL import Image

    import bsr_hub
    from bsr_hub import BSRModel, bundled_checkpoints
    from bsr_hub.inference.api import upscale

    if model_name == "interpolate":
        model = interpolate_model(scale or 2)
    elif model_name in bundled_checkpoints():
        model = BSRModel.from_pretrained(model_name)
    else:
        torch.manual_seed(0)
        model = BSRModel.from_preset(model_name, scale=scale or 2).eval()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))
    with torch.no_grad():
        upscale(model, image.crop((0, 0, 64, 64)), tile=tile, backend="eager")  # allocator and kernels warmed up
    before = peak_rss_kib()
    result = upscale(model, image, tile=tile, backend="eager")
    after = peak_rss_kib()
    output_bytes = result.width * result.height * 4  # Pillow stores RGB as 4 bytes per pixel
    return {"width": width, "height": height, "scale": model.scale, "tile": tile, "model": model_name,
            "package": str(Path(bsr_hub.__file__).parent), "peak_mib": (after - before) / 1024,
            "output_image_mib": output_bytes / 2**20}


def run_child(size: tuple[int, int], args: argparse.Namespace, package_root: str | None) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if package_root is not None:
        env["PYTHONPATH"] = os.pathsep.join([package_root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    command = [sys.executable, __file__, "--one", f"{size[0]}x{size[1]}", "--tile", str(args.tile),
               "--model", args.model] + (["--scale", str(args.scale)] if args.scale else [])
    child = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(child.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=size_arg, nargs="+", default=[(1000, 1000), (2000, 2000)],
                        help="input sizes: N (N x N) or WxH")
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--model", default="bsr-tiny-x2", help="a bundled checkpoint, or a preset (random weights)")
    parser.add_argument("--scale", type=int, default=None, help="the preset's scale (a bundled checkpoint has its own)")
    parser.add_argument("--before", default=None, help="also run each case on bsr_hub/ as it was at this git revision")
    parser.add_argument("--out", default=None, help="write a Markdown result file here")
    parser.add_argument("--one", type=size_arg, default=None, help=argparse.SUPPRESS)  # the child process's case
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure(*args.one, args.tile, args.model, args.scale)))
        return 0
    sys.path.insert(0, str(HERE))
    from common import cpu_description, machine_load, write_result

    with tempfile.TemporaryDirectory() as old_tree:
        trees = {"now": None}
        if args.before:
            revision = subprocess.run(["git", "rev-parse", "--short", args.before], capture_output=True, text=True,
                                      check=True, cwd=HERE).stdout.strip()
            archive = subprocess.run(["git", "archive", revision, "bsr_hub"], capture_output=True, check=True,
                                     cwd=HERE.parent).stdout
            subprocess.run(["tar", "-x", "-C", old_tree], input=archive, check=True)
            trees = {f"at {revision}": old_tree, "now": None}
        load = machine_load()
        rows = []
        for size in args.sizes:
            for label, root in trees.items():  # side by side: before, then now, for each size
                row = run_child(size, args, root) | {"tree": label}
                rows.append(row)
                print(f"{label}: {row['width']}x{row['height']} x{row['scale']} at tile={args.tile}: peak "
                      f"{row['peak_mib']:.0f} MiB above the set-up, {row['peak_mib'] - row['output_image_mib']:.0f} "
                      f"MiB above the output image ({row['output_image_mib']:.0f} MiB)", flush=True)
    if args.out:
        command = "python bench/tiling_memory.py " + " ".join(argv if argv is not None else sys.argv[1:])
        lines = [f"# Peak memory of explicit tiling ({args.model}, tile={args.tile})", "",
                 f"Command: `{command}`", f"CPU: {cpu_description()}", f"Machine at the start: {load}", "",
                 "| tree | input | output | peak during upscale (MiB) | output image (MiB) | above the output image (MiB) |",
                 "|---|---|---|---:|---:|---:|"]
        lines += [f"| {r['tree']} | {r['width']}x{r['height']} | {r['width'] * r['scale']}x{r['height'] * r['scale']} | "
                  f"{r['peak_mib']:.0f} | {r['output_image_mib']:.0f} | {r['peak_mib'] - r['output_image_mib']:.0f} |"
                  for r in rows]
        write_result(Path(args.out), lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
