"""All the GPU work of issue 9, prepared and CPU-tested, for a lent GPU machine (one H100, 16 cores).

Here, before the lease (no GPU needed):

    python bench/gpu.py stage        # wheels/ (datasets and the packages the GPU image lacks) and device_data/part_N:
                                     # ../shared/data split so that each call carries under 64 MiB; prints the calls
    python bench/gpu.py dry-run      # everything below on this CPU with a tiny budget (the CUDA tests skip)

On the GPU machine, one phase per `run` call (bench/GPU.md lists the calls, carry lists and timeouts):

    python3 bench/gpu.py bench       # call 1: CUDA tests, training throughput grid, inference MP/s and TFLOP/s
    python3 bench/gpu.py receive     # middle calls: nothing but carrying one more part of the data
    python3 bench/gpu.py train       # last call: bsr-base x2 for the minutes left, packed into $OUT

Each phase writes bench/results/gpu.md (and a copy in $OUT) from what the phases so far measured; their raw
results stay in device_data/results/ on the warm machine between calls. Back here:

    python bench/gpu.py unpack /work/.device/.../bsr-base-x2.tar outputs/bsr-base-x2-gpu
    python evaluate.py --model outputs/bsr-base-x2-gpu --benchmarks Set5 Set14 BSD100 --scale 2 \\
        --data-dir ../shared/data/benchmarks --update-card outputs/bsr-base-x2-gpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DEVICE_DATA = REPO / "device_data"  # git-ignored: what travels by `carry` and stays on the warm machine
WHEELS = REPO / "wheels"  # git-ignored
RESULTS = DEVICE_DATA / "results"
REPORT = REPO / "bench" / "results" / "gpu.md"
CALL_LIMIT_MIB = 64.0  # what one call may carry in all (the device README)
MARGIN_MIB = 6.0  # for files others add to the tree between staging and the call (re-stage if it grew more)
RETURN_LIMIT = 16 * 2**20  # one file back through $OUT
# datasets and what the GPU image lacks or has at another version (/work/.library/device/KINDS.md lists it).
WHEEL_PINS = ["datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19", "fsspec==2026.9.0"]
STAGED = ["benchmarks/Set5", "benchmarks/Set14", "train/T91", "train/BSD200", "train/BSDS500_test200",
          "benchmarks/BSD100"]  # in this order: part 1 (the bench call) holds Set5 and Set14, which the tests use


def log(msg: str) -> None:
    print(f"[gpu.py {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------- staging (here)


def _tree_bytes() -> int:
    """What every call carries anyway: tracked and unignored files of the checkout."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    return sum((REPO / n).stat().st_size for n in names if n and (REPO / n).is_file())


def _dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def fetch_wheels() -> None:
    WHEELS.mkdir(exist_ok=True)
    platforms = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64",
                                             "manylinux2014_x86_64", "any")]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", *platforms, "-d", str(WHEELS), *WHEEL_PINS]
    subprocess.run(cmd, check=True)


def stage(args: argparse.Namespace) -> int:
    """Split ../shared/data into parts that each fit in one call beside the tree (and, for part 1, the wheels)."""
    if not SHARED.is_dir():
        raise SystemExit(f"error: {SHARED} not found (../shared/data beside the checkout)")
    fetch_wheels()
    tree = _tree_bytes() / 2**20
    wheels = _dir_bytes(WHEELS) / 2**20
    room = CALL_LIMIT_MIB - MARGIN_MIB - tree
    files = [p for d in STAGED for p in sorted((SHARED / d).rglob("*")) if p.is_file()]
    parts: list[list[Path]] = [[]]
    used = wheels  # part 1 travels with the wheels
    for f in files:
        size = f.stat().st_size / 2**20
        if used + size > room:
            parts.append([])
            used = 0.0
        parts[-1].append(f)
        used += size
    for old in DEVICE_DATA.glob("part_*"):
        shutil.rmtree(old)
    for k, part in enumerate(parts, 1):
        for f in part:
            target = DEVICE_DATA / f"part_{k}" / f.relative_to(SHARED)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(f, target)  # no copy where the filesystem allows
            except OSError:
                shutil.copy2(f, target)
    sizes = [_dir_bytes(DEVICE_DATA / f"part_{k}") / 2**20 for k in range(1, len(parts) + 1)]
    log(f"tree {tree:.1f} MiB, wheels {wheels:.1f} MiB; {len(parts)} parts: "
        + ", ".join(f"part_{k} {s:.1f} MiB" for k, s in enumerate(sizes, 1)))
    plan = {"parts": len(parts), "sizes_mib": sizes, "tree_mib": tree, "wheels_mib": wheels}
    (DEVICE_DATA / "plan.json").write_text(json.dumps(plan, indent=2))
    print_calls(len(parts), args.script)
    return 0


def print_calls(parts: int, script: str) -> None:
    """The `run` tool calls that carry the parts and run the phases (bench/GPU.md explains them)."""
    first = "bench" if script.endswith("gpu.py") else "receive"
    calls = [(f"python3 {script} {first}", ["wheels", "device_data/part_1"], 300 if first == "bench" else 120)]
    calls += [(f"python3 {script} receive", [f"device_data/part_{k}"], 120) for k in range(2, parts)]
    calls.append((f"python3 {script} train", [f"device_data/part_{parts}"], 330 if first == "bench" else 440))
    print("\nThe run calls, back to back (a machine stays warm 30 s after a call):")
    for cmd, carry, timeout in calls:
        print(json.dumps({"command": cmd, "carry": carry, "timeout_s": timeout}))


# ---------------------------------------------------------------------------------------------- the device side


def device_setup(cpu: bool) -> Path:
    """Install the carried wheels (once per machine), put the staged parts together and make ../shared/data
    point at them, so that recipes and tests read the same paths as here. Returns the data folder."""
    site = DEVICE_DATA / "site"
    paths = [str(REPO)]
    if WHEELS.is_dir() and any(WHEELS.glob("*.whl")) and not cpu:
        if not (site / ".installed").is_file():
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                            "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, WHEELS.glob("*.whl"))],
                           check=True)
            (site / ".installed").touch()
        paths.append(str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    sys.path[:0] = paths
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["PYTHONUNBUFFERED"] = "1"
    parts = sorted(DEVICE_DATA.glob("part_*"))
    if cpu or not parts:
        return SHARED
    merged = DEVICE_DATA / "shared" / "data"
    for part in parts:
        for f in part.rglob("*"):
            target = merged / f.relative_to(part)
            if f.is_file() and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(f, target)
    if not SHARED.exists():
        SHARED.parent.mkdir(parents=True, exist_ok=True)
        SHARED.symlink_to(merged)
    elif SHARED.resolve() != merged.resolve():
        log(f"note: {SHARED} exists and is not the staged data; using it as it is")
    return SHARED


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


def _save(name: str, data: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2))


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def run_process_group(cmd: list[str], timeout: float) -> tuple[str, int | str]:
    """Run `cmd` in a process group of its own, its output (stdout and stderr) captured; at the timeout, or when it
    ends, kill what is left of the group. A timeout that killed pytest alone left the train.py it had started (and
    that run's data workers) on the GPU, under the throughput grid that came next. Returns (output, returncode or
    "timeout after N s")."""
    with tempfile.TemporaryFile() as out:  # a file, not a pipe: a survivor holding the pipe cannot block the read
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc: int | str = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = f"timeout after {timeout:.0f} s"
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group's id is pytest's pid (start_new_session)
        except ProcessLookupError:  # nothing left of the group
            pass
        proc.wait()
        out.seek(0)
        return out.read().decode(errors="replace"), rc


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


def bench(args: argparse.Namespace) -> int:
    import torch

    device = "cpu" if args.cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device here; `python bench/gpu.py dry-run` is the CPU rehearsal")
    env = environment(device)
    log(f"environment: {env}")
    _save("environment", env)
    if "import_error" in env:
        write_report(args)
        raise SystemExit(f"error: {env['import_error']} (were the wheels carried? see bench/GPU.md)")
    cudnn = grid_kernels(args.recipe, device)  # as train.py will run the recipe the grid sizes
    tiny = args.cpu
    log("CUDA tests")
    _save("tests", run_cuda_tests(timeout=60 if tiny else 170))
    log("training throughput")
    grid = []
    batch, patch = (2, 24) if tiny else (32, 48)
    for preset in ("bsr-lite", "bsr-base"):
        for bf16 in ((False,) if tiny else (False, True)):  # bf16 on this CPU is 10-200x slower: not measured
            for channels_last in (False, True):
                rate = train_throughput(device, preset, bf16, channels_last, batch, patch,
                                        steps=2 if tiny else 30, warmup=1 if tiny else 5)
                grid.append({"preset": preset, "precision": "bf16" if bf16 else "fp32",
                             "layout": "channels_last" if channels_last else "NCHW", "batch": batch, "patch": patch,
                             "samples_per_s": rate})
                log(f"  {grid[-1]}")
    _save("throughput", {"grid": grid, "cudnn_benchmark": cudnn})
    log("inference")
    side = 32 if tiny else 512
    rows = [inference_throughput(device, p, d, side, repeats=1 if tiny else 10)
            for p in ("bsr-lite", "bsr-base") for d in (("fp32",) if tiny else ("fp32", "bf16"))]
    ceiling = [plain_conv(device, d, side // 2 if tiny else 256, repeats=1 if tiny else 20)
               for d in (("fp32",) if tiny else ("fp32", "bf16"))]
    _save("inference", {"rows": rows, "ceiling": ceiling})
    write_report(args)
    return 0


def receive(args: argparse.Namespace) -> int:
    data = device_setup(cpu=args.cpu)
    files = sum(1 for _ in data.rglob("*.png"))
    log(f"{data} holds {files} PNG files so far")
    return 0


def _measured_rate() -> float | None:
    """bsr-base's bf16 channels_last samples/s from this lease's throughput grid (the bench call), if it ran here."""
    measured = _load("throughput")
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
    rate, source = _measured_rate(), "measured by the bench call"
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


def _train_command(args: argparse.Namespace, max_steps: int, output: Path, workers: int | None = None) -> list[str]:
    """train.py for the recipe. Evaluated at the end on Set5 alone: the final evaluation runs inside the deadline,
    and scores bicubic beside the model on the CPU (training.final_evaluation); Set14 and BSD100 are measured
    back here with evaluate.py on the returned model."""
    cmd = [sys.executable, "train.py", "--config", args.recipe, "--optim.max_steps", str(max_steps),
           "--output.dir", str(output), "--validation.eval_dirs", str(SHARED / "benchmarks" / "Set5")]
    if args.cpu:  # the rehearsal: a tiny model, a few steps, fp32 on 2 workers
        cmd += ["--model.preset", "bsr-lite", "--model.overrides", '{"num_features": 8, "num_groups": 2, "num_blocks": 1}',
                "--optim.mixed_precision", "no", "--rfs.batch_size", "4", "--rfs.patch_size", "24", "--data.num_workers", "1",
                "--rfs.num_intervals", "4", "--validation.steps", "4", "--output.checkpointing_steps", "4",
                "--output.logging_steps", "2"]
    elif workers is not None:
        cmd += ["--data.num_workers", str(workers)]
    return cmd


GRACE_S = 30.0  # a run past its deadline in its final evaluation: this much more before it is stopped
TERM_S = 60.0  # from SIGTERM (train.py finishes its step and writes a checkpoint) to SIGKILL of what is left


def wait_for_run(proc: subprocess.Popen, deadline: float, model_written: Path, grace_s: float | None = None,
                 term_s: float | None = None) -> str:
    """Wait for a train.py run until `deadline` (time.monotonic()); returns how it ended: "finished", "stopped"
    (SIGTERM at the deadline) or "killed". A run whose model is written by then is in its final evaluation, where
    train.py no longer answers SIGTERM (it would die of it, the evaluation lost): it gets `grace_s` more first. A
    run still there `term_s` after SIGTERM is killed with its process group (its data workers), so that the call
    goes on and writes what it has. `proc` must lead its own process group (start_new_session=True)."""
    grace_s, term_s = GRACE_S if grace_s is None else grace_s, TERM_S if term_s is None else term_s
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        return "finished"
    except subprocess.TimeoutExpired:
        pass
    if model_written.is_file():
        try:
            proc.wait(timeout=grace_s)
            return "finished"
        except subprocess.TimeoutExpired:
            pass
    log("deadline reached: asking train.py to checkpoint and stop")
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=term_s)
        return "stopped"
    except subprocess.TimeoutExpired:
        log(f"train.py still running {term_s:.0f} s after SIGTERM: killed")
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        return "killed"


def start_run(cmd: list[str], log_file) -> subprocess.Popen:
    """Start train.py in a process group of its own (wait_for_run may kill the group), its output to `log_file`."""
    log_file.write("$ " + " ".join(cmd) + "\n")
    log_file.flush()
    return subprocess.Popen(cmd, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)


def run_with_deadline(cmd: list[str], deadline_s: float, logfile: Path, model_written: Path) -> tuple[int, bool]:
    """Run train.py; at the deadline send SIGTERM (it finishes its step, writes a checkpoint and exits 0), unless
    it has written its model and is evaluating it (wait_for_run). Returns (returncode, stopped at the deadline)."""
    deadline = time.monotonic() + max(1.0, deadline_s)
    with logfile.open("a") as f:
        proc = start_run(cmd, f)
        ended = wait_for_run(proc, deadline, model_written)
    return proc.returncode, ended != "finished"


def last_checkpoint_step(output: Path) -> int | None:
    steps = [int(p.name.split("_")[1]) for p in (output / "checkpoints").glob("step_*")]
    return max(steps) if steps else None


def train_model(args: argparse.Namespace, name: str, output: Path, cmd_of, seconds: float, logfile: Path) -> dict:
    """Train, and if the deadline stopped it, end the run at the step reached (a resume with max_steps set to it:
    the model, its record and card are written, and the record says that max_steps changed at that step)."""
    t0 = time.perf_counter()
    cmd = cmd_of(output)
    model_written = output / "model" / "training.json"
    rc, stopped = run_with_deadline(cmd, seconds, logfile, model_written)
    finish = None
    if stopped and rc == 0:
        step = last_checkpoint_step(output)
        if step:
            finish = [*cmd_of(output, max_steps=step), "--resume", "latest", "--resume_allow_changes"]
            rc, _ = run_with_deadline(finish, 120, logfile, model_written)
    history_file = output / "history.jsonl"
    history = [json.loads(line) for line in history_file.read_text().splitlines()] if history_file.is_file() else []
    rates = sorted(h["samples_per_s"] for h in history if "samples_per_s" in h)[1:]  # the first includes start-up
    model_dir = output / "model"
    result = {"name": name, "command": " ".join(cmd[1:]), "returncode": rc, "stopped_at_deadline": stopped,
              "finish_command": " ".join(finish[1:]) if finish else None, "seconds": round(time.perf_counter() - t0),
              "steps": max((h["step"] for h in history), default=0),
              "samples_per_s_median": rates[len(rates) // 2] if rates else None,
              "val_psnr_last": next((h["val_psnr"] for h in reversed(history) if "val_psnr" in h), None)}
    if (model_dir / "eval_results.json").is_file():
        result["device_eval"] = [{k: r[k] for k in ("benchmark", "psnr", "ssim")}
                                 for r in json.loads((model_dir / "eval_results.json").read_text())["results"]]
    return result


def pack_model(model_dir: Path, target: Path) -> dict:
    """One tar of the model folder under RETURN_LIMIT; fp32 weights stored as fp16 when they would not fit
    (what is shipped is what gets evaluated back here). Returns what was done."""
    from safetensors.torch import load_file, save_file

    staging = target.with_suffix(".d")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(model_dir, staging)
    note = {"weights": "float32"}
    weights = staging / "model.safetensors"
    if _dir_bytes(staging) > RETURN_LIMIT - 2**20:
        state = load_file(weights)
        biggest = max(float(t.abs().max()) for t in state.values())
        if biggest > 6e4:
            raise ValueError(f"a weight of {biggest} does not fit in fp16; pack with bf16 instead")
        half = {k: v.half().contiguous() for k, v in state.items()}
        worst = max(float((half[k].float() - v).abs().max()) for k, v in state.items())
        save_file(half, weights, metadata={"format": "pt"})
        note = {"weights": "float16 (from float32, to come back through $OUT)", "max_abs_rounding": worst}
        (staging / "packing.json").write_text(json.dumps(note, indent=2) + "\n")
    with tarfile.open(target, "w") as tar:
        tar.add(staging, arcname=model_dir.name if model_dir.name != "model" else target.stem)
    shutil.rmtree(staging)
    size = target.stat().st_size
    if size > RETURN_LIMIT:
        raise ValueError(f"{target} is {size / 2**20:.1f} MiB, over the 16 MiB a returned file may have")
    return {**note, "file": target.name, "mib": round(size / 2**20, 2)}


def unpack(args: argparse.Namespace) -> int:
    target = Path(args.dest)
    if target.exists():
        raise SystemExit(f"error: {target} exists; unpack into a new folder")
    with tarfile.open(args.tar) as tar:
        names = tar.getnames()
        top = {n.split("/")[0] for n in names}
        if len(top) != 1:
            raise SystemExit(f"error: {args.tar} should hold one model folder, holds {sorted(top)}")
        tmp = target.parent / f".{target.name}.unpack"
        tar.extractall(tmp, filter="data")
    (tmp / top.pop()).rename(target)
    tmp.rmdir()
    print(f"unpacked {args.tar} into {target}")
    return 0


def train(args: argparse.Namespace) -> int:
    import torch

    from bsr_hub.training.config import resolve_config

    data = device_setup(cpu=args.cpu)
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device here; `python bench/gpu.py dry-run` is the CPU rehearsal")
    missing = [d for d in ("train/T91", "train/BSD200", "train/BSDS500_test200", "benchmarks/Set5")
               if not (data / d).is_dir()]
    if missing:
        raise SystemExit(f"error: {', '.join(missing)} not staged under {data}: carry every device_data/part_N first")
    if _load("environment") is None:
        _save("environment", environment("cpu" if args.cpu else "cuda"))
    recipe = resolve_config(args.recipe, {})
    seconds = args.train_seconds
    if args.max_steps:
        max_steps, why = args.max_steps, "--max-steps"
    elif args.cpu:
        max_steps, why = 8, "the CPU rehearsal's 8 steps"
    else:
        grid_kernels(args.recipe, "cuda")  # a probe times the step as train.py runs it
        max_steps, seconds, why = plan_steps(seconds, recipe.rfs.batch_size, lambda: probe_rate(recipe))
    workers = loader_workers(recipe.data.num_workers, batch_bytes(recipe.rfs.batch_size, recipe.rfs.patch_size,
                                                                  recipe.scale), shm_free_bytes())
    if workers < recipe.data.num_workers:
        why += f"; {workers} data workers, not {recipe.data.num_workers}: /dev/shm holds no more batches"
    log(f"training bsr-base x2 for up to {seconds:.0f} s: max_steps {max_steps} ({why})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    output = DEVICE_DATA / "outputs" / "bsr-base-x2"
    shutil.rmtree(output, ignore_errors=True)

    def cmd_of(folder: Path, max_steps: int = max_steps) -> list[str]:
        return _train_command(args, max_steps, folder, workers)

    result = train_model(args, "bsr-base-x2", output, cmd_of, seconds, out / "train_bsr-base-x2.log")
    result["max_steps_rule"] = why
    if (output / "model" / "training.json").is_file():
        result["packed"] = pack_model(output / "model", out / "bsr-base-x2.tar")
    _save("train", result)
    write_report(args)
    return 0 if result["returncode"] == 0 else 1


# ---------------------------------------------------------------------------------------------- the report


def _num(value: float | None, decimals: int) -> str:
    return "-" if value is None else f"{value:.{decimals}f}"


def write_report(args: argparse.Namespace) -> None:
    env, tests, thr, inf, tr = (_load(n) for n in ("environment", "tests", "throughput", "inference", "train"))
    lines = ["# GPU: CUDA tests, throughput, and bsr-base x2 trained in one lease", ""]
    rehearsal = env is not None and env.get("device") == "cpu"
    if env is None:
        lines += ["**Not yet run.** This file is written by `bench/gpu.py` on a GPU; bench/GPU.md gives the calls.", ""]
    elif rehearsal:
        lines += ["**CPU rehearsal (`python bench/gpu.py dry-run`), not GPU figures**: the script end to end on a",
                  "tiny budget; the CUDA tests skip and bf16 is not measured. The GPU run replaces this file.", ""]
    lines += ["Commands, one per `run` call on the GPU machine (bench/GPU.md): `python3 bench/gpu.py bench`, "
              "`python3 bench/gpu.py receive` for each middle part, `python3 bench/gpu.py train`.", ""]
    if env:
        lines += ["## Machine", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in env.items()] + [""]
    if tests:
        lines += ["## CUDA tests", "", f"`{tests['command']}`: **{tests['summary']}** ({tests['seconds']} s)", ""]
        if not rehearsal and "skipped" in tests["summary"]:  # a skipped test cannot fail: say so, loudly
            lines += ["**A CUDA test skipped on the GPU**: what it checks was not checked (its reason below).", ""]
        lines += [f"- {r}" for r in tests["results"]] + [""]
    if thr:
        lines += ["## Training throughput (the training step alone)", "",
                  "Forward, hybrid loss, backward and Adam on x2 batches already on the device (samples/s; "
                  "data loading is measured by the training run below); cuDNN autotuning "
                  f"{'on' if thr.get('cudnn_benchmark') else 'off'}, as train.py runs the recipe.", "",
                  "| preset | precision | layout | batch | LR patch | samples/s |", "|---|---|---|---|---|---|"]
        lines += [f"| {g['preset']} | {g['precision']} | {g['layout']} | {g['batch']} | {g['patch']} | "
                  f"{g['samples_per_s']:.0f} |" for g in thr["grid"]] + [""]
    if inf:
        lines += ["## Inference", "", "x2, one LR image of side `LR side` (output twice that), channels_last, "
                  "mean of the timed runs after one warm-up.", "",
                  "| preset | dtype | LR side | output MP/s | conv TFLOP/s | conv GFLOP per image |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['preset']} | {r['dtype']} | {r['lr_side']} | {r['mp_per_s']:.1f} | "
                  f"{r['conv_tflop_per_s']:.1f} | {r['gflop']:.0f} |" for r in inf["rows"]]
        lines += ["", "The practical ceiling, timed in the same run: a plain 3x3 convolution, 64 -> 64 channels:", ""]
        lines += [f"- {c['dtype']}, input {c['shape']}: **{c['tflop_per_s']:.1f} TFLOP/s**" for c in inf["ceiling"]]
        lines += [""]
    if tr:
        lines += ["## bsr-base x2, trained in the minutes left", "",
                  f"`{tr['command']}` (max_steps: {tr.get('max_steps_rule', '')})", ""]
        if tr.get("finish_command"):
            lines += [f"Stopped at the deadline and ended at the step reached with `{tr['finish_command']}`.", ""]
        lines += ["| | |", "|---|---|", f"| return code | {tr['returncode']} |", f"| steps | {tr['steps']} |",
                  f"| wall time (s, start-up and evaluation included) | {tr['seconds']} |",
                  "| samples/s (median of the logged intervals, data loading included) | "
                  f"{_num(tr['samples_per_s_median'], 0)} |",
                  f"| last validation PSNR, Set5 (dB) | {_num(tr['val_psnr_last'], 2)} |"]
        if tr.get("packed"):
            p = tr["packed"]
            lines += [f"| returned as | `{p['file']}`, {p['mib']} MiB, weights {p['weights']} |"]
        lines += [""]
        for r in tr.get("device_eval", []):
            lines.append(f"- on the device, {r['benchmark']}: {r['psnr']:.2f} dB / {r['ssim']:.4f}")
        lines += ["", "The numbers that count are measured back on the CPU with evaluate.py on what was returned "
                  "(bench/GPU.md).", ""]
    text = "\n".join(lines)
    REPORT.write_text(text)
    if getattr(args, "out", None):
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu.md").write_text(text)
    log(f"wrote {REPORT}")


def dry_run(args: argparse.Namespace) -> int:
    """Every phase on this CPU with a tiny budget, results in a scratch folder (not bench/results/)."""
    global RESULTS, REPORT
    scratch = Path(args.out)
    RESULTS, REPORT = scratch / "results", scratch / "gpu.md"
    shutil.rmtree(RESULTS, ignore_errors=True)
    args.cpu = True
    device_setup(cpu=True)
    bench(args)
    receive(args)
    return train(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["stage", "bench", "receive", "train", "dry-run", "unpack", "report"])
    parser.add_argument("tar", nargs="?", help="unpack: the returned .tar")
    parser.add_argument("dest", nargs="?", help="unpack: a new folder for the model")
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/bsr-gpu-out"),
                        help="where returned files go (default $OUT on the device)")
    parser.add_argument("--train-seconds", type=float, default=240.0,
                        help="the training run's deadline in seconds, its start-up and final evaluation included "
                             "(default 240: the train call's 330 s limit minus data set-up, packing and a margin)")
    parser.add_argument("--max-steps", type=int, default=None, help="train: this max_steps instead of the measured fit")
    parser.add_argument("--recipe", default="configs/base_x2_gpu.yaml")
    parser.add_argument("--cpu", action="store_true", help="run a phase on the CPU (the rehearsal)")
    parser.add_argument("--script", default="bench/gpu.py", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.chdir(REPO)
    if args.phase in ("bench", "train"):
        device_setup(cpu=args.cpu)
    phases = {"stage": stage, "bench": bench, "receive": receive, "train": train, "dry-run": dry_run,
              "unpack": unpack, "report": write_report}
    return phases[args.phase](args) or 0


if __name__ == "__main__":
    sys.exit(main())
