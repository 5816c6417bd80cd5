"""All the GPU work of issues 9 and 28 for a lent GPU machine (one H100 or H200, 16 cores): three `run` calls at
most, prepared and rehearsed on the CPU. bench/GPU.md lists the calls exactly as they must be typed.

Here, before the lease (no GPU):

    python bench/gpu.py stage              # wheels/, device_data/part_1 and part_2 (bench/gpu_stage.py)
    python bench/gpu.py stage --check      # right before the lease: every call still fits 64 MiB
    python bench/gpu.py calls --budget B   # the calls to type, for status.budget_left_s = B
    python bench/gpu_rehearse.py           # the calls end to end on this CPU, in a fresh copy of the tree

There, one call each. --budget: status.budget_left_s before call 1, then the `lease.budget_left_s` of the previous
call's reply; --limit: the timeout_s typed (bench/gpu_run.py does the arithmetic):

    python3 bench/gpu.py call1 --budget B --limit 270   # carries part 1: CUDA tests, throughput grid, inference
    python3 bench/gpu.py call2 --budget B --limit T     # carries part 2: bsr-base x2 for the minutes left
    python3 bench/gpu_zoo.py call3 --budget B --limit T # optional: the light zoo (bench/gpu_zoo.py)
    python3 bench/gpu.py receive                        # recovery only: unpack a carried part, nothing else

Each call checks, in its first seconds and before torch is imported, every wheel and data file it needs (a machine
given back between calls is fresh), and writes gpu.md, gpu_results.json and its log to $OUT after every stage.
Back here:

    python bench/gpu.py unpack FILES_AT/bsr-base-x2.tar outputs/bsr-base-x2-gpu
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tarfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]  # this checkout's
import gpu_measure
import gpu_preflight
import gpu_report
import gpu_run
import gpu_stage
from gpu_run import Stages, call_window, log

REPO = gpu_stage.REPO
REPORT = REPO / "bench" / "results" / "gpu.md"
RETURN_LIMIT = 16 * 2**20  # one file back through $OUT
FINISH_S = 90.0  # a run the deadline stopped: ended at the step reached (a resume writing its model) within this
PACK_S = 30.0  # the model packed and the last report written
TAIL_S = gpu_run.TERM_S + FINISH_S + PACK_S + 10.0  # kept after the training deadline: the stop (SIGTERM's
# checkpoint, up to TERM_S), the finish run, packing (a run in its final evaluation has GRACE_S more to end, and
# needs no finish run)


def _out(args: argparse.Namespace, call: str) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpu_run.LOG_FILE = out / f"{call}.log"
    return out


def setup(call: str, device: str, need_datasets: bool) -> None:
    """The preflight (gpu_preflight) and `import datasets`: fatal where the call trains, reported where it does
    not. What it found is saved as preflight_<call>."""
    _, done = gpu_preflight.preflight(call, device, log=log)
    problem = gpu_preflight.import_check()
    done["import"] = problem or f"datasets imports at {gpu_stage.WHEEL_PINS[0].split('==')[1]}"
    gpu_run.save(f"preflight_{call}", done)
    if problem and need_datasets:
        raise SystemExit(f"error: {problem} (the carried wheels/ did not give a working datasets)")


# ---------------------------------------------------------------------------------------------- call 1


def call1(args: argparse.Namespace) -> int:
    out = _out(args, "call1")
    window = call_window("call1", args.budget, args.limit, fresh=not args.warm, reserve_s=gpu_run.call1_reserve())
    log(window.describe())
    stages = Stages("call1", out, gpu_report.render, window)
    stages.run("setup", lambda: setup("call1", args.device, need_datasets=False), fatal=True)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device here; bench/gpu_rehearse.py is the CPU rehearsal")
    tiny = args.device == "cpu"
    stages.run("environment", lambda: gpu_measure.environment(args.device))
    # The grid and inference keep 70 s; the tests' process group is killed at its timeout, train.py runs with it.
    stages.run("tests", lambda: gpu_measure.run_cuda_tests(timeout=int(min(170.0, window.left() - 70.0))),
               need_s=40.0 + 70.0)
    stages.run("throughput", lambda: grid(args, window, tiny), need_s=30.0)
    stages.run("inference", lambda: inference(args.device, tiny), need_s=15.0)
    log(f"call1 done, {window.left():.0f} s of its window left")
    return 0


def grid(args: argparse.Namespace, window: gpu_run.Window, tiny: bool) -> dict:
    cudnn = gpu_measure.grid_kernels(args.recipe, args.device)  # as train.py will run the recipe the grid sizes
    rows, skipped = [], []
    batch, patch = (2, 24) if tiny else (32, 48)
    last = 0.0  # the last row's seconds: a row is timed only while twice that (and 25 s) is left
    for preset in ("bsr-base", "bsr-lite"):  # bsr-base's bf16 rate sizes call 2: first
        for bf16 in ((False,) if tiny else (True, False)):  # bf16 on this CPU is 10-200x slower: not measured
            for channels_last in (True, False):
                name = f"{preset} {'bf16' if bf16 else 'fp32'} {'channels_last' if channels_last else 'NCHW'}"
                if window.left() < max(25.0, 2 * last):
                    skipped.append(name)
                    continue
                t0 = time.perf_counter()
                rate = gpu_measure.train_throughput(args.device, preset, bf16, channels_last, batch, patch,
                                                    steps=2 if tiny else 30, warmup=1 if tiny else 5)
                last = time.perf_counter() - t0
                rows.append({"preset": preset, "precision": "bf16" if bf16 else "fp32", "batch": batch, "patch": patch,
                             "layout": "channels_last" if channels_last else "NCHW", "samples_per_s": rate})
                log(f"  {rows[-1]}")
    return {"grid": rows, "cudnn_benchmark": cudnn, "skipped": skipped}


def inference(device: str, tiny: bool) -> dict:
    side = 32 if tiny else 512
    dtypes = ("fp32",) if tiny else ("fp32", "bf16")
    rows = [gpu_measure.inference_throughput(device, p, d, side, repeats=1 if tiny else 10)
            for p in ("bsr-lite", "bsr-base") for d in dtypes]
    ceiling = [gpu_measure.plain_conv(device, d, side // 2 if tiny else 256, repeats=1 if tiny else 20) for d in dtypes]
    return {"rows": rows, "ceiling": ceiling}


# ---------------------------------------------------------------------------------------------- call 2


def _train_command(args: argparse.Namespace, max_steps: int, output: Path, workers: int | None = None) -> list[str]:
    """train.py for the recipe on the staged data. Evaluated at the end on Set5 alone: the final evaluation runs
    inside the deadline and scores bicubic beside the model on the CPU; Set14 and BSD100 are measured back here
    with evaluate.py on the returned model."""
    data = gpu_stage.data_root()
    set5 = str(data / "benchmarks" / "Set5")
    cmd = [sys.executable, "train.py", "--config", args.recipe, "--optim.max_steps", str(max_steps),
           "--output.dir", str(output), "--data.train_dir", str(data / "train"), "--validation.dir", set5,
           "--validation.eval_dirs", set5]
    if args.device == "cpu":  # the rehearsal: a tiny model, a few steps, fp32 on 1 worker
        cmd += ["--model.preset", "bsr-lite", "--model.overrides", '{"num_features": 8, "num_groups": 2, "num_blocks": 1}',
                "--optim.mixed_precision", "no", "--rfs.batch_size", "4", "--rfs.patch_size", "24", "--data.num_workers", "1",
                "--rfs.num_intervals", "4", "--validation.steps", "4", "--output.checkpointing_steps", "4",
                "--output.logging_steps", "2"]
    elif workers is not None:
        cmd += ["--data.num_workers", str(workers)]
    return cmd


def plan_training(args: argparse.Namespace, window: gpu_run.Window) -> dict:
    """max_steps and the training deadline: the window left less TAIL_S, max_steps from call 1's measured rate
    (else a probe here, its seconds taken from the run's)."""
    from bsr_hub.training.config import resolve_config

    recipe = resolve_config(args.recipe, {})
    seconds = window.left() - TAIL_S
    if args.max_steps:
        max_steps, why = args.max_steps, "--max-steps"
    elif args.device == "cpu":
        max_steps, why = 8, "the CPU rehearsal's 8 steps"
    else:
        gpu_measure.grid_kernels(args.recipe, "cuda")  # a probe times the step as train.py runs it
        max_steps, seconds, why = gpu_measure.plan_steps(seconds, recipe.rfs.batch_size,
                                                         lambda: gpu_measure.probe_rate(recipe))
    workers = gpu_measure.loader_workers(recipe.data.num_workers, gpu_measure.batch_bytes(
        recipe.rfs.batch_size, recipe.rfs.patch_size, recipe.scale), gpu_measure.shm_free_bytes())
    if workers < recipe.data.num_workers:
        why += f"; {workers} data workers, not {recipe.data.num_workers}: /dev/shm holds no more batches"
    log(f"training bsr-base x2 for up to {seconds:.0f} s: max_steps {max_steps} ({why})")
    return {"max_steps": max_steps, "train_s": seconds, "why": why, "workers": workers}


def train_model(name: str, output: Path, cmd_of, seconds: float, logfile: Path, window: gpu_run.Window) -> dict:
    """Train until `seconds`; if the deadline stopped it, end the run at the step reached (gpu_run.finish_command)
    within what the window has left before packing."""
    t0 = time.perf_counter()
    cmd = cmd_of(output)
    model_written = output / "model" / "training.json"
    rc, stopped = gpu_run.run_with_deadline(cmd, seconds, logfile, model_written)
    finish = None
    if stopped and rc == 0:
        step = gpu_run.last_checkpoint_step(output)
        room = window.left() - PACK_S
        stop_s = gpu_run.FINISH_GRACE_S + gpu_run.FINISH_TERM_S
        if step and room > stop_s + 5.0:
            finish = gpu_run.finish_command(cmd, step)
            rc, _ = gpu_run.run_with_deadline(finish, room - stop_s, logfile, model_written,
                                              grace_s=gpu_run.FINISH_GRACE_S, term_s=gpu_run.FINISH_TERM_S)
        elif step:
            log(f"no time left to end the run at step {step} ({room:.0f} s): its checkpoint stays on the machine")
    history = gpu_run.read_history(output)
    model_dir = output / "model"
    result = {"name": name, "command": " ".join(cmd[1:]), "returncode": rc, "stopped_at_deadline": stopped,
              "finish_command": " ".join(finish[1:]) if finish else None, "seconds": round(time.perf_counter() - t0),
              "steps": max((h["step"] for h in history), default=0),
              "samples_per_s_median": gpu_run.median_rate(history),
              "val_psnr_last": next((h["val_psnr"] for h in reversed(history) if "val_psnr" in h), None)}
    if (model_dir / "eval_results.json").is_file():
        result["device_eval"] = [{k: r[k] for k in ("benchmark", "psnr", "ssim")}
                                 for r in json.loads((model_dir / "eval_results.json").read_text())["results"]]
    return result


def call2(args: argparse.Namespace) -> int:
    out = _out(args, "call2")
    window = call_window("call2", args.budget, args.limit, fresh=False, reserve_s=args.leave)
    log(window.describe())
    stages = Stages("call2", out, gpu_report.render, window)
    stages.run("setup", lambda: setup("call2", args.device, need_datasets=True), fatal=True)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device here; bench/gpu_rehearse.py is the CPU rehearsal")
    if gpu_run.load("environment") is None:
        stages.run("environment", lambda: gpu_measure.environment(args.device))
    plan = stages.run("train_plan", lambda: plan_training(args, window), fatal=True)
    output = gpu_stage.DEVICE_DATA / "outputs" / "bsr-base-x2"
    shutil.rmtree(output, ignore_errors=True)

    def cmd_of(folder: Path) -> list[str]:
        return _train_command(args, plan["max_steps"], folder, plan["workers"])

    result = stages.run("train", lambda: {**train_model("bsr-base-x2", output, cmd_of, plan["train_s"],
                                                        out / "train_bsr-base-x2.log", window),
                                          "max_steps_rule": plan["why"]})
    if (output / "model" / "training.json").is_file():
        stages.run("pack", lambda: pack_model(output / "model", out / "bsr-base-x2.tar"))
    log(f"call2 done, {window.left():.0f} s of its window left")
    return 0 if result and result["returncode"] == 0 else 1


# ---------------------------------------------------------------------------------------------- the model back


def pack_model(model_dir: Path, target: Path) -> dict:
    """One tar of the model folder under RETURN_LIMIT; fp32 weights stored as fp16 when they would not fit
    (what is shipped is what gets evaluated back here). Returns what was done."""
    from safetensors.torch import load_file, save_file

    staging = target.with_suffix(".d")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(model_dir, staging)
    note = {"weights": "float32"}
    weights = staging / "model.safetensors"
    if gpu_stage.dir_bytes(staging) > RETURN_LIMIT - 2**20:
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


# ---------------------------------------------------------------------------------------------- here


def the_calls(budget: float | None = None) -> list[dict]:
    """The run calls as they must be typed. B: the budget read before the call (status.budget_left_s before call
    1, then the previous reply's lease.budget_left_s); given `budget`, call 1's is filled in."""
    b1 = "B" if budget is None else f"{budget:.0f}"
    rest = gpu_run.margin_for(False)
    return [
        {"command": f"python3 bench/gpu.py call1 --budget {b1} --limit {gpu_run.CALL1_LIMIT_S}",
         "carry": gpu_stage.CARRY["call1"], "timeout_s": gpu_run.CALL1_LIMIT_S},
        {"command": "python3 bench/gpu.py call2 --budget B --limit T", "carry": gpu_stage.CARRY["call2"],
         "timeout_s": f"T = min({gpu_run.CALL_LIMIT_S}, B - {rest:.0f})"},
        {"command": "python3 bench/gpu_zoo.py call3 --budget B --limit T", "carry": gpu_stage.CARRY["call3"],
         "timeout_s": f"T = min({gpu_run.CALL_LIMIT_S}, B - {rest:.0f}); only if call 2 had --leave"},
    ]


def stage(args: argparse.Namespace) -> int:
    if not args.check:
        gpu_stage.stage(Path(args.data), Path(args.dest) / "device_data", Path(args.dest) / "wheels", args.images,
                        args.part_mib, log=log)
    sizes = gpu_stage.carry_sizes(Path(args.dest) / "device_data", Path(args.dest) / "wheels")
    limit = gpu_stage.CALL_LIMIT_MIB - 1.0
    for call, mib in sizes.items():
        log(f"{call} carries {mib:.1f} MiB with the tree as it is now ({'fits' if mib <= limit else 'TOO BIG'}: "
            f"{limit:.0f} MiB at most)")
    print("\nThe run calls (bench/GPU.md):")
    for c in the_calls():
        print(json.dumps(c))
    return 0 if all(m <= limit for m in sizes.values()) else 1


def receive(args: argparse.Namespace) -> int:
    _out(args, "receive")
    _, done = gpu_preflight.preflight("receive", args.device, log=log)
    gpu_run.save("preflight_receive", {**done, "import": "not checked"})
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["stage", "calls", "call1", "call2", "receive", "unpack", "report",
                                          "bench", "train", "dry-run"],
                        help="bench and train: call1 and call2; dry-run: bench/gpu_rehearse.py")
    parser.add_argument("tar", nargs="?", help="unpack: the returned .tar")
    parser.add_argument("dest_dir", nargs="?", help="unpack: a new folder for the model")
    parser.add_argument("--budget", type=float, help="status.budget_left_s before the call (or the previous reply's "
                                                     "lease.budget_left_s)")
    parser.add_argument("--limit", type=float, help="the call's timeout_s, as typed")
    parser.add_argument("--leave", type=float, default=0.0, help="call2: seconds of budget kept for call 3 (the zoo)")
    parser.add_argument("--warm", action="store_true", help="call1 on a machine already started (no start margin)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: the rehearsal")
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/bsr-gpu-out"),
                        help="where returned files go (default $OUT on the device)")
    parser.add_argument("--max-steps", type=int, default=None, help="call2: this max_steps instead of the measured fit")
    parser.add_argument("--recipe", default="configs/base_x2_gpu.yaml")
    parser.add_argument("--check", action="store_true", help="stage: only check what each call carries")
    parser.add_argument("--data", default=str(gpu_stage.SOURCE), help="stage: the data folder here")
    parser.add_argument("--dest", default=str(REPO), help="stage: where device_data/ and wheels/ go")
    parser.add_argument("--images", type=int, default=None, help="stage: a subset of the training images")
    parser.add_argument("--part-mib", type=float, default=None, help="stage: each part's size (default: the room)")
    args = parser.parse_args(argv)
    os.chdir(REPO)
    phase = {"bench": "call1", "train": "call2"}.get(args.phase, args.phase)
    if phase in ("call1", "call2") and (args.budget is None or args.limit is None):
        parser.error(f"{phase} needs --budget (status.budget_left_s) and --limit (its timeout_s): bench/GPU.md")
    if phase == "unpack":
        if not args.tar or not args.dest_dir:
            parser.error("unpack needs the returned .tar and a new folder: python bench/gpu.py unpack FILE.tar DEST")
        args.dest = args.dest_dir
        return unpack(args)
    if phase == "calls":
        for c in the_calls(args.budget):
            print(json.dumps(c))
        return 0
    if phase == "report":
        REPORT.write_text(gpu_report.render(gpu_run.load_all()))
        return 0
    if phase == "dry-run":
        import gpu_rehearse

        return gpu_rehearse.main([])
    try:
        return {"stage": stage, "call1": call1, "call2": call2, "receive": receive}[phase](args) or 0
    except SystemExit as stop:  # the reason in the call's log in $OUT too (a window too short fails before stages)
        if isinstance(stop.code, str) and gpu_run.LOG_FILE is not None:
            log(stop.code)
        raise


if __name__ == "__main__":
    sys.exit(main())
