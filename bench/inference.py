"""Inference benchmark: output megapixels per second and peak memory, side by side in one run.

    python bench/inference.py                       # the full table, written to bench/results/inference.md
    python bench/inference.py --quick               # bsr-lite only, 256x256: a one-minute sanity run

Every configuration runs in a fresh child process so that its peak memory (ru_maxrss) is its own. Throughput
is the best of --repeats timed runs (one for bsr-base on 1024x1024) after a warm-up on a 64x64 crop. The achieved convolution GFLOP/s of each run is set
against the measured speed of a plain 64->64 3x3 conv on this machine (the practical ceiling here).
Random-initialised weights: speed and memory do not depend on the values.
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common import conv_flops, in_child, write_result

RESULTS = Path(__file__).resolve().parent / "results" / "inference.md"


@dataclass
class Case:
    name: str
    preset: str | None  # None: PIL bicubic, the floor
    scale: int
    size: int
    channels_last: bool = True
    tile: int | None = None


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _run_case(case: Case, repeats: int, queue) -> None:
    import numpy as np
    import torch
    from PIL import Image

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (case.size, case.size, 3), dtype=np.uint8))
    small = image.crop((0, 0, 64, 64))
    if case.preset is None:
        run = lambda img=image: img.resize((img.width * case.scale, img.height * case.scale), Image.BICUBIC)
        flops = 0.0
    else:
        from bsr_hub import BSRModel

        model = BSRModel.from_preset(case.preset, scale=case.scale).eval()
        flops = conv_flops(model, case.size)
        run = lambda img=image: model.upscale(img, tile=case.tile, channels_last=case.channels_last)
    base_rss = _peak_rss_mib()
    run(small)  # warm-up on a small crop: kernels and thread pools ready, without the cost of a full run
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    best = min(times)
    out_mp = (case.size * case.scale) ** 2 / 1e6
    queue.put(
        dict(seconds=best, mp_per_s=out_mp / best, gflops=flops / best / 1e9, peak_mib=_peak_rss_mib(),
             extra_mib=_peak_rss_mib() - base_rss)
    )


def _conv_peak(queue) -> None:
    import torch

    conv = torch.nn.Conv2d(64, 64, 3, padding=1).eval()
    results = {}
    for fmt in ("nchw", "channels_last"):
        x = torch.rand(1, 64, 256, 256)
        if fmt == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            conv(x)
            best = min(_timed(lambda: conv(x)) for _ in range(5))
        results[fmt] = 2 * 64 * 64 * 9 * 256 * 256 / best / 1e9
    queue.put(results)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cases(quick: bool) -> list[Case]:
    presets = ["bsr-lite"] if quick else ["bsr-lite", "bsr-base"]
    sizes = [256] if quick else [256, 1024]
    out = []
    for size in sizes:
        for scale in (2, 4):
            out.append(Case(f"PIL bicubic x{scale}", None, scale, size))
            for preset in presets:
                if preset == "bsr-base" and size == 1024:
                    # 13 TFLOP per image: a single tiled run per scale keeps the table in minutes.
                    out.append(Case(f"{preset} x{scale} tiled 256", preset, scale, size, tile=256))
                    continue
                out.append(Case(f"{preset} x{scale} NCHW", preset, scale, size, channels_last=False))
                out.append(Case(f"{preset} x{scale} channels_last", preset, scale, size))
                out.append(Case(f"{preset} x{scale} channels_last tiled 128", preset, scale, size, tile=128))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="bsr-lite at 256x256 only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch

    command = "python bench/inference.py" + (" --quick" if args.quick else "") + f" --repeats {args.repeats}"
    peak = in_child(_conv_peak)
    rows = []
    for case in cases(args.quick):
        # bsr-base on 1024x1024 costs minutes per run: timed once.
        r = in_child(_run_case, case, 1 if case.preset == "bsr-base" and case.size > 256 else args.repeats)
        rows.append((case, r))
        print(f"{case.size:>5} {case.name:38} {r['mp_per_s']:8.3f} MP/s {r['peak_mib']:8.0f} MiB", flush=True)

    # The 2000x2000 photo at x4 with tiling: the memory bar of the issue (under 3 GiB).
    big = Case("bsr-lite x4 tiled 256, 2000x2000 input", "bsr-lite", 4, 2000, tile=256)
    big_r = in_child(_run_case, big, 1)
    print(f"2000x2000 x4 tiled: {big_r['seconds']:.1f} s, peak {big_r['peak_mib']:.0f} MiB", flush=True)

    lines = [
        "# Inference benchmark",
        "",
        f"Command: `{command}` (written by the script itself).",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, Python {platform.python_version()}. fp32, batch 1, random-initialised weights.",
        "",
        f"Plain 64->64 3x3 conv on 256x256 (the practical ceiling): {peak['nchw']:.0f} GFLOP/s NCHW, "
        f"{peak['channels_last']:.0f} GFLOP/s channels_last.",
        "",
        "| input | configuration | seconds | output MP/s | conv GFLOP/s | % of conv ceiling | peak RSS MiB | added by the run MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ceiling = max(peak.values())
    for case, r in rows + [(big, big_r)]:
        share = f"{100 * r['gflops'] / ceiling:.0f}%" if r["gflops"] else "-"
        gf = f"{r['gflops']:.0f}" if r["gflops"] else "-"
        lines.append(
            f"| {case.size}x{case.size} | {case.name} | {r['seconds']:.3f} | {r['mp_per_s']:.3f} | {gf} | {share} "
            f"| {r['peak_mib']:.0f} | {r['extra_mib']:.0f} |"
        )
    lines += [
        "",
        "Peak RSS is the whole process (Python, torch and the model included); 'added by the run' is the growth",
        "during the timed runs. The 2000x2000 x4 row is the issue's bar: tiled upscaling of a large",
        "photo must stay under 3 GiB.",
    ]
    write_result(args.output, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
