"""The paper's ablation, reproduced with seeds and paired intervals (issue 26): does each part of BSR pay?

    python bench/ablation.py                           # every column x seeds 0 1 2 on bsr-tiny x2, the CPU budget
    python bench/ablation.py --columns full no-sc --seeds 0 1 2 3 4   # one column pair, more seeds
    python bench/ablation.py --report                  # the table and plot from the runs already finished
    python bench/ablation.py --preset bsr-base --steps 300000 --threads 0 --out outputs/ablation-base \
        --results bench/results/ablation_base.md      # the paper's scale, on a GPU machine

Each run is `accelerate launch train.py --config configs/ablation_tiny_x2.yaml --seed K` plus the column's one
switch (COLUMNS), in its own output folder (OUT/COLUMN/seedK); train.py evaluates the saved model at the end on
Set5 / Set14 / BSD100 with the published protocol (MATLAB bicubic LR, Y-PSNR), and this script reads those
eval_results.json files. A finished run is never trained again and an interrupted one resumes from its last
checkpoint, so the grid can be stopped and restarted; a run made with other settings (another --steps, say) stops
the grid, naming its folder. Every column uses the same seeds (a paired design: seed K
of a column and of full BSR start from the same random stream), and the report gives, per column and set, the
paired difference to full BSR with its 95 % t interval over seeds (bench/ablation_stats.py), full BSR's own
seed-to-seed spread, and what the paper's table says. Results: bench/results/ablation.md and ablation.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

BASE_RECIPE = "configs/ablation_tiny_x2.yaml"
RESULTS = Path(__file__).resolve().parent / "results" / "ablation.md"
SETS = ("Set5", "Set14", "BSD100")

COLUMNS: dict[str, tuple[str, dict]] = {
    "full": ("full BSR", {}),
    "no-rfs": ("without RFS (uniform patches)", {"rfs.mode": "uniform"}),
    "no-sc": ("without SC (group forwarding off)", {"model.overrides": {"use_group_forwarding": False}}),
    "no-lsa": ("without LSA (attention off)", {"model.overrides": {"use_attention": False}}),
    "l2": ("L2 only", {"loss.l1_weight": 0, "loss.lp_weight": 0}),
    "l2-l1": ("L2 + L1", {"loss.lp_weight": 0}),
}
"""Column -> (what it is, the settings it changes in the base recipe). "full" is the reference."""

PAPER_PSNR = {"full": 32.20, "no-rfs": 32.15, "no-sc": 32.10, "l2": 32.17, "l2-l1": 32.19}
"""The paper's ablation table (Kong et al. 2020, PSNR in dB; its scale and set are not given). It has no LSA column."""


def run_dir(out: Path, column: str, seed: int) -> Path:
    return out / column / f"seed{seed}"


def column_flags(recipe: str, column: str) -> list[str]:
    """The train.py flags that make `column` from the recipe. Model switches are merged into the recipe's own
    model.overrides (a flag replaces the whole mapping), so a recipe that sizes its model by overrides keeps its size."""
    import yaml

    flags = []
    for dotted, value in COLUMNS[column][1].items():
        if dotted == "model.overrides":
            base = (yaml.safe_load((REPO / recipe).read_text()).get("model") or {}).get("overrides") or {}
            value = {**base, **value}
        flags += [f"--{dotted}", json.dumps(value) if isinstance(value, dict) else str(value)]
    return flags


def train_command(args: argparse.Namespace, column: str, seed: int) -> list[str]:
    """The command line of one run (without the resume flags, which depend on what the folder holds)."""
    if args.launcher == "accelerate":
        launch = [sys.executable, "-m", "accelerate.commands.launch"]
        launch += ["--num_cpu_threads_per_process", str(args.threads)] if args.threads else []
    else:  # one process without Accelerate's launcher: what the tests use, and fine for a single device
        launch = [sys.executable]
    cmd = launch + ["train.py", "--config", args.config, "--seed", str(seed),
                    "--output.dir", str(run_dir(args.out, column, seed))]
    if args.steps:
        cmd += ["--optim.max_steps", str(args.steps)]
    if args.preset:
        cmd += ["--model.preset", args.preset]
    return cmd + column_flags(args.config, column) + args.train_args


def resume_flags(folder: Path) -> list[str]:
    """Continue an interrupted run from its last checkpoint; one stopped before its first checkpoint starts over."""
    if any((folder / "checkpoints").glob("step_*")):
        return ["--resume", "latest"]
    return ["--output.overwrite"] if folder.exists() else []


def check_settings(args: argparse.Namespace, column: str, seed: int) -> None:
    """Stop, naming the folder, where it holds a run (finished, or interrupted at a checkpoint) made with other
    settings than this grid asks for it (another --steps, --preset, recipe, column switch or seed): the grid would
    otherwise skip or resume it and mix budgets in one table. The settings compared are those a resume may not
    change (bsr_hub.training.resume.RESUME_GUARDED); the folder is never touched."""
    from bsr_hub.commands.train import load_train_config
    from bsr_hub.training.checkpoints import list_checkpoints
    from bsr_hub.training.resume import resume_changes

    folder = run_dir(args.out, column, seed)
    record, checkpoints = folder / "model" / "training.json", list_checkpoints(folder)
    if record.is_file():
        import yaml

        saved, what = yaml.safe_load(json.loads(record.read_text()).get("recipe") or "{}"), "a finished run"
    elif checkpoints:
        saved, what = json.loads((checkpoints[-1][1] / "trainer.json").read_text())["config"], "an interrupted run"
    else:
        return
    cmd = train_command(args, column, seed)
    flags = cmd[cmd.index("train.py") + 1:]
    flags[flags.index("--config") + 1] = str(REPO / args.config)  # train.py runs in REPO
    changes = resume_changes(saved, load_train_config(flags)[0])
    if changes:
        listed = "; ".join(f"{k} {old!r} there, {new!r} asked" for k, old, new in changes)
        raise SystemExit(f"error: {folder} holds {what} with other settings than this grid's ({listed}). It is "
                         "kept as it is: give --out a new folder for these settings, or move that one away.")


def run_order(columns: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    """Full BSR over every seed first (its spread is the first thing to know), then seed by seed the other
    columns, so a grid stopped early holds complete pairs."""
    order = [("full", s) for s in seeds] if "full" in columns else []
    return order + [(c, s) for s in seeds for c in columns if c != "full"]


def finished(folder: Path) -> dict | None:
    """A finished run's PSNR per set and wall time, or None."""
    results = folder / "model" / "eval_results.json"
    if not results.exists():
        return None
    entries = json.loads(results.read_text())["results"]
    row = {e["benchmark"]: e["psnr"] for e in entries if e["benchmark"] in SETS}
    record = folder / "model" / "training.json"
    row["wall_s"] = json.loads(record.read_text()).get("wall_time_s") if record.exists() else None
    return row if all(s in row for s in SETS) else None


def run_grid(args: argparse.Namespace) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    order = run_order(args.columns, args.seeds)
    for i, (column, seed) in enumerate(order, 1):
        folder = run_dir(args.out, column, seed)
        check_settings(args, column, seed)
        if finished(folder):
            continue
        cmd = train_command(args, column, seed) + resume_flags(folder)
        folder.mkdir(parents=True, exist_ok=True)
        print(f"[{i}/{len(order)}] {column} seed {seed}: {shlex.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        with open(folder.parent / f"seed{seed}.log", "a") as log:
            code = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        if code != 0:
            raise SystemExit(f"error: {column} seed {seed} failed (exit {code}); its log: {folder.parent}/seed{seed}.log")
        print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
        write_report(args)


def collect(args: argparse.Namespace) -> dict[str, dict[int, dict]]:
    """column -> seed -> finished row, for the columns and seeds asked that have finished."""
    runs: dict[str, dict[int, dict]] = {}
    for column in args.columns:
        for seed in args.seeds:
            check_settings(args, column, seed)
            row = finished(run_dir(args.out, column, seed))
            if row:
                runs.setdefault(column, {})[seed] = dict(row, mean=sum(row[s] for s in SETS) / len(SETS))
    return runs


def write_report(args: argparse.Namespace) -> None:
    from ablation_report import render

    runs = collect(args)
    if "full" not in runs:
        print("no finished full-BSR run yet: nothing to report")
        return
    render(runs, args, COLUMNS, PAPER_PSNR, SETS)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=BASE_RECIPE, help="the base recipe every column starts from")
    parser.add_argument("--columns", nargs="+", default=list(COLUMNS), choices=list(COLUMNS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, help="optim.max_steps for every run (default: the recipe's)")
    parser.add_argument("--preset", help="model.preset for every run (default: the recipe's)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run; 0 = the launcher's default")
    parser.add_argument("--launcher", choices=("accelerate", "python"), default="accelerate")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "ablation", help="the runs' folders")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the Markdown report (a PNG beside it)")
    parser.add_argument("--report", action="store_true", help="only write the report from finished runs")
    parser.add_argument("train_args", nargs="*", help="after --: more train.py flags for every run")
    args = parser.parse_args(argv)
    if "full" not in args.columns:
        parser.error("--columns must include full: every other column is compared with it")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds repeats a seed: {args.seeds}")
    args.out = args.out.resolve()
    args.command = shlex.join(["python", "bench/ablation.py", *(sys.argv[1:] if argv is None else argv)])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.report:
        run_grid(args)
    write_report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
