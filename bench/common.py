"""What several benchmarks share. The scripts run as `python bench/NAME.py`, so this folder is on sys.path."""

from __future__ import annotations

from pathlib import Path


def conv_flops(model, size: int) -> float:
    """FLOPs of every Conv2d for one size x size input (2 per multiply-add), counted with forward hooks on a small
    pass and scaled up (convolution cost is linear in the number of pixels)."""
    import torch

    flops = 0.0

    def hook(module, inp, out):
        nonlocal flops
        k = module.kernel_size[0] * module.kernel_size[1]
        flops += 2.0 * module.in_channels * module.out_channels * k * out.shape[-2] * out.shape[-1] / module.groups

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.rand(1, 3, 16, 16, device=next(model.parameters()).device))
    for h in handles:
        h.remove()
    return flops * (size / 16) ** 2


def machine_load() -> str:
    """What else the machine was doing, for a result file: `uptime`'s load averages and any train.py recipes running
    (these 2 cores are shared, so a timing means little without it)."""
    import subprocess

    uptime = subprocess.run(["uptime"], check=False, capture_output=True, text=True).stdout.strip()
    jobs = subprocess.run(["pgrep", "-fa", "train.py"], check=False, capture_output=True,
                          text=True).stdout.split("\n")
    trainings: dict[str, bool] = {}  # recipe -> whether every process of it is stopped (SIGSTOP for a quiet run)
    for line in jobs:
        if "--config" in line:
            recipe = line.split("--config", 1)[1].split()[0]
            trainings[recipe] = trainings.get(recipe, True) and _stopped(line.split()[0])
    named = [f"{r} (paused: stopped)" if paused else r for r, paused in sorted(trainings.items())]
    return f"`{uptime}`; training jobs running: {', '.join(named) or 'none'}"


def _stopped(pid: str) -> bool:
    """Whether process `pid` is stopped (state T in /proc: SIGSTOP); False where that cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] == "T"  # the state follows the command name in parentheses


def write_result(path, lines: list[str]) -> None:
    """Write a benchmark's Markdown result file (its folder made if needed) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")



def cpu_description() -> str:
    """The CPU model and the flags that decide which paths are fast on it, for a result file."""
    from bsr_hub.core.cpu import describe_cpu

    return describe_cpu()


def in_child(target, *args):
    """`target(*args, queue)` in a fresh spawned process (its own thread pool and allocator); what it puts on the
    queue. A benchmark's settings then do not inherit each other's warm caches or thread settings."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result
