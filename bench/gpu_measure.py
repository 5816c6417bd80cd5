"""What a GPU call measures (issue 9, issue 28): the machine, the CUDA tests, the training step's samples/s, the
inference rate next to a plain convolution's, and the max_steps a training run can complete in its minutes, with
the data workers /dev/shm can carry. Each function works on the CPU as well (the rehearsal)."""

from __future__ import annotations

import os
import platform
import shutil
import sys
import time
from pathlib import Path

import gpu_run
from gpu_run import run_process_group

REPO = Path(__file__).resolve().parents[1]


def environment(device: str) -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cores": os.cpu_count(), "device": device}
    shm = shm_free_bytes()
    if shm is not None:  # the data workers' batches pass through it (loader_workers)
        env["dev_shm_free_mib"] = round(shm / 2**20)
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   cuda=torch.version.cuda, sms=props.multi_processor_count)
    try:
        import accelerate
        import datasets

        env.update(accelerate=accelerate.__version__, datasets=datasets.__version__)
    except ImportError as err:  # say so in the report; training would fail on it, so stop the phase too
        env["import_error"] = str(err)
    return env



def run_cuda_tests(timeout: int, cmd: list[str] | None = None) -> dict:
    cmd = cmd or [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-rA", "-p", "no:cacheprovider",
                  "tests/test_cuda.py"]
    t0 = time.perf_counter()
    text, rc = run_process_group(cmd, timeout)
    lines = [line for line in text.splitlines() if line.startswith(("PASSED", "FAILED", "SKIPPED", "ERROR"))]
    summary = next((line for line in reversed(text.splitlines()) if " in " in line and ("passed" in line or
                    "failed" in line or "skipped" in line)), "no summary")
    return {"command": " ".join(["python3", *cmd[1:]]), "returncode": rc, "results": lines, "summary": summary,
            "seconds": round(time.perf_counter() - t0, 1), "tail": text[-4000:]}


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def train_throughput(device: str, preset: str, bf16: bool, channels_last: bool, batch: int, patch: int,
                     steps: int, warmup: int, scale: int = 2) -> float:
    """Samples/s of train.py's step (forward, hybrid loss, backward, Adam) on batches already on the device:
    the GPU's side alone; the whole pipeline's rate, data loading included, is in the training run's history.
    `scale` is the model's: an x4 step costs more than an x2 one (a larger upsampler and HR patch)."""
    import torch

    from bsr_hub import BSRModel
    from bsr_hub.training.losses import HybridLoss

    torch.manual_seed(0)
    model = BSRModel.from_preset(preset, scale=scale).to(device).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    criterion = HybridLoss()
    lr = torch.rand(batch, 3, patch, patch, device=device).contiguous(memory_format=fmt)  # (N, 3, P, P)
    hr = torch.rand(batch, 3, scale * patch, scale * patch, device=device)  # (N, 3, sP, sP)

    def step() -> None:
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = criterion(model(lr), hr)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return batch * steps / (time.perf_counter() - t0)


def conv_flops(model, x) -> int:
    """FLOPs (2 per multiply-add) of every convolution in one forward pass of `model` on `x`."""
    import torch

    total = 0

    def hook(mod, inputs, output):
        nonlocal total
        k = mod.kernel_size[0] * mod.kernel_size[1]
        total += 2 * output.numel() * k * mod.in_channels // mod.groups

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total


def _time(fn, device: str, repeats: int) -> float:
    fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / repeats


def inference_throughput(device: str, preset: str, dtype_name: str, side: int, repeats: int) -> dict:
    """Output MP/s of a x2 model on one side x side LR image (output 2 side square) and its convolutions' TFLOP/s."""
    import torch

    from bsr_hub import BSRModel

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    torch.manual_seed(0)
    model = BSRModel.from_preset(preset, scale=2).to(device).eval()
    model = model.to(dtype=dtype, memory_format=torch.channels_last)
    x = torch.rand(1, 3, side, side, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    flops = conv_flops(model, x)
    with torch.no_grad():
        seconds = _time(lambda: model(x), device, repeats)
    out_mp = (2 * side) ** 2 / 1e6
    return {"preset": preset, "dtype": dtype_name, "lr_side": side, "seconds": seconds, "mp_per_s": out_mp / seconds,
            "conv_tflop_per_s": flops / seconds / 1e12, "gflop": flops / 1e9}


def plain_conv(device: str, dtype_name: str, side: int, repeats: int) -> dict:
    """A lone 3x3 convolution, 64 -> 64 channels, channels_last: the practical ceiling for this network's layers."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(device=device, dtype=dtype, memory_format=torch.channels_last)
    x = torch.rand(8, 64, side, side, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    flops = 2 * 8 * 64 * side * side * 64 * 9
    with torch.no_grad():
        seconds = _time(lambda: conv(x), device, repeats)
    return {"dtype": dtype_name, "shape": f"(8, 64, {side}, {side})", "tflop_per_s": flops / seconds / 1e12}


def grid_kernels(recipe: str, device: str) -> bool:
    """Set cuDNN's autotuning for the throughput grid as train.py sets it for `recipe` (the one the grid sizes:
    training.cudnn_benchmark_for), so that max_steps comes from the rate training runs at. Returns the setting."""
    import torch

    from bsr_hub.training import cudnn_benchmark_for
    from bsr_hub.training.config import resolve_config

    torch.backends.cudnn.benchmark = cudnn_benchmark_for(resolve_config(recipe, {}).optim, cuda=device == "cuda")
    return torch.backends.cudnn.benchmark



def measured_rate() -> float | None:
    """bsr-base's bf16 channels_last samples/s from this lease's throughput grid (the bench call), if it ran here."""
    measured = gpu_run.load("throughput")
    rates = [g["samples_per_s"] for g in (measured or {}).get("grid", [])
             if g["preset"] == "bsr-base" and g["layout"] == "channels_last" and g["precision"] == "bf16"]
    return rates[0] if rates else None


def steps_in_deadline(rate: float, seconds: float, batch: int) -> int:
    """max_steps that end within `seconds` at `rate` samples/s of the training step alone. About 60 s go to
    start-up (imports, the LR cache of 491 images) and the final evaluation; 0.8 of the step's rate is left after
    validation and data loading. The decays sit at fractions of max_steps: a max_steps the deadline cuts short
    never reaches them, while overshooting the estimate only ends the run at the deadline."""
    return max(int(0.8 * rate * (seconds - 60) / batch), 100)


def plan_steps(seconds: float, batch: int, probe) -> tuple[int, float, str]:
    """max_steps for a training run of `seconds`: from the bench call's grid, else from `probe()` (samples/s of a
    few steps timed here, its time taken from the run's). Never the recipe's placeholder: its decays (at 0.6 and
    0.85 of 15000 steps) lie far beyond what minutes of training reach. Returns (max_steps, the seconds left for
    the run, how it was sized)."""
    rate, source = measured_rate(), "measured by call 1's grid"
    if rate is None:
        t0 = time.perf_counter()
        rate, source = probe(), "probed in this call: no throughput grid here"
        seconds -= time.perf_counter() - t0
    steps = steps_in_deadline(rate, seconds, batch)
    return steps, seconds, f"0.8 x {rate:.0f} samples/s ({source}) x ({seconds:.0f} - 60) s / batch {batch}"


def probe_rate(recipe, device: str = "cuda") -> float:
    """The recipe's training step timed for a few seconds on `device`, then its memory handed back (the runs are
    other processes)."""
    import torch

    rate = train_throughput(device, recipe.model.preset, recipe.optim.mixed_precision == "bf16",
                            recipe.optim.channels_last, recipe.rfs.batch_size, recipe.rfs.patch_size, steps=20,
                            warmup=5, scale=recipe.scale)
    if device == "cuda":
        torch.cuda.empty_cache()
    return rate


def shm_free_bytes() -> int | None:
    try:
        return shutil.disk_usage("/dev/shm").free
    except OSError:  # no /dev/shm (not Linux): nothing to check
        return None


def batch_bytes(batch: int, patch: int, scale: int) -> int:
    """One training batch as a data worker hands it over: LR and HR patches in float32, three numbers a patch."""
    return batch * (4 * 3 * patch * patch * (1 + scale * scale) + 20)


def loader_workers(workers: int, batch: int, shm_free: int | None, prefetch: int = 2) -> int:
    """Data workers whose batches in flight fit in half of /dev/shm's free space. Each worker hands its batches to
    the trainer through shared memory, up to `prefetch` at a time (DataLoader's prefetch_factor); a container's
    /dev/shm can be 64 MiB, and 12 workers of bsr-base batches need about 110 MiB: they would die of a bus error
    mid-run. `batch` is batch_bytes(); 0 workers: the trainer makes its batches itself."""
    if shm_free is None:
        return workers
    return max(0, min(workers, shm_free // 2 // (prefetch * batch)))

