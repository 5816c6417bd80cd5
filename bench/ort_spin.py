"""What an ONNX Runtime run does to the PyTorch pass timed right after it (issue 27's measured choice).

    python bench/ort_spin.py [--threads 2] [--rounds 7]        # writes bench/results/ort_spin.md

ONNX Runtime's intra-op threads keep spinning for a while after a run ends (its default
`session.intra_op.allow_spinning`), so a PyTorch pass started at once shares the cores with them. autotune.py times
its candidates one after another, eager-bf16 right after ONNX Runtime: this measures how much slower a pass is right
after an ONNX Runtime run, and after a pause of each length, against the same pass with no ONNX Runtime run before it.
Median of --rounds; the pause lengths are interleaved round by round.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from common import cpu_description, machine_load, write_result

from bsr_hub import BSRModel
from bsr_hub.inference.backends import get_runner

RESULTS = Path(__file__).parent / "results" / "ort_spin.md"
PAUSES = (None, 0.0, 0.01, 0.025, 0.05, 0.1, 0.2)  # None: no ONNX Runtime run before the timed pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bsr-tiny-x2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = machine_load()
    model = BSRModel.from_pretrained(args.model).eval()
    ort = get_runner(model, "onnxruntime", torch.contiguous_format)
    backends = [("eager", torch.channels_last)]
    try:
        backends.append(("eager-bf16", torch.channels_last))
        get_runner(model, "eager-bf16", torch.channels_last)
    except Exception:  # no native bf16 here: fp32 eager alone
        backends.pop()
    runners = {name: get_runner(model, name, fmt) for name, fmt in backends}
    x = torch.rand(1, 3, 160, 160).contiguous(memory_format=torch.channels_last)  # bsr-tiny's PyTorch tile probe
    x_ort = torch.rand(1, 3, 640, 640)  # its ONNX Runtime probe at 512x512
    times: dict[tuple[str, float | None], list[float]] = {(n, p): [] for n in runners for p in PAUSES}
    with torch.no_grad():
        ort(x_ort)
        for runner in runners.values():
            runner(x), runner(x)
        for _ in range(args.rounds):
            for name, runner in runners.items():
                for pause in PAUSES:
                    if pause is None:
                        time.sleep(0.5)  # long after any ONNX Runtime run
                    else:
                        ort(x_ort)
                        time.sleep(pause)
                    start = time.perf_counter()
                    runner(x)
                    times[(name, pause)].append(time.perf_counter() - start)
    lines = ["# A PyTorch pass right after an ONNX Runtime run", "",
             f"Command: `python bench/ort_spin.py --model {args.model} --threads {args.threads} --rounds {args.rounds}` "
             f"(written by the script). CPU: {cpu_description()}; torch {torch.__version__}, {args.threads} threads.", "",
             f"Load before: {load_before}; after: {machine_load()}.", "",
             f"`{args.model}` on a 160x160 input (its PyTorch tile probe) after a 640x640 ONNX Runtime run (its ONNX "
             f"Runtime probe at 512x512) and a pause; median seconds of {args.rounds} rounds; ratio against no ONNX "
             "Runtime run before.", "",
             "| pass | before it | s | ratio |", "|---|---|---:|---:|"]
    for name in runners:
        alone = statistics.median(times[(name, None)])
        for pause in PAUSES:
            before = "no ONNX Runtime run" if pause is None else f"ONNX Runtime, then {pause * 1000:.0f} ms"
            seconds = statistics.median(times[(name, pause)])
            lines.append(f"| {name} | {before} | {seconds:.4f} | {seconds / alone:.2f} |")
    write_result(args.output, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
