"""The default upscale path against today's one pass and against every backend, side by side in one run.

    python bench/fast_path.py                                  # 1024x1024 x2, every row, 5 repeats
    python bench/fast_path.py --size 512 --rows backends       # the backend table only, at 512x512
    python bench/fast_path.py --rows default --repeats 5       # one pass (forced) against the default only

Model: the bundled, trained bsr-lite-x2. Input: Set14 baboon resized to --size (a photo, so that max |diff| means
something; speed does not depend on content). Every row runs in a fresh child process (its peak RSS is its own):
one untimed first call (for built backends it includes the export / trace / compile, reported as "first call"),
then --repeats timed calls; the table gives their median. max |diff| is in 8-bit grey levels against the forced
one-pass output of the same run. conv GFLOP/s counts the untiled network's convolutions, so a tiled row is not
credited for the overlap it recomputes. The ceiling is a plain 3x3 convolution timed in the same run (medians of 5):
64->64 on 256x256 (the figure bench/results/inference.md uses) and 32->32 (bsr-lite's width) on a 128x128 tile.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import conv_flops, in_child, machine_load, write_result

RESULTS = Path(__file__).resolve().parent / "results" / "fast_path.md"
PHOTO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "benchmarks" / "Set14" / "baboon.png"


@dataclass
class Row:
    name: str
    options: dict = field(default_factory=dict)  # passed to model.upscale
    group: str = "backends"


ROWS = [
    Row("one pass, eager NCHW (before: tile=None was this)", dict(tile=0, backend="eager", channels_last=False), "default"),
    Row("default: tile='auto', backend='auto'", {}, "default"),
    Row("auto tiles, eager NCHW", dict(backend="eager", channels_last=False)),
    Row("auto tiles, eager channels_last", dict(backend="eager", channels_last=True)),
    Row("auto tiles, jit (traced, frozen, optimize_for_inference)", dict(backend="jit")),
    Row("auto tiles, torch.compile (inductor, freezing)", dict(backend="compile")),
    Row("auto tiles, onnxruntime (CPU provider)", dict(backend="onnxruntime")),
]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _photo(size: int):
    from PIL import Image

    return Image.open(PHOTO).convert("RGB").resize((size, size), Image.LANCZOS)


def _run_row(row: Row, size: int, repeats: int, threads: int, reference: str, queue) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from bsr_hub import BSRModel
    from bsr_hub.inference import api

    model = BSRModel.from_pretrained("bsr-lite-x2")
    image = _photo(size)
    try:
        start = time.perf_counter()
        out = model.upscale(image, **row.options)
        first = time.perf_counter() - start
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.upscale(image, **row.options)
            times.append(time.perf_counter() - start)
    except Exception as err:  # a backend that breaks is a row that says so
        queue.put(dict(error=f"{type(err).__name__}: {str(err)[:200]}"))
        return
    arr = np.asarray(out).astype(np.int16)
    if not os.path.exists(reference):
        np.save(reference, arr)
    diff = int(np.abs(arr - np.load(reference)).max())
    run = api.plan_run(model, (1, 3, size, size), tile=row.options.get("tile", "auto"),
                       backend=row.options.get("backend", "auto"))  # what upscale ran: its tiling and backend
    plan = run.tiling
    queue.put(dict(first=first, median=statistics.median(times), low=min(times), high=max(times),
                   flops=conv_flops(model, size), peak_mib=_peak_rss_mib(), diff=diff,
                   plan=f"{'whole' if plan.whole else f'tiles of {plan.size}'}, {run.backend}"))


def _conv_ceiling(threads: int, queue) -> None:
    import torch

    torch.set_num_threads(threads)
    results = {}
    for channels, size in ((64, 256), (32, 128)):
        conv = torch.nn.Conv2d(channels, channels, 3, padding=1).eval()
        for fmt in ("NCHW", "channels_last"):
            x = torch.rand(1, channels, size, size)
            if fmt == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            times = []
            with torch.no_grad():
                conv(x)
                for _ in range(5):
                    start = time.perf_counter()
                    conv(x)
                    times.append(time.perf_counter() - start)
            results[(channels, size, fmt)] = 2 * channels * channels * 9 * size * size / statistics.median(times) / 1e9
    queue.put(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, help="input side in pixels (default 1024)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", choices=["all", "default", "backends"], default="all")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own default)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch

    threads = args.threads or torch.get_num_threads()
    command = (f"python bench/fast_path.py --size {args.size} --repeats {args.repeats} --rows {args.rows}"
               + (f" --threads {args.threads}" if args.threads else ""))
    load_before = machine_load()
    ceiling = in_child(_conv_ceiling, threads)
    rows = [r for r in ROWS if args.rows == "all" or r.group == args.rows]
    if rows[0] is not ROWS[0]:
        rows.insert(0, ROWS[0])  # the reference every max |diff| is taken against
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        reference = os.path.join(tmp, "one_pass.npy")
        for row in rows:
            r = in_child(_run_row, row, args.size, args.repeats, threads, reference)
            results.append((row, r))
            print(row.name, r, flush=True)
    load_after = machine_load()

    best = max(ceiling.values())
    base = results[0][1]
    lines = [
        f"# The default upscale path: {args.size}x{args.size} x2, bsr-lite-x2",
        "",
        f"Command: `{command}` (written by the script itself).",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {threads} torch threads, torch {torch.__version__}, "
        f"Python {platform.python_version()}. fp32, batch 1, the bundled trained bsr-lite-x2, Set14 baboon resized "
        f"to {args.size}x{args.size}.",
        "",
        f"Load before: {load_before}.  ",
        f"Load after: {load_after}.",
        "",
        "Plain 3x3 conv, median of 5 (the ceiling): "
        + ", ".join(f"{c}->{c} on {s}x{s} {fmt} {g:.0f} GFLOP/s" for (c, s, fmt), g in ceiling.items())
        + f". Best: {best:.0f} GFLOP/s.",
        "",
        f"| configuration | runs as | first call s | median s ({args.repeats} runs) | min-max s | speed-up vs one pass "
        "| conv GFLOP/s | % of best conv | peak RSS MiB | max diff (grey levels) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row, r in results:
        if "error" in r:
            lines.append(f"| {row.name} | failed: {r['error']} | | | | | | | | |")
            continue
        gflops = r["flops"] / r["median"] / 1e9
        lines.append(
            f"| {row.name} | {r['plan']} | {r['first']:.2f} | {r['median']:.2f} | {r['low']:.2f}-{r['high']:.2f} "
            f"| {base['median'] / r['median']:.2f}x | {gflops:.0f} | {100 * gflops / best:.0f}% | {r['peak_mib']:.0f} "
            f"| {r['diff']} |"
        )
    lines += [
        "",
        "Peak RSS is the whole child process (Python, torch, the model and, for onnxruntime, the onnx export).",
        "'first call' includes building the backend (export, trace or compile) for this model and tile shape; later",
        "calls with the same shape reuse it. On a machine this loaded, timings swing by 30 % or more from run to run;",
        "only ratios within this one run are meaningful.",
    ]
    write_result(args.output, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
