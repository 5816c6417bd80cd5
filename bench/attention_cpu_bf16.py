"""The light spatial attention of a bf16 network on a CPU: bf16 kernels against fp32 arithmetic rounded to bf16
(issue 27: the attention took 28 % of bsr-tiny-x2's bf16 channels_last forward, bench/results/forward_parts.md).

    python bench/attention_cpu_bf16.py          # bsr-tiny-x2 and bsr-lite-x2, 256x256, 2 threads

Two ways to compute LSA(X) = X * sigmoid(conv7x7([max_c X ; mean_c X])) on a bf16 map, timed side by side in one
run, interleaved round by round: "bf16 kernels", the expression run in bf16 as written (the network's forward
before this change), and "fp32 arithmetic", the network's forward now (`LightSpatialAttention._forward_cpu_bf16`:
max, mean and product in fp32, each rounded to bf16 once; taken for channels_last inputs only, so the NCHW rows
time that method called directly). Each is timed alone on the first group's input and
inside the whole forward of the bf16-weights model, in channels_last and NCHW; the outputs are compared
element by element. Median of `--rounds` rounds of `--repeat` calls.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from common import cpu_description, machine_load, write_result

RESULTS = Path(__file__).resolve().parent / "results" / "attention_cpu_bf16.md"


def bf16_kernels(self, x: torch.Tensor) -> torch.Tensor:
    """The attention's expression in bf16 kernels: the network's forward before fp32 arithmetic."""
    pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)  # (B, 2, H, W)
    return x * torch.sigmoid(self.conv(pooled))


def timed(fn, repeat: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def measure(name: str, layout: torch.memory_format, size: int, rounds: int, repeat: int) -> list[str]:
    """The table's two rows for one model in one layout."""
    from bsr_hub import BSRModel
    from bsr_hub.models.network import LightSpatialAttention

    model = BSRModel.from_pretrained(name).eval().to(torch.bfloat16).to(memory_format=layout)
    lr = torch.rand(1, 3, size, size).to(torch.bfloat16).contiguous(memory_format=layout)
    first = model.groups[0].attention
    features = {}

    def keep_input(_module, args) -> None:
        features.setdefault("x", args[0])

    handle = first.register_forward_pre_hook(keep_input)
    with torch.inference_mode():
        model(lr)
    handle.remove()
    x = features["x"]  # (1, C, size, size), bf16, in the layout
    default = LightSpatialAttention.forward
    ways = {"bf16 kernels": bf16_kernels, "fp32 arithmetic": LightSpatialAttention._forward_cpu_bf16}
    times = {(way, part): [] for way in ways for part in ("attention", "forward")}
    outputs = {}
    with torch.inference_mode():
        for _ in range(rounds):
            for way, forward in ways.items():
                LightSpatialAttention.forward = forward  # every group's attention, for this way
                try:
                    outputs[way] = model(lr)
                    times[way, "attention"].append(timed(lambda f=forward: f(first, x), repeat))
                    times[way, "forward"].append(timed(lambda: model(lr), max(1, repeat // 5)))
                finally:
                    LightSpatialAttention.forward = default
    differ = int((outputs["bf16 kernels"] != outputs["fp32 arithmetic"]).sum())
    base = {part: statistics.median(times["bf16 kernels", part]) for part in ("attention", "forward")}
    label = "channels_last" if layout == torch.channels_last else "NCHW"
    rows = []
    for way in ways:
        att, fwd = (statistics.median(times[way, part]) for part in ("attention", "forward"))
        rows.append(f"| {name} | {label} | {way} | {att * 1e3:.2f} | {att / base['attention']:.2f}x | "
                    f"{fwd * 1e3:.1f} | {fwd / base['forward']:.2f}x | {differ} of {outputs[way].numel():,} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["bsr-tiny-x2", "bsr-lite-x2"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from bsr_hub.core.cpu import native_bf16

    if not native_bf16("cpu"):
        print("this CPU computes bf16 without native support (no avx512_bf16 or AMX): nothing to compare",
              file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    lines = [
        "# The light spatial attention of a bf16 network on a CPU: bf16 kernels against fp32 arithmetic",
        "",
        f"Command: `{' '.join(['python bench/attention_cpu_bf16.py', *(sys.argv[1:] if argv is None else argv)])}`",
        "",
        f"CPU: {cpu_description()}; {args.threads} threads; torch {torch.__version__}; {machine_load()}",
        "",
        (f"Input {args.size}x{args.size}; the attention alone on the first group's input; the whole forward of the "
         f"bf16-weights model with every group's attention computed the row's way; medians of {args.rounds} "
         "rounds, the two ways interleaved. Ratios against the bf16 kernels of the same model and layout. "
         "'outputs differ': elements of the whole forward's output that differ between the two ways."),
        "",
        "| model | layout | attention computed in | attention (ms) | ratio | forward (ms) | ratio | outputs differ |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for name in args.models:
        for layout in (torch.channels_last, torch.contiguous_format):
            lines += measure(name, layout, args.size, args.rounds, args.repeat)
    write_result(args.output, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
