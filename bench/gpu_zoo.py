"""The light zoo on a lent GPU (issue 15): bsr-lite x2, x3, x4 and bsr-tiny x2, trained side by side in bf16,
each from the bundled weights of its own name where they exist, brought back, evaluated here, and adopted only
where better on Set5, Set14 and BSD100.

Here, before the lease:

    python bench/gpu_zoo.py stage        # the same wheels/ and device_data/part_N as bench/gpu.py; prints the calls
    python bench/gpu_zoo.py dry-run      # the device side on this CPU with a tiny budget

On the GPU machine, one phase per `run` call (bench/GPU.md lists them with carry lists and timeouts):

    python3 bench/gpu_zoo.py receive     # every call but the last: carry one part of the data
    python3 bench/gpu_zoo.py train       # last call: the four runs at once (4 x (1 + 3 data workers) = 16 cores),
                                         # each packed into $OUT as NAME.tar with gpu_zoo.md

Back here, with the returned files in a folder:

    python bench/gpu_zoo.py adopt /work/.device/<...>/files          # evaluate each, write bench/results/gpu_zoo.md
    python bench/gpu_zoo.py adopt /work/.device/<...>/files --replace  # and replace the bundled ones it beats

Where each run starts from: its own bundled checkpoint if the package has it (bsr_hub/checkpoints/NAME),
else bsr-lite-x2's weights for bsr-lite x3/x4 (the upsampler starts fresh), else scratch (bsr-tiny x2).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu  # noqa: E402  (bench/gpu.py: staging, device set-up, deadlines, packing)

REPO = gpu.REPO
RECIPE = "configs/zoo_gpu.yaml"
REPORT = REPO / "bench" / "results" / "gpu_zoo.md"
BENCHMARKS = ("Set5", "Set14", "BSD100")
ZOO = [  # name, preset, scale, LR patch, fallback init, learning rate
    ("bsr-lite-x2", "bsr-lite", 2, 48, None, None),
    ("bsr-lite-x3", "bsr-lite", 3, 48, "bsr-lite-x2", None),
    ("bsr-lite-x4", "bsr-lite", 4, 60, "bsr-lite-x2", None),
    ("bsr-tiny-x2", "bsr-tiny", 2, 48, None, 1.0e-3),  # from scratch it needs the tiny recipe's rate
]


def init_for(name: str, fallback: str | None) -> str | None:
    from bsr_hub.models.hub import bundled_checkpoints

    bundled = bundled_checkpoints()
    if name in bundled:
        return name
    return fallback if fallback in bundled else None


def plan(cpu: bool, recipe=None, shm_free: int | None = None) -> list[dict]:
    """The four runs' train.py flags. Each is evaluated at the end on Set5 alone (inside the deadline, with bicubic
    scored beside it on the CPU); Set14 and BSD100 are measured back here by `adopt`. With the recipe and
    /dev/shm's free bytes, each run gets the data workers whose batches fit in its quarter of /dev/shm."""
    runs = []
    for name, preset, scale, patch, fallback, rate in ZOO:
        init = init_for(name, fallback)
        flags = ["--model.preset", preset, "--scale", str(scale), "--rfs.patch_size", str(patch),
                 "--validation.eval_dirs", str(gpu.SHARED / "benchmarks" / "Set5")]
        if init:
            flags += ["--model.init_from", init]
        if rate is not None and init is None:
            flags += ["--optim.learning_rate", str(rate)]
        if cpu:  # the rehearsal: fp32, a small batch, one data worker each
            flags += ["--optim.mixed_precision", "no", "--rfs.batch_size", "4", "--data.num_workers", "1",
                      "--rfs.num_intervals", "4",
                      "--validation.steps", "4", "--output.checkpointing_steps", "4", "--output.logging_steps", "2"]
        elif recipe is not None and shm_free is not None:
            batch = gpu.batch_bytes(recipe.rfs.batch_size, patch, scale)
            workers = gpu.loader_workers(recipe.data.num_workers, batch, shm_free // len(ZOO))
            if workers < recipe.data.num_workers:
                flags += ["--data.num_workers", str(workers)]
        runs.append({"name": name, "init_from": init, "flags": flags})
    return runs


def _steps(cpu: bool, seconds: float, batch: int) -> tuple[dict[str, int], str]:
    """max_steps per run: a short probe of each model's bf16 training step alone on the GPU, at its own scale and
    patch, shared by four runs and slowed by data loading (x 0.5), over the deadline minus start-up and
    evaluation (60 s)."""
    import torch

    if cpu:
        return {name: 8 for name, *_ in ZOO}, "the CPU rehearsal's 8 steps"
    steps = {}
    for name, preset, scale, patch, *_ in ZOO:
        rate = gpu.train_throughput("cuda", preset, True, True, batch, patch, steps=20, warmup=5, scale=scale)
        steps[name] = max(200, int(0.5 * rate / 4 * (seconds - 60) / batch))
    torch.cuda.empty_cache()  # the probes' memory back to the GPU: the runs are other processes
    return steps, f"0.5 x (probed samples/s at its scale / 4 runs) x ({seconds:.0f} - 60) s / batch {batch}"


def train(args: argparse.Namespace) -> int:
    import torch

    from bsr_hub.training.config import resolve_config

    data = gpu.device_setup(cpu=args.cpu)
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device here; `python bench/gpu_zoo.py dry-run` is the CPU rehearsal")
    missing = [d for d in ("train/T91", "train/BSD200", "train/BSDS500_test200", "benchmarks/Set5")
               if not (data / d).is_dir()]
    if missing:
        raise SystemExit(f"error: {', '.join(missing)} not staged under {data}: carry every device_data/part_N first")
    env = gpu.environment("cpu" if args.cpu else "cuda")
    if "import_error" in env:
        raise SystemExit(f"error: {env['import_error']} (were the wheels carried? see bench/GPU.md)")
    gpu.grid_kernels(RECIPE, "cpu" if args.cpu else "cuda")  # the probes time the step as train.py runs it
    recipe = resolve_config(RECIPE, {})
    t0 = time.perf_counter()
    steps, why = _steps(args.cpu, args.train_seconds, recipe.rfs.batch_size)
    probe = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = gpu.DEVICE_DATA / "outputs" / "zoo"
    shutil.rmtree(root, ignore_errors=True)
    runs = plan(args.cpu, recipe, gpu.shm_free_bytes())
    gpu.log(f"{env}; max_steps {steps} ({why}); starting {len(runs)} runs at once")
    logs = gpu.RESULTS / "zoo_logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for r in runs:
        r["command"] = [sys.executable, "train.py", "--config", RECIPE, *r["flags"], "--optim.max_steps",
                        str(steps[r["name"]]), "--output.dir", str(root / r["name"])]
        logfile = (logs / f"train_{r['name']}.log").open("w")
        procs.append((r, gpu.start_run(r["command"], logfile), logfile))
    deadline = time.monotonic() + args.train_seconds - probe
    for r, proc, logfile in procs:
        ended = gpu.wait_for_run(proc, deadline, root / r["name"] / "model" / "training.json")
        r["stopped_at_deadline"] = ended != "finished"
        r["returncode"] = proc.returncode
        logfile.close()
    finish_runs([r for r in runs if r["stopped_at_deadline"] and r["returncode"] == 0], root, logs, FINISH_S)
    summary = {"environment": env, "max_steps_rule": why, "runs": [], "seconds": 0}
    for r in runs:  # each model packed and the summary written as it comes: a kill later keeps what is done
        collect(r, root / r["name"], out)
        summary["runs"].append(r)
        summary["seconds"] = round(time.perf_counter() - t0)
        save_summary(summary, runs, logs, out)
    return 0 if all(r["returncode"] == 0 for r in runs) else 1


FINISH_S = 120.0  # the runs the deadline stopped, ended together at the step reached


def finish_runs(stopped: list[dict], root: Path, logs: Path, seconds: float) -> None:
    """End the runs the deadline stopped at the step they reached, all at once and within `seconds` (a resume with
    max_steps set to it: the model, its record and card are written, and the record notes the change). One after
    another with no time limit, they could take the call past its limit and every summary with it."""
    deadline = time.monotonic() + seconds
    started = []
    for r in stopped:
        folder = root / r["name"]
        step = gpu.last_checkpoint_step(folder)
        if not step:
            continue
        cmd = r["command"]
        finish = [*cmd[:cmd.index("--optim.max_steps") + 1], str(step), "--output.dir", str(folder), "--resume",
                  "latest", "--resume_allow_changes"]
        logfile = (logs / f"train_{r['name']}.log").open("a")
        started.append((r, finish, gpu.start_run(finish, logfile), logfile))
    for r, finish, proc, logfile in started:
        r["finish_ended"] = gpu.wait_for_run(proc, deadline, root / r["name"] / "model" / "training.json")
        r["returncode"], r["finish_command"] = proc.returncode, " ".join(finish[1:])
        logfile.close()


def collect(r: dict, folder: Path, out: Path) -> None:
    """A run's steps and median rate from its history, and its model packed into `out` if it was written."""
    if isinstance(r["command"], list):
        r["command"] = " ".join(r["command"][1:])
    history_file = folder / "history.jsonl"
    history = [json.loads(x) for x in history_file.read_text().splitlines()] if history_file.is_file() else []
    rates = sorted(h["samples_per_s"] for h in history if "samples_per_s" in h)[1:]
    r.update(steps=max((h["step"] for h in history), default=0),
             samples_per_s_median=rates[len(rates) // 2] if rates else None)
    if (folder / "model" / "training.json").is_file():
        r["packed"] = gpu.pack_model(folder / "model", out / f"{r['name']}.tar")
    gpu.log(f"{r['name']}: rc {r['returncode']}, {r['steps']} steps, {r.get('samples_per_s_median')} samples/s")


def save_summary(summary: dict, runs: list[dict], logs: Path, out: Path) -> None:
    """The summary, the report and the runs' logs as one file (at most 8 files come back: 4 tars and these 3)."""
    with (out / "train_logs.txt").open("w") as joined:
        for r in runs:
            log_file = logs / f"train_{r['name']}.log"
            joined.write(f"===== {r['name']}\n" + (log_file.read_text() if log_file.is_file() else "(no log)\n"))
    (out / "gpu_zoo_device.json").write_text(json.dumps(summary, indent=2))
    write_report(summary, None)
    if REPORT.resolve() != (out / "gpu_zoo.md").resolve():
        shutil.copy(REPORT, out / "gpu_zoo.md")


# ---------------------------------------------------------------------------------------------- back here


def _scores(results: list[dict], scale: int) -> dict[str, tuple[float, float]]:
    return {r["benchmark"]: (r["psnr"], r["ssim"]) for r in results
            if r["scale"] == scale and r["degradation"] == "BI" and not r.get("self_ensemble")}


def adopt(args: argparse.Namespace) -> int:
    """Unpack each returned model, evaluate it with evaluate.py --update-card, compare with the bundled one of
    its name, and (with --replace) replace the bundled one only where it is better on all three benchmarks."""
    from bsr_hub.models.hub import bundled_checkpoints

    returned = Path(args.returned)
    summary_file = returned / "gpu_zoo_device.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {"runs": []}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    bundled = bundled_checkpoints()
    decisions = []
    for name, preset, scale, *_ in ZOO:
        tar = returned / f"{name}.tar"
        if not tar.is_file():
            decisions.append({"name": name, "decision": "not returned"})
            continue
        folder = work / name
        shutil.rmtree(folder, ignore_errors=True)
        gpu.main(["unpack", str(tar), str(folder)])
        cmd = [sys.executable, "evaluate.py", "--model", str(folder), "--benchmarks", *args.benchmarks, "--scale",
               str(scale), "--data-dir", str(gpu.SHARED / "benchmarks"), "--update-card", str(folder), "-q"]
        subprocess.run(cmd, cwd=REPO, check=True)
        measured = json.loads((folder / "eval_results.json").read_text())["results"]
        after = _scores(measured, scale)
        if name in bundled and (bundled[name] / "eval_results.json").is_file():
            before = _scores(json.loads((bundled[name] / "eval_results.json").read_text())["results"], scale)
            against = "the bundled one"
        else:  # nothing bundled under this name yet: it must at least beat bicubic everywhere
            before = {r["benchmark"]: (r["bicubic_psnr"], r["bicubic_ssim"]) for r in measured
                      if r.get("bicubic_psnr") is not None}
            against = "bicubic (no bundled one)"
        better = all(b in after and b in before and after[b][0] > before[b][0] for b in args.benchmarks)
        decision = f"better than {against} on all: adopt" if better else f"not better than {against} on all: keep out"
        if better and args.replace:
            target = REPO / "bsr_hub" / "checkpoints" / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(folder, target)
            # Re-render the card where it now lives (its "How to use" names the bundled model, not the folder).
            subprocess.run([*cmd[:3], name, *cmd[4:-3], "--update-card", str(target), "-q"], cwd=REPO, check=True)
        decisions.append({"name": name, "before": before, "after": after, "decision": decision,
                          "replaced": bool(better and args.replace), "command": " ".join(["python", *cmd[1:]])})
    summary["adoption"] = decisions
    write_report(summary, decisions, args.benchmarks)
    print(REPORT.read_text())
    return 0


def write_report(summary: dict, decisions: list[dict] | None, benchmarks=BENCHMARKS) -> None:
    env = summary.get("environment", {})
    lines = ["# The light zoo trained on a GPU (bench/gpu_zoo.py)", ""]
    if env.get("device") == "cpu":
        lines += ["**CPU rehearsal (`python bench/gpu_zoo.py dry-run`), not GPU figures.**", ""]
    lines += [f"Device: {env.get('gpu', env.get('device', 'not recorded'))}; torch {env.get('torch', '?')}, "
              f"{env.get('cores', '?')} cores. Commands: `python3 bench/gpu_zoo.py train` on the device "
              "(bench/GPU.md), then `python bench/gpu_zoo.py adopt FILES` here.", "",
              f"max_steps: {summary.get('max_steps_rule', '-')}", "",
              "| model | started from | steps | samples/s (median, data loading included) | stopped at deadline | "
              "returned |", "|---|---|---|---|---|---|"]
    for r in summary.get("runs", []):
        rate = r.get("samples_per_s_median")
        lines.append(f"| {r['name']} | {r.get('init_from') or 'scratch'} | {r.get('steps', '-')} | "
                     f"{'-' if rate is None else f'{rate:.0f}'} | {r.get('stopped_at_deadline')} | "
                     f"{r.get('packed', {}).get('file', 'no')} |")
    lines += [""]
    for r in summary.get("runs", []):
        lines.append(f"- {r['name']}: `{r.get('command', '')}`")
    if decisions is not None:
        lines += ["", "## Evaluated here (Y-PSNR / SSIM, x scale, BI, evaluate.py)", "",
                  "| model | benchmark | before (bundled, else bicubic) | GPU-trained | decision |",
                  "|---|---|---|---|---|"]
        for d in decisions:
            for b in benchmarks:
                old, new = d.get("before", {}).get(b), d.get("after", {}).get(b)
                fmt = lambda v: "-" if v is None else f"{v[0]:.2f} / {v[1]:.4f}"  # noqa: E731
                lines.append(f"| {d['name']} | {b} | {fmt(old)} | {fmt(new)} | {d['decision']} |")
        lines += [""] + [f"- `{d['command']}`" for d in decisions if d.get("command")]
    REPORT.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["stage", "receive", "train", "dry-run", "adopt"])
    parser.add_argument("returned", nargs="?", help="adopt: the folder holding the returned files")
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/bsr-gpu-zoo-out"))
    parser.add_argument("--train-seconds", type=float, default=360.0,
                        help="deadline of the four runs, probe, start-up and final evaluation included (default "
                             "360: the train call's 440 s limit minus data set-up and packing)")
    parser.add_argument("--cpu", action="store_true", help="run a phase on the CPU (the rehearsal)")
    parser.add_argument("--replace", action="store_true", help="adopt: replace the bundled checkpoints it beats")
    parser.add_argument("--work", default="outputs/gpu-zoo", help="adopt: where returned models are unpacked")
    parser.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS),
                        help="adopt: better on all of these to replace (default Set5 Set14 BSD100)")
    args = parser.parse_args(argv)
    os.chdir(REPO)
    if args.phase == "stage":
        return gpu.main(["stage", "--script", "bench/gpu_zoo.py"])
    if args.phase == "receive":
        return gpu.main(["receive", *(["--cpu"] if args.cpu else [])])
    if args.phase == "dry-run":
        args.cpu = True
        global REPORT
        REPORT = Path(args.out) / "gpu_zoo.md"
        return train(args)
    if args.phase == "adopt":
        if not args.returned:
            parser.error("adopt needs the folder of returned files")
        return adopt(args)
    return train(args)


if __name__ == "__main__":
    sys.exit(main())
