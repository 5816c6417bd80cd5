"""Training throughput benchmark: samples per second and peak memory, side by side in one run.

    python bench/train.py                 # bsr-lite and bsr-base x2, NCHW vs channels_last, RFS indexed vs uniform
    python bench/train.py --quick         # bsr-lite only

Each configuration runs in a fresh child process (its own peak RSS): the RFS sampler over ../shared/data/train
(x2, P = 48, N = 16; its set-up time is reported apart), a DataLoader with one worker process, the hybrid loss
and Adam, fp32, exactly as train.py does. Throughput is measured over --steps steps after --warmup steps.
Results go to bench/results/train.md with the command.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common import write_result

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "train"
RESULTS = Path(__file__).resolve().parent / "results" / "train.md"


@dataclass
class Case:
    preset: str
    sampler: str  # "indexed" | "uniform"
    channels_last: bool


def _run(case: Case, steps: int, warmup: int, queue) -> None:
    import torch
    from torch.utils.data import DataLoader

    from bsr_hub import BSRModel
    from bsr_hub.data.rfs_config import RFSConfig
    from bsr_hub.data.sampling import RFSSampler
    from bsr_hub.data.sources import DataConfig
    from bsr_hub.training.losses import HybridLoss

    torch.manual_seed(0)
    t0 = time.perf_counter()
    sampler = RFSSampler(str(DATA), RFSConfig(mode=case.sampler, patch_size=48, scale=2, batch_size=16), DataConfig(scale=2))
    setup = time.perf_counter() - t0
    loader = iter(DataLoader(sampler, batch_size=None, num_workers=1))
    model = BSRModel.from_preset(case.preset, scale=2).train()
    if case.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    criterion = HybridLoss()

    def step() -> None:
        batch = next(loader)
        lr = batch["lr"]
        if case.channels_last:
            lr = lr.contiguous(memory_format=torch.channels_last)
        loss, _ = criterion(model(lr), batch["hr"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(dict(setup_s=setup, step_s=seconds, samples_per_s=16 / seconds, peak_mib=peak))


def _in_child(case: Case, steps: int, warmup: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run, args=(case, steps, warmup, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="bsr-lite only")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"the training images are not at {DATA} (../shared/data beside the checkout)", file=sys.stderr)
        return 2

    import torch

    presets = ["bsr-lite"] if args.quick else ["bsr-lite", "bsr-base"]
    cases = [Case(p, s, cl) for p in presets for s in ("indexed", "uniform") for cl in (False, True)]
    rows = []
    for case in cases:
        steps = args.steps if case.preset == "bsr-lite" else max(3, args.steps // 5)
        r = _in_child(case, steps, args.warmup)
        rows.append((case, steps, r))
        print(f"{case.preset:9} {case.sampler:8} {'channels_last' if case.channels_last else 'NCHW':13} "
              f"{r['samples_per_s']:7.1f} samples/s  {r['step_s']:.3f} s/step  {r['peak_mib']:.0f} MiB", flush=True)

    command = "python bench/train.py" + (" --quick" if args.quick else "") + f" --steps {args.steps} --warmup {args.warmup}"
    lines = [
        "# Training benchmark",
        "",
        f"Command: `{command}` (written by the script itself).",
        "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}. "
        "x2, batch 16 of 48x48 LR patches, fp32, Adam, hybrid loss, one DataLoader worker, "
        "../shared/data/train (491 images).",
        "",
        "| preset | sampler | memory format | steps timed | s/step | samples/s | sampler set-up s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case, steps, r in rows:
        fmt = "channels_last" if case.channels_last else "NCHW"
        lines.append(f"| {case.preset} | {case.sampler} | {fmt} | {steps} | {r['step_s']:.3f} | {r['samples_per_s']:.1f} "
                     f"| {r['setup_s']:.1f} | {r['peak_mib']:.0f} |")
    lines += ["", "Sampler set-up is reading the images, making LR once and (indexed) building the PIC index."]
    write_result(args.output, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
