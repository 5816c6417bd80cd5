"""The light zoo on a lent GPU (issue 15): bsr-lite x2, x3, x4 and bsr-tiny x2, trained side by side in bf16,
each from the bundled weights of its own name where they exist, brought back, evaluated here, and adopted only
where better on Set5, Set14 and BSD100.

On the GPU machine it is the optional call 3 of a lease (bench/GPU.md), after bench/gpu.py's calls 1 and 2 have
unpacked both data parts on the same warm machine and call 2 kept it time (`--leave`):

    python3 bench/gpu_zoo.py call3 --budget B --limit T   # the four runs at once (4 x (1 + 3 data workers) =
                                                          # 16 cores), each packed into $OUT as NAME.tar

It fails in its first seconds, naming them, when the parts or wheels it needs are not on the machine. Back here,
with the returned files in a folder:

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
import gpu
import gpu_measure
import gpu_run
import gpu_stage

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
FINISH_S = 90.0  # the runs the deadline stopped, ended together at the step reached
PACK_S = 40.0  # four models packed, the summary written after each
TAIL_S = gpu_run.TERM_S + FINISH_S + PACK_S + 10.0  # kept after the runs' deadline: their stop (SIGTERM's
# checkpoints, all at once), the finish runs, packing (a run in its final evaluation has GRACE_S more to end, and
# needs no finish run)


def init_for(name: str, fallback: str | None) -> str | None:
    from bsr_hub.models.hub import bundled_checkpoints

    bundled = bundled_checkpoints()
    if name in bundled:
        return name
    return fallback if fallback in bundled else None


def plan(cpu: bool, recipe=None, shm_free: int | None = None) -> list[dict]:
    """The four runs' train.py flags, on the staged data. Each is evaluated at the end on Set5 alone (inside the
    deadline, with bicubic scored beside it on the CPU); Set14 and BSD100 are measured back here by `adopt`. With
    the recipe and /dev/shm's free bytes, each run gets the data workers whose batches fit in its quarter of it."""
    data = gpu_stage.data_root()
    set5 = str(data / "benchmarks" / "Set5")
    runs = []
    for name, preset, scale, patch, fallback, rate in ZOO:
        init = init_for(name, fallback)
        flags = ["--model.preset", preset, "--scale", str(scale), "--rfs.patch_size", str(patch),
                 "--data.train_dir", str(data / "train"), "--validation.dir", set5, "--validation.eval_dirs", set5]
        if init:
            flags += ["--model.init_from", init]
        if rate is not None and init is None:
            flags += ["--optim.learning_rate", str(rate)]
        if cpu:  # the rehearsal: a tiny model of each preset (most init weights then start fresh), fp32, a
            # small batch, one data worker each: four runs at once on a loaded 2-core CPU within call 3's 570 s
            flags += ["--model.overrides", '{"num_features": 8, "num_groups": 2, "num_blocks": 1}',
                      "--optim.mixed_precision", "no", "--rfs.batch_size", "4", "--data.num_workers", "1",
                      "--rfs.num_intervals", "4",
                      "--validation.steps", "4", "--output.checkpointing_steps", "4", "--output.logging_steps", "2"]
        elif recipe is not None and shm_free is not None:
            batch = gpu_measure.batch_bytes(recipe.rfs.batch_size, patch, scale)
            workers = gpu_measure.loader_workers(recipe.data.num_workers, batch, shm_free // len(ZOO))
            if workers < recipe.data.num_workers:
                flags += ["--data.num_workers", str(workers)]
        runs.append({"name": name, "init_from": init, "flags": flags})
    return runs


def _steps(cpu: bool, seconds: float, batch: int) -> tuple[dict[str, int], str]:
    """max_steps per run: a short probe of each model's bf16 training step alone on the GPU, at its own scale and
    patch, shared by four runs and slowed by data loading (x 0.5), over the deadline minus start-up and
    evaluation (60 s)."""
    if cpu:
        return {name: 8 for name, *_ in ZOO}, "the CPU rehearsal's 8 steps"
    import torch

    steps = {}
    for name, preset, scale, patch, *_ in ZOO:
        rate = gpu_measure.train_throughput("cuda", preset, True, True, batch, patch, steps=20, warmup=5, scale=scale)
        steps[name] = max(200, int(0.5 * rate / 4 * (seconds - 60) / batch))
    torch.cuda.empty_cache()  # the probes' memory back to the GPU: the runs are other processes
    return steps, f"0.5 x (probed samples/s at its scale / 4 runs) x ({seconds:.0f} - 60) s / batch {batch}"


def call3(args: argparse.Namespace) -> int:
    """The four runs in the window the budget leaves; the summary, report and logs written after every stage and
    every model (7 files back: 4 tars, gpu_zoo.md, gpu_zoo_device.json, train_logs.txt)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    window = gpu_run.call_window("call3", args.budget, args.limit, fresh=False)
    gpu_run.log(window.describe())
    summary: dict = {"window": window.describe(), "runs": [], "stages": []}
    logs = gpu_run.RESULTS / "zoo_logs"

    def write_out(results: dict) -> None:
        summary["stages"] = results.get("stages_call3", {}).get("stages", [])
        summary.setdefault("environment", results.get("environment", {}))
        save_summary(summary, summary.get("all_runs", []), logs, out)

    stages = gpu_run.Stages("call3", out, None, window, write_out=write_out)
    stages.run("setup", lambda: gpu.setup("call3", args.device, need_datasets=True), fatal=True)
    cpu = args.device == "cpu"
    import torch

    from bsr_hub.training.config import resolve_config

    if not cpu and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device here; bench/gpu_rehearse.py is the CPU rehearsal")
    summary["environment"] = stages.run("environment", lambda: gpu_measure.environment(args.device))
    recipe = resolve_config(RECIPE, {})

    def probe() -> dict:
        gpu_measure.grid_kernels(RECIPE, args.device)  # the probes time the step as train.py runs it
        steps, why = _steps(cpu, window.left() - TAIL_S, recipe.rfs.batch_size)
        return {"steps": steps, "why": why}

    sized = stages.run("zoo_probe", probe, fatal=True)
    summary["max_steps_rule"] = sized["why"]
    root = gpu_stage.DEVICE_DATA / "outputs" / "zoo"
    shutil.rmtree(root, ignore_errors=True)
    runs = plan(cpu, recipe, gpu_measure.shm_free_bytes())
    summary["all_runs"] = runs
    # Runs that would be stopped before their first step are not started: the call ends, saying so.
    stages.run("zoo_runs", lambda: run_all(runs, sized["steps"], root, logs, window), need_s=TAIL_S + 60.0,
               fatal=True)
    if not any("returncode" in r for r in runs):
        return 1
    for r in runs:  # each model packed and the summary written as it comes: a kill later keeps what is done
        stages.run(f"collect_{r['name']}", lambda r=r: collect(r, root / r["name"], out), fatal=True)
        summary["runs"].append(r)
        write_out(gpu_run.load_all())
    return 0 if all(r["returncode"] == 0 for r in runs) else 1


def run_all(runs: list[dict], steps: dict[str, int], root: Path, logs: Path, window: gpu_run.Window) -> dict:
    """Start the four runs at once, hold them to the window less TAIL_S, end the stopped ones together."""
    logs.mkdir(parents=True, exist_ok=True)
    gpu_run.log(f"max_steps {steps}; starting {len(runs)} runs at once")
    procs = []
    for r in runs:
        r["command"] = [sys.executable, "train.py", "--config", RECIPE, *r["flags"], "--optim.max_steps",
                        str(steps[r["name"]]), "--output.dir", str(root / r["name"])]
        logfile = (logs / f"train_{r['name']}.log").open("w")
        procs.append((r, gpu_run.start_run(r["command"], logfile), logfile))
    ended = gpu_run.wait_for_runs([proc for _, proc, _ in procs], window.deadline - TAIL_S,
                                  [root / r["name"] / "model" / "training.json" for r in runs])
    for (r, proc, logfile), how in zip(procs, ended):
        r["stopped_at_deadline"] = how != "finished"
        r["returncode"] = proc.returncode
        logfile.close()
    finish_runs([r for r in runs if r["stopped_at_deadline"] and r["returncode"] == 0], root, logs,
                min(FINISH_S, window.left() - PACK_S))
    return {"returncodes": {r["name"]: r["returncode"] for r in runs}}


def finish_runs(stopped: list[dict], root: Path, logs: Path, seconds: float) -> None:
    """End the runs the deadline stopped at the step they reached (gpu_run.finish_command), all at once and within
    `seconds`, their stop included. One after another with no time limit, they could take the call past its limit
    and every summary with it."""
    stop_s = gpu_run.FINISH_GRACE_S + gpu_run.FINISH_TERM_S
    if stopped and seconds < stop_s + 5.0:
        gpu_run.log(f"no time left to end {len(stopped)} stopped run(s) ({seconds:.0f} s): their checkpoints stay")
        return
    deadline = time.monotonic() + seconds - stop_s
    started = []
    for r in stopped:
        step = gpu_run.last_checkpoint_step(root / r["name"])
        if not step:
            continue
        finish = gpu_run.finish_command(r["command"], step)
        logfile = (logs / f"train_{r['name']}.log").open("a")
        started.append((r, finish, gpu_run.start_run(finish, logfile), logfile))
    ended = gpu_run.wait_for_runs([proc for *_, proc, _ in started], deadline,
                                  [root / r["name"] / "model" / "training.json" for r, *_ in started],
                                  gpu_run.FINISH_GRACE_S, gpu_run.FINISH_TERM_S)
    for (r, finish, proc, logfile), how in zip(started, ended):
        r["finish_ended"], r["returncode"], r["finish_command"] = how, proc.returncode, " ".join(finish[1:])
        logfile.close()


def collect(r: dict, folder: Path, out: Path) -> dict:
    """A run's steps and median rate from its history, and its model packed into `out` if it was written."""
    if isinstance(r.get("command"), list):
        r["command"] = " ".join(r["command"][1:])
    history = gpu_run.read_history(folder)
    r.update(steps=max((h["step"] for h in history), default=0), samples_per_s_median=gpu_run.median_rate(history))
    if (folder / "model" / "training.json").is_file():
        r["packed"] = gpu.pack_model(folder / "model", out / f"{r['name']}.tar")
    gpu_run.log(f"{r['name']}: rc {r.get('returncode')}, {r['steps']} steps, {r.get('samples_per_s_median')} samples/s")
    return {k: v for k, v in r.items() if k != "flags"}


def save_summary(summary: dict, runs: list[dict], logs: Path, out: Path) -> None:
    """The summary, the report and the runs' logs as one file (at most 8 files come back: 4 tars and these 3)."""
    with (out / "train_logs.txt").open("w") as joined:
        for r in runs:
            log_file = logs / f"train_{r['name']}.log"
            joined.write(f"===== {r['name']}\n" + (log_file.read_text() if log_file.is_file() else "(no log)\n"))
    shown = {k: v for k, v in summary.items() if k != "all_runs"}
    gpu_run.write_atomically(out / "gpu_zoo_device.json", json.dumps(shown, indent=2, default=str))
    write_report(shown, None)
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
               str(scale), "--data-dir", str(gpu_stage.SOURCE / "benchmarks"), "--update-card", str(folder), "-q"]
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
        lines += ["**CPU rehearsal (`python bench/gpu_rehearse.py`), not GPU figures.**", ""]
    lines += [f"Device: {env.get('gpu', env.get('device', 'not recorded'))}; torch {env.get('torch', '?')}, "
              f"{env.get('cores', '?')} cores. Commands: `python3 bench/gpu_zoo.py call3` on the device "
              "(bench/GPU.md), then `python bench/gpu_zoo.py adopt FILES` here.", ""]
    if summary.get("window"):
        lines += [f"Window: {summary['window']}", ""]
    if summary.get("stages"):
        lines += ["| stage | started | status | s | note |", "|---|---|---|---|---|"]
        lines += [f"| {st['stage']} | {st.get('started', '')} | {st['status']} | {st.get('seconds', '')} | "
                  f"{(st.get('why') or st.get('error', '')).replace('|', '/').replace(chr(10), ' ')[:300]} |"
                  for st in summary["stages"]] + [""]
    lines += [f"max_steps: {summary.get('max_steps_rule', '-')}", "",
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
                fmt = lambda v: "-" if v is None else f"{v[0]:.2f} / {v[1]:.4f}"
                lines.append(f"| {d['name']} | {b} | {fmt(old)} | {fmt(new)} | {d['decision']} |")
        lines += [""] + [f"- `{d['command']}`" for d in decisions if d.get("command")]
    REPORT.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["stage", "receive", "call3", "train", "adopt"], help="train: call3")
    parser.add_argument("returned", nargs="?", help="adopt: the folder holding the returned files")
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/bsr-gpu-zoo-out"))
    parser.add_argument("--budget", type=float, help="the previous reply's lease.budget_left_s")
    parser.add_argument("--limit", type=float, help="the call's timeout_s, as typed")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: the rehearsal")
    parser.add_argument("--replace", action="store_true", help="adopt: replace the bundled checkpoints it beats")
    parser.add_argument("--work", default="outputs/gpu-zoo", help="adopt: where returned models are unpacked")
    parser.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS),
                        help="adopt: better on all of these to replace (default Set5 Set14 BSD100)")
    args = parser.parse_args(argv)
    os.chdir(REPO)
    if args.phase == "stage":
        return gpu.main(["stage"])
    if args.phase == "receive":
        return gpu.main(["receive", "--device", args.device, "--out", args.out])
    if args.phase == "adopt":
        if not args.returned:
            parser.error("adopt needs the folder of returned files")
        return adopt(args)
    if args.budget is None or args.limit is None:
        parser.error("call3 needs --budget (the previous reply's lease.budget_left_s) and --limit (its timeout_s)")
    return call3(args)


if __name__ == "__main__":
    sys.exit(main())
