"""Where a network's forward spends its CPU time, part by part (issue 27: what stands between bsr-tiny and ESPCN).

    python bench/forward_parts.py                                  # bsr-tiny-x2, 256x256, 2 threads
    python bench/forward_parts.py --model bsr-lite-x2 --size 512

Each part of the BSR network (the residual blocks, the light spatial attention, the groups' closing convs, the head,
fusion, upsampler and tail convs; what is left is the element-wise work of the forward itself: the mean's
subtraction and addition, the group and global skips, the concatenation) is timed with forward hooks around it, in
the precisions and layouts that matter on this CPU: fp32 NCHW and channels_last, and the bf16-weights model in
channels_last and NCHW where the CPU computes bf16 natively. A CPU forward is synchronous, so a part's time is the
wall time between its hooks; the hooks themselves cost microseconds against milliseconds. Median of `--rounds`
forwards per configuration, configurations interleaved round by round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from common import cpu_description, machine_load, write_result

RESULTS = Path(__file__).resolve().parent / "results" / "forward_parts.md"
PARTS = ("residual blocks", "attention", "group convs", "head", "fusion", "upsampler", "tail")


def _part_of(name: str, module: torch.nn.Module) -> str | None:
    """The PARTS entry a named submodule of BSRNetwork is timed as, or None (not timed on its own)."""
    from bsr_hub.models.network import LightSpatialAttention, ResidualBlock, Upsampler

    if isinstance(module, ResidualBlock):
        return "residual blocks"
    if isinstance(module, LightSpatialAttention):
        return "attention"
    if isinstance(module, Upsampler):
        return "upsampler"
    if name.startswith("groups.") and name.endswith(".conv"):
        return "group convs"
    return name if name in ("head", "fusion", "tail") else None


def _timed_parts(network: torch.nn.Module) -> dict[str, float]:
    """Forward hooks that add each part's wall time to the returned dict (reset it before a forward); they stay on
    `network` for its life."""
    spent = dict.fromkeys(PARTS, 0.0)
    for name, module in network.named_modules():
        part = _part_of(name, module)
        if part is None:
            continue
        started: list[float] = []
        module.register_forward_pre_hook(lambda *_, s=started: s.append(time.perf_counter()))
        module.register_forward_hook(
            lambda *_, s=started, p=part: spent.__setitem__(p, spent[p] + time.perf_counter() - s.pop()))
    return spent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bsr-tiny-x2")
    parser.add_argument("--size", type=int, default=256, help="side of the square LR input")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from bsr_hub import BSRModel
    from bsr_hub.core.cpu import has_native_bf16

    torch.set_num_threads(args.threads)
    load_before = machine_load()
    configs = [("fp32", torch.float32, torch.contiguous_format), ("fp32", torch.float32, torch.channels_last)]
    if has_native_bf16():
        configs += [("bf16 weights", torch.bfloat16, torch.channels_last),
                    ("bf16 weights", torch.bfloat16, torch.contiguous_format)]
    runs = []
    for precision, dtype, layout in configs:
        network = BSRModel.from_pretrained(args.model).eval().to(dtype).to(memory_format=layout)
        x = torch.rand(1, 3, args.size, args.size).to(dtype).contiguous(memory_format=layout)
        spent = _timed_parts(network)
        label = f"{precision} {'channels_last' if layout == torch.channels_last else 'NCHW'}"
        runs.append((label, network, x, spent, {p: [] for p in (*PARTS, "rest", "total")}))
    with torch.inference_mode():
        for _, network, x, _, _ in runs:
            network(x)  # warm-up: oneDNN's kernels for these shapes
        for _ in range(args.rounds):
            for _, network, x, spent, times in runs:
                spent.update(dict.fromkeys(PARTS, 0.0))
                start = time.perf_counter()
                network(x)
                total = time.perf_counter() - start
                for part in PARTS:
                    times[part].append(spent[part])
                times["rest"].append(total - sum(spent.values()))
                times["total"].append(total)
    write_result(args.output, _report(args, runs, load_before))
    return 0


def _report(args, runs, load_before: str) -> list[str]:
    command = "python bench/forward_parts.py" + ("" if sys.argv[1:] == [] else " " + " ".join(sys.argv[1:]))
    lines = [
        f"# Where {args.model}'s forward spends its time, {args.size}x{args.size} (issue 27)",
        "",
        f"Command: `{command}` (written by the script). torch {torch.__version__}, {args.threads} threads.",
        "",
        f"CPU: {cpu_description()}. Load before: {load_before}; after: {machine_load()}.",
        "",
        (f"Median of {args.rounds} forwards per configuration (interleaved), in ms, and each part's share of the "
        "median total. 'rest': the forward's own element-wise work outside the parts (the mean's subtraction and "
        "addition, the skips, the concatenation for fusion)."),
        "",
        "| part | " + " | ".join(label for label, *_ in runs) + " |",
        "|---|" + "---:|" * len(runs),
    ]
    for part in (*PARTS, "rest", "total"):
        cells = []
        for _, _, _, _, times in runs:
            ms, total = statistics.median(times[part]) * 1e3, statistics.median(times["total"]) * 1e3
            cells.append(f"{ms:.2f}" if part == "total" else f"{ms:.2f} ({100 * ms / total:.0f} %)")
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    return lines + [""]


if __name__ == "__main__":
    sys.exit(main())
