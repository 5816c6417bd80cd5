"""Does the input's memory layout change the frozen TorchScript graph's speed? (why autotune.py times one "jit"
candidate and backends.py builds one graph for both layouts: backends.LAYOUT_FREE_BACKENDS)

    python bench/jit_layout.py [--threads 1] [--size 128] [--repeats 5]

Builds the graph as backends.py does (trace, freeze, optimize_for_inference) twice, traced on an NCHW and on a
channels_last example, and times each on NCHW and channels_last inputs of one tile, side by side in one process,
interleaved round by round; reports the fastest of `--repeats` and the largest difference from eager.
Writes bench/results/jit_layout.md.
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from pathlib import Path

import torch
from common import cpu_description, machine_load, write_result

from bsr_hub import BSRModel

LAYOUTS = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}


def build(model: torch.nn.Module, memory_format: torch.memory_format):
    example = torch.rand(1, 3, 32, 32).contiguous(memory_format=memory_format)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(copy.deepcopy(model).eval(), example, check_trace=False)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["bsr-lite-x2", "bsr-tiny-x2"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "jit_layout.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = machine_load()
    lines = ["# The TorchScript graph's speed by input layout",
             "",
             f"`python bench/jit_layout.py --threads {args.threads} --size {args.size} --repeats {args.repeats}`; "
             f"CPU: {cpu_description()}; torch {torch.__version__}. Load at the start: {load}.",
             "",
             f"A {args.size}x{args.size} input (one CPU tile of bsr-lite), fastest of {args.repeats} after a warm-up, "
             "the four combinations interleaved in each round.",
             "",
             "| model | traced on | input | ms | max abs diff from eager |",
             "|---|---|---|---:|---:|"]
    for name in args.models:
        model = BSRModel.from_pretrained(name).eval()
        x = torch.rand(1, 3, args.size, args.size)
        with torch.no_grad():
            reference = model(x)
            graphs = {traced: build(model, fmt) for traced, fmt in LAYOUTS.items()}
            inputs = {layout: x.contiguous(memory_format=fmt) for layout, fmt in LAYOUTS.items()}
            combos = [(g, i) for g in graphs for i in inputs]
            best = dict.fromkeys(combos, float("inf"))
            diff = {}
            for g, i in combos:
                diff[g, i] = float((graphs[g](inputs[i]) - reference).abs().max())  # also the warm-up
            for _ in range(args.repeats):
                for g, i in combos:
                    start = time.perf_counter()
                    graphs[g](inputs[i])
                    best[g, i] = min(best[g, i], time.perf_counter() - start)
        lines += [f"| {name} | {g} | {i} | {1000 * best[g, i]:.1f} | {diff[g, i]:.1e} |" for g, i in combos]
    lines += ["", f"Load at the end: {machine_load()}."]
    write_result(args.out, lines)


if __name__ == "__main__":
    main()
