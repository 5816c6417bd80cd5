"""bf16 on a CPU that computes it natively (avx512_bf16 or amx_bf16): what it costs in Y-PSNR on Set5 and Set14
against fp32, and what it saves in time (issue 27, item 2).

    python bench/bf16_cost.py                                  # bsr-lite-x2, Set5 and Set14 x2
    python bench/bf16_cost.py --model bsr-tiny-x2 --threads 2

bf16 may join `backend="auto"`'s choice only where it is faster and costs at most MAX_COST_DB on both benchmarks;
until a run of this script on such a CPU says so, `upscale` runs bf16 only when the caller asks for it
(`model.to(torch.bfloat16)`). Scores: the library's protocol (bsr_hub.evaluation: MATLAB-bicubic LR, Y channel,
scale-pixel shave) through `upscale`'s default path, the same model in fp32 and in bf16 (weights cast, eager,
channels_last). Speed: the raw forward on a 256x256 input (fp32 NCHW, fp32 channels_last, bf16 channels_last,
fastest of --repeats after a warm-up) and `upscale` of a --size photo-like image (median of --repeats), side by side
in one process. The result goes to bench/results/bf16_cost.md with the command, the CPU and the load. On a CPU
without native bf16 it refuses with the reason and writes nothing: bf16 is emulated there, 10-200x slower.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

from common import cpu_description, machine_load, write_result

BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "benchmarks"
RESULTS = Path(__file__).resolve().parent / "results" / "bf16_cost.md"
MAX_COST_DB = 0.01


def _fastest(run, repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def _raw_forward(model, dtype, channels_last: bool, repeats: int) -> float:
    import torch

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)).to(dtype).contiguous(memory_format=fmt)
    with torch.no_grad():
        return _fastest(lambda: model(x), repeats)


def _upscale_median(model, image, repeats: int) -> float:
    model.upscale(image)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.upscale(image)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _scores(model, scale: int) -> dict[str, float]:
    from bsr_hub.data.benchmarks import load_benchmark
    from bsr_hub.evaluation.protocol import evaluate_benchmark

    return {name: evaluate_benchmark(model, load_benchmark(name, BENCHMARKS), scale, progress=False).psnr
            for name in ("Set5", "Set14")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bsr-lite-x2")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--size", type=int, default=512, help="side of the image upscale is timed on")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch

    from bsr_hub import BSRModel
    from bsr_hub.core.cpu import NATIVE_BF16_FLAGS, has_native_bf16

    if not has_native_bf16():
        print(f"refused: this CPU ({cpu_description()}) has none of {', '.join(NATIVE_BF16_FLAGS)}; bf16 is emulated "
              "here, 10-200x slower than fp32, and upscale refuses it. Run this on a CPU with avx512_bf16.",
              file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = machine_load()
    fp32 = BSRModel.from_pretrained(args.model).eval()
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    from PIL import Image

    image = Image.effect_noise((args.size, args.size), 40).convert("RGB")
    speed = {
        "raw forward 256x256, fp32 NCHW": _raw_forward(fp32, torch.float32, False, args.repeats),
        "raw forward 256x256, fp32 channels_last": _raw_forward(fp32, torch.float32, True, args.repeats),
        "raw forward 256x256, bf16 channels_last": _raw_forward(bf16, torch.bfloat16, True, args.repeats),
        f"upscale {args.size}x{args.size}, fp32 (the default path)": _upscale_median(fp32, image, args.repeats),
        f"upscale {args.size}x{args.size}, bf16 (eager, channels_last)": _upscale_median(bf16, image, args.repeats),
    }
    scores = {"fp32": _scores(fp32, fp32.scale), "bf16": _scores(bf16, fp32.scale)}
    load_after = machine_load()
    cost = max(scores["fp32"][b] - scores["bf16"][b] for b in scores["fp32"])
    faster = list(speed.values())[4] < list(speed.values())[3]
    verdict = ("may join the automatic choice" if faster and cost <= MAX_COST_DB else
               f"stays out of the automatic choice ({'slower' if not faster else f'costs {cost:.4f} dB'})")
    command = "python bench/bf16_cost.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"# bf16 on this CPU: cost and speed, {args.model}", "",
        f"Command: `{command.strip()}` (written by the script itself).", "",
        f"Machine: {cpu_description()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}.", "",
        f"Load before: {load_before}.  ", f"Load after: {load_after}.", "",
        "| Y-PSNR (dB) | " + " | ".join(scores["fp32"]) + " |", "|---|" + "---|" * len(scores["fp32"]),
        *(f"| {k} | " + " | ".join(f"{v:.4f}" for v in s.values()) + " |" for k, s in scores.items()),
        "| fp32 - bf16 | " + " | ".join(f"{scores['fp32'][b] - scores['bf16'][b]:.4f}" for b in scores["fp32"]) + " |",
        "", "| timing | seconds |", "|---|---|", *(f"| {k} | {v:.3f} |" for k, v in speed.items()), "",
        f"Verdict (faster, and at most {MAX_COST_DB} dB lower on both): bf16 {verdict}.",
    ]
    write_result(args.output, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
