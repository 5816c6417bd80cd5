"""Training speed on this CPU: samples/s of one training step, every setting side by side in one run.

    python bench/train_speed.py                      # bsr-lite and bsr-tiny, x2, batch 16 of 48 px LR patches
    python bench/train_speed.py --rounds 3 --steps 3 --presets bsr-tiny

What is compared, for each preset: fp32 vs bf16 autocast, NCHW vs channels_last, 1 vs 2 threads, eager vs
torch.compile (its build time reported apart), and the data loader alone (the RFS sampler over
../shared/data/train, in the process and through one DataLoader worker, as train.py feeds the step). The step is
train.py's: forward under autocast, the hybrid loss in fp32, backward, Adam; on random data, so that the data
does not enter the step's time. Every setting runs in a fresh child process (its own thread pool), `--rounds`
times, interleaved so that a change of load hits every setting alike; the table gives the median over rounds of
the mean step time over `--steps` steps after one warm-up step. On a CPU without native bf16, bf16 settings run
1 step per round (they are 10-200x slower there). Results go to bench/results/train_speed.md with the command,
the CPU model and flags, and the load.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common import cpu_description, in_child, machine_load, write_result

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "train"
RESULTS = Path(__file__).resolve().parent / "results" / "train_speed.md"
BATCH, PATCH, SCALE = 16, 48, 2


@dataclass(frozen=True)
class Setting:
    preset: str
    precision: str  # "fp32" | "bf16"
    channels_last: bool
    threads: int
    compiled: bool = False

    def label(self) -> str:
        layout = "channels_last" if self.channels_last else "NCHW"
        return f"{self.precision} {layout}, {self.threads} thread{'s' * (self.threads > 1)}" + (
            ", torch.compile" if self.compiled else "")


def _step_child(setting: Setting, steps: int, queue) -> None:
    import torch

    from bsr_hub import BSRModel
    from bsr_hub.training.losses import HybridLoss

    torch.set_num_threads(setting.threads)
    torch.manual_seed(0)
    model = BSRModel.from_preset(setting.preset, scale=SCALE).train()
    lr = torch.rand(BATCH, 3, PATCH, PATCH)
    hr = torch.rand(BATCH, 3, PATCH * SCALE, PATCH * SCALE)
    if setting.channels_last:
        model = model.to(memory_format=torch.channels_last)
        lr = lr.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    criterion = HybridLoss()
    forward = torch.compile(model) if setting.compiled else model

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=setting.precision == "bf16"):
            sr = forward(lr)
        loss, _ = criterion(sr.float(), hr)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    start = time.perf_counter()
    step()  # warm-up; for torch.compile, the build
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    queue.put({"step_s": (time.perf_counter() - start) / steps, "first_s": first})


def _loader_child(steps: int, queue) -> None:
    import torch
    from torch.utils.data import DataLoader

    from bsr_hub.data.rfs_config import RFSConfig
    from bsr_hub.data.sampling import RFSSampler
    from bsr_hub.data.sources import DataConfig

    torch.set_num_threads(1)
    config = RFSConfig(mode="indexed", patch_size=PATCH, scale=SCALE, batch_size=BATCH)
    start = time.perf_counter()
    sampler = RFSSampler(str(DATA), config, DataConfig(scale=SCALE), rank=0, world_size=1)
    setup = time.perf_counter() - start
    sampler.batch(0)  # the first batch builds what later ones reuse
    start = time.perf_counter()
    for index in range(1, steps + 1):
        sampler.batch(index)
    in_process = (time.perf_counter() - start) / steps
    loader = iter(DataLoader(RFSSampler(str(DATA), config, DataConfig(scale=SCALE), rank=0, world_size=1),
                             batch_size=None, num_workers=1))
    next(loader)  # the worker's start
    start = time.perf_counter()
    for _ in range(steps):
        next(loader)
    queue.put({"setup_s": setup, "batch_s": in_process, "worker_batch_s": (time.perf_counter() - start) / steps})


def settings_for(preset: str, native_bf16: bool, compile_: bool) -> list[Setting]:
    out = [Setting(preset, "fp32", cl, threads) for cl in (False, True) for threads in (1, 2)]
    out += [Setting(preset, "bf16", cl, 2) for cl in (False, True)]
    if native_bf16:
        out += [Setting(preset, "bf16", cl, 1) for cl in (False, True)]
    if compile_:
        out += [Setting(preset, "fp32", cl, 2, compiled=True) for cl in (False, True)]
        if native_bf16:  # where bf16 is the fastest eager setting, whether compiling adds to it
            out.append(Setting(preset, "bf16", True, 2, compiled=True))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["bsr-lite", "bsr-tiny"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="steps timed per round, after one warm-up step")
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out (its build takes minutes)")
    parser.add_argument("--only", nargs="+", metavar="TEXT",
                        help="time only the settings whose label holds one of these (e.g. 'bf16 channels_last, 2')")
    parser.add_argument("--no-loader", action="store_true", help="leave the data loader's timing out")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch

    from bsr_hub.core.cpu import has_native_bf16

    native = has_native_bf16()
    settings = [s for p in args.presets for s in settings_for(p, native, not args.no_compile)
                if not args.only or any(text in s.label() for text in args.only)]
    times: dict[Setting, list[float]] = {s: [] for s in settings}
    builds: dict[Setting, float] = {}
    for round_ in range(args.rounds):
        for s in settings:
            if s.compiled and round_ > 0:
                continue  # one build and one timing: the build alone takes minutes on a CPU
            steps = 1 if (s.precision == "bf16" and not native) else args.steps
            r = in_child(_step_child, s, steps)
            times[s].append(r["step_s"])
            if s.compiled:
                builds[s] = r["first_s"]
            print(f"round {round_ + 1}: {s.preset:8} {s.label():40} {r['step_s']:.3f} s/step", flush=True)
    loader = in_child(_loader_child, 20) if DATA.is_dir() and not args.no_loader else None

    command = "python bench/train_speed.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# Training speed on this CPU",
        "",
        f"Command: `{command.strip()}` (written by the script). torch {torch.__version__}.",
        "",
        f"CPU: {cpu_description()}; native bf16: {'yes' if native else 'no'}. Load while measuring: {machine_load()}.",
        "",
        (f"One training step of x{SCALE}, batch {BATCH} of {PATCH}x{PATCH} LR patches on random data (hybrid loss, "
        f"Adam); median over rounds of the mean over `--steps` steps after a warm-up step; each setting in a fresh "
        "process, the rounds interleaved. \"vs fp32 NCHW 2 threads\" is that setting's speed-up (> 1 is faster)."),
        "",
        "| preset | setting | rounds | s/step | samples/s | vs fp32 NCHW 2 threads | torch.compile build s |",
        "|---|---|---|---|---|---|---|",
    ]
    for preset in args.presets:
        base = times.get(Setting(preset, "fp32", False, 2))  # left out by --only: no ratio
        for s in (s for s in settings if s.preset == preset):
            med = statistics.median(times[s])
            build = f"{builds[s]:.0f}" if s in builds else "-"
            ratio = f"{statistics.median(base) / med:.2f}" if base else "-"
            lines.append(f"| {preset} | {s.label()} | {len(times[s])} | {med:.3f} | {BATCH / med:.1f} | "
                         f"{ratio} | {build} |")
    if loader:
        lines += [
            "",
            (f"The data loader alone (RFS indexed over {DATA.relative_to(DATA.parents[2])}, 1 thread): set-up "
            f"{loader['setup_s']:.1f} s, then {loader['batch_s'] * 1000:.0f} ms per batch in the process and "
            f"{loader['worker_batch_s'] * 1000:.0f} ms per batch through one DataLoader worker (20 batches each)."),
        ]
    write_result(args.output, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
