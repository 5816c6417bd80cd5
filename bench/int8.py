"""int8 against float32 in ONNX Runtime: the PSNR cost of `bsr-hub export --int8` on Set5 / Set14 / BSD100 and the
speed of both graphs side by side in one process.

    python bench/int8.py                                        # bsr-tiny-x2 and bsr-lite-x2, the defaults below
    python bench/int8.py --models --cost-only bsr-lite-x3 bsr-lite-x4 --no-backend-cost --output \
        bench/results/int8_x3_x4.md                             # the cost alone of other checkpoints

Cost: each model is exported by `export_onnx_int8` (what `bsr-hub export --int8 --calibration DIR` runs: 64 patches
of 64 pixels from the training images, seeded), whose measurement scores the float32 and the int8 graph under the
published protocol (MATLAB bicubic LR, Y-PSNR, border cropped by the scale) in ONNX Runtime. The graph that
`backend="onnxruntime-int8"` builds (calibrated on the bundled example photos, `BACKEND_CALIBRATION`) is scored on
Set5 and Set14 beside it.

Speed: both graphs in one process, `intra_op_num_threads` set per row, on a photo (Set14 baboon resized) at each
size; one untimed run each, then --rounds interleaved rounds (float32, int8, float32, ...), the median of each. The
ratio is float32 time / int8 time: above 1, int8 is faster. Other processes on the machine slow both alike within a
round, so the ratio means more than either time.
"""

from __future__ import annotations

import argparse
import functools
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import cpu_description, machine_load, write_result

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results" / "int8.md"


def measure_cost(name: str, work: Path, args: argparse.Namespace) -> tuple[dict, dict | None, Path, Path]:
    """(the export's metadata cost, the backend graph's cost on Set5/Set14 or None, fp32 graph, int8 graph)."""
    from bsr_hub import BSRModel
    from bsr_hub.core import example_images
    from bsr_hub.data import load_benchmark
    from bsr_hub.evaluation.quantization import quantization_cost
    from bsr_hub.inference.quantize import BACKEND_CALIBRATION, calibration_patches, quantize_graph
    from bsr_hub.models.export import export_onnx, export_onnx_int8

    model = BSRModel.from_pretrained(name)
    benchmarks = [load_benchmark(b, args.data_dir) for b in ("Set5", "Set14", "BSD100")]
    calibration = calibration_patches(args.calibration, count=64)
    int8 = work / f"{name}.int8.onnx"
    done = export_onnx_int8(model, int8, calibration, measure=functools.partial(quantization_cost, benchmarks=benchmarks),
                            max_cost_db=float("inf"), source=name)  # the bench reports any cost, it does not gate
    fp32 = export_onnx(model, work / f"{name}.onnx", source=name).onnx_path
    backend_cost = None
    if args.backend_cost:
        backend = work / f"{name}.backend-int8.onnx"
        examples = calibration_patches(example_images(), source="bsr_hub/example_images", **BACKEND_CALIBRATION)
        quantize_graph(fp32, backend, examples)
        backend_cost = quantization_cost(fp32, backend, benchmarks[:2])
    return done.metadata["psnr_cost"], backend_cost, fp32, int8


def time_pair(fp32: Path, int8: Path, size: int, threads: int, rounds: int) -> tuple[float, float]:
    """Median seconds of one (1, 3, size, size) run of each graph, interleaved."""
    import onnxruntime as ort
    from PIL import Image

    photo = Image.open(SHARED / "benchmarks" / "Set14" / "baboon.png").convert("RGB").resize((size, size), Image.LANCZOS)
    x = (np.asarray(photo, dtype=np.float32) / 255.0).transpose(2, 0, 1)[None].copy()  # (1, 3, size, size)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sessions = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in (fp32, int8)]
    times: list[list[float]] = [[], []]
    for s in sessions:
        s.run(None, {"input": x})  # untimed: allocations, kernel selection
    for _ in range(rounds):
        for s, t in zip(sessions, times, strict=True):
            start = time.perf_counter()
            s.run(None, {"input": x})
            t.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", default=["bsr-tiny-x2", "bsr-lite-x2"], help="cost and speed")
    p.add_argument("--cost-only", nargs="*", default=[], help="checkpoints whose cost alone is measured")
    p.add_argument("--calibration", default=str(SHARED / "train"))
    p.add_argument("--data-dir", default=str(SHARED / "benchmarks"))
    p.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    p.add_argument("--threads", nargs="+", type=int, default=[2, 1])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--no-backend-cost", dest="backend_cost", action="store_false",
                   help="skip scoring the graph backend='onnxruntime-int8' builds")
    p.add_argument("--output", default=str(RESULTS))
    args = p.parse_args(argv)
    command = " ".join(["python bench/int8.py", *map(shlex.quote, argv if argv is not None else sys.argv[1:])])
    load_before = machine_load()
    started = time.time()

    import onnxruntime

    cost_rows, backend_rows, speed_rows = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        work = Path(tmp)
        for name in [*args.models, *args.cost_only]:
            print(f"{name}: exporting, calibrating and scoring ...", file=sys.stderr, flush=True)
            cost, backend_cost, fp32, int8 = measure_cost(name, work, args)
            for bench, c in cost["benchmarks"].items():
                cost_rows.append(f"| {name} | {bench} | {c['num_images']} | {c['fp32_psnr']:.4f} | {c['int8_psnr']:.4f} "
                                 f"| {c['cost_db']:+.4f} |")
            if backend_cost is not None:
                for bench, c in backend_cost["benchmarks"].items():
                    backend_rows.append(f"| {name} | {bench} | {c['fp32_psnr']:.4f} | {c['int8_psnr']:.4f} "
                                        f"| {c['cost_db']:+.4f} |")
            if name not in args.models:
                continue
            for threads in args.threads:
                for size in args.sizes:
                    t32, t8 = time_pair(fp32, int8, size, threads, args.rounds)
                    speed_rows.append(f"| {name} | {size}x{size} | {threads} | {t32 * 1000:.0f} | {t8 * 1000:.0f} "
                                      f"| {t32 / t8:.2f} |")
                    print(speed_rows[-1], file=sys.stderr, flush=True)

    lines = [
        "# int8 (static, QDQ) against float32 in ONNX Runtime",
        "",
        f"Command: `{command}`",
        "",
        f"- CPU: {cpu_description()}; onnxruntime {onnxruntime.__version__}",
        f"- Machine load at start: {load_before}",
        f"- Machine load at end: {machine_load()} (wall time {time.time() - started:.0f} s)",
        ("- The machine was shared: a training job ran on one of its two cores throughout, and other test runs came "
         "and went. The times are slower than a quiet machine's; the ratios compare runs interleaved round by round."),
        "",
        "## PSNR cost of `bsr-hub export --int8` (calibrated on 64 seeded 64x64 patches of ../shared/data/train)",
        "",
        ("Y-PSNR under the published protocol (MATLAB bicubic LR, border cropped by the scale), both graphs in ONNX "
         "Runtime, one pass per image. Cost = float32 - int8 (positive: int8 is worse). These are the numbers the "
         "export writes into its metadata."),
        "",
        "| model | benchmark | images | float32 PSNR | int8 PSNR | cost (dB) |",
        "|---|---|---|---|---|---|",
        *cost_rows,
    ]
    if backend_rows:
        lines += [
            "",
            ("## PSNR cost of the graph `backend=\"onnxruntime-int8\"` builds (calibrated on the bundled example "
             "photos: 64 patches of 32 pixels)"),
            "",
            "| model | benchmark | float32 PSNR | int8 PSNR | cost (dB) |",
            "|---|---|---|---|---|",
            *backend_rows,
        ]
    if speed_rows:
        lines += [
            "",
            f"## Speed: median of {args.rounds} interleaved rounds, one image (1, 3, size, size)",
            "",
            "| model | input | threads | float32 (ms) | int8 (ms) | float32 / int8 |",
            "|---|---|---|---|---|---|",
            *speed_rows,
        ]
    write_result(Path(args.output), lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
