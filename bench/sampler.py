"""Sampler benchmark: batches/s of uniform, literal and indexed RFS next to one bsr-lite x2 training step.

    python bench/sampler.py                       # ../shared/data/train, x2, P = 48, N = 16
    python bench/sampler.py --batches 200 --steps 5

Everything is measured in the same run on the same machine. For each mode: the sampler's setup time (pre-scan,
plus the dense-PIC index in indexed mode), batches/s drawn in this process (`sampler.batch(g)`), and batches/s
through `DataLoader(sampler, batch_size=None, num_workers=1)` (one data worker, what feeds a training loop; it
includes the worker's start and moving the tensors between processes). The training step is
`BSRModel.from_preset("bsr-lite", scale=2)`, fp32, forward + L1 loss + backward + Adam step on one batch of
16 x 48 x 48 LR patches, median of `--steps` steps after one warm-up step. The ratio "step time x sampler
batches/s" says how many batches the sampler makes in the time of one training step (> 1: the sampler does
not limit training). Results go to bench/results/sampler.md with the command.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "train"
RESULTS = Path(__file__).resolve().parent / "results" / "sampler.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--patch", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=100, help="batches timed per mode")
    parser.add_argument("--steps", type=int, default=5, help="training steps timed (after one warm-up)")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO))
    import torch
    from torch.utils.data import DataLoader

    from bsr_hub import BSRModel
    from bsr_hub.data.pairs import ImagePairs
    from bsr_hub.data.rfs_config import RFSConfig, RFSWarning
    from bsr_hub.data.sampling import RFSSampler

    warnings.simplefilter("ignore", RFSWarning)  # literal-mode shortfalls are counted below instead
    t0 = time.perf_counter()
    pairs = ImagePairs.from_source(args.data, min_lr_size=args.patch, scale=args.scale)
    load_s = time.perf_counter() - t0
    print(f"{len(pairs)} images ({pairs.num_skipped} skipped) loaded in {load_s:.1f} s", flush=True)

    rows = []
    indexed_sampler = None
    for mode in ("uniform", "literal", "indexed"):
        config = RFSConfig(mode=mode, scale=args.scale, patch_size=args.patch, batch_size=args.batch_size)
        t0 = time.perf_counter()
        sampler = RFSSampler(pairs, config, rank=0, world_size=1)
        setup_s = time.perf_counter() - t0
        sampler.batch(0)  # warm-up
        t0 = time.perf_counter()
        batches = [sampler.batch(g) for g in range(1, args.batches + 1)]
        inproc = args.batches / (time.perf_counter() - t0)
        attempts = statistics.mean(int(b["attempts"]) for b in batches)
        spills = statistics.mean(int(b["spills"]) for b in batches)
        loader_sampler = RFSSampler(pairs, config, rank=0, world_size=1, num_batches=args.batches + 1)
        t0 = time.perf_counter()
        it = iter(DataLoader(loader_sampler, batch_size=None, num_workers=1))
        next(it)  # worker start-up and the first batch are not steady state
        t1 = time.perf_counter()
        n = sum(1 for _ in it)
        worker = n / (time.perf_counter() - t1)
        rows.append((mode, setup_s, inproc, worker, attempts, spills))
        print(f"{mode:8} setup {setup_s:5.2f} s  in-process {inproc:7.1f} batch/s  1 worker {worker:7.1f} batch/s  "
              f"attempts {attempts:6.1f}  spills {spills:.3f}", flush=True)
        if mode == "indexed":
            indexed_sampler = sampler

    torch.manual_seed(0)
    model = BSRModel.from_preset("bsr-lite", scale=args.scale)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    batch = indexed_sampler.batch(1)
    times = []
    for i in range(args.steps + 1):
        t0 = time.perf_counter()
        loss = torch.nn.functional.l1_loss(model(batch["lr"]), batch["hr"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i > 0:
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    print(f"bsr-lite x{args.scale} training step: {step_s:.3f} s (median of {args.steps}; "
          f"{torch.get_num_threads()} torch threads)", flush=True)

    command = "python bench/sampler.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    load = os.getloadavg()
    lines = [
        "# Sampler throughput vs one training step",
        "",
        f"Command: `{command}` (from the repository root; written by bench/sampler.py).",
        "",
        (
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other jobs "
            f"(load average {load[0]:.1f} at the end), torch {torch.__version__}, {torch.get_num_threads()} threads "
            f"for the training step. Data: `{args.data}`, {len(pairs)} images ({pairs.num_skipped} skipped), "
            f"x{args.scale}, LR patch {args.patch}, N = {args.batch_size}; {args.batches} batches per mode."
        ),
        "",
        (
            f"One `bsr-lite` x{args.scale} training step (fp32, forward + L1 + backward + Adam): "
            f"**{step_s * 1000:.0f} ms** (median of {args.steps})."
        ),
        "",
        (
            "| mode | setup (s) | batches/s in-process | batches/s, 1 DataLoader worker | batches per training step "
            "(1 worker) | crops per batch | spills per batch |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for mode, setup_s, inproc, worker, attempts, spills in rows:
        lines.append(f"| {mode} | {setup_s:.2f} | {inproc:.1f} | {worker:.1f} | {worker * step_s:.0f}x | "
                     f"{attempts:.1f} | {spills:.3f} |")
    lines += [
        "",
        (
            "Setup = pre-scan of 4096 patches (+ the dense-PIC index on a stride-4 grid in indexed mode); loading "
            f"the images (LR from the `Dataset.map` cache) took {load_s:.1f} s before that and is shared by all modes."
        ),
        "Timings on this shared CPU swing by about 30 % from run to run; the ratios are measured side by side.",
        "",
    ]
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
