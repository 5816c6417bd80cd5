"""What a first `bsr-hub upscale` costs, split into its parts: the import, loading the model, the first call (which,
for inputs of 256x256 or more, measures the backends on this machine once and builds the fastest) and a second call.

    python bench/first_upscale.py [--model bsr-lite-x2] [--rounds 3] [--threads N]

Each round is a fresh process, as the command line is, in three settings: `backend="auto"` in a process that finds
no stored measurement (a new user's first command: an empty BSR_HUB_CACHE folder), "auto" in a later process (the
table and the ONNX graph stored by the first), and eager PyTorch (no measurement, no build). "of which measuring" is the time
autotune.tune logged for the measurement, builds of every candidate included, and split by candidate (and into build
and the rest) below the table. Writes bench/results/first_upscale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import cpu_description, machine_load, write_result

ROUND = r"""
import json, logging, sys, time
t0 = time.perf_counter()
import torch
from bsr_hub import BSRModel
from bsr_hub.core.examples import example_images
from PIL import Image
t1 = time.perf_counter()
if int(sys.argv[3]):
    torch.set_num_threads(int(sys.argv[3]))
measured = []

class Measured(logging.Handler):  # autotune.tune logs each measurement with its Tuning as record.tuning
    def emit(self, record):
        t = getattr(record, "tuning", None)
        if t is not None:
            shapes = sorted({p.shape for p in t.probes.values()})
            measured.append((round(t.cost, 3), t.best().name, shapes,
                             {k: round(v, 3) for k, v in t.costs.items()}, {k: round(v, 3) for k, v in t.builds.items()}))

log = logging.getLogger("bsr_hub.inference.autotune")
log.setLevel(logging.INFO)
log.addHandler(Measured())
model = BSRModel.from_pretrained(sys.argv[1])
t2 = time.perf_counter()
img = Image.open(example_images()[2]).convert("RGB")
model.upscale(img, backend=sys.argv[2])
t3 = time.perf_counter()
model.upscale(img, backend=sys.argv[2])
t4 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "first call": t3 - t2, "second call": t4 - t3,
                  "of which measuring": sum(m[0] for m in measured), "measured": measured}))
"""

SETTINGS = {  # name -> (backend, whether the cache folder is emptied before each round)
    "auto, first process (no stored measurement)": ("auto", True),
    "auto, a later process (measurement stored)": ("auto", False),
    "eager": ("eager", False),
}


def cost_table(first: list[dict]) -> list[str]:
    """Where the first process's measuring went: per candidate, the median over the rounds of what measuring it took
    (its build on first use, which for ONNX Runtime is the export and the session, the warm-up, its passes, the pause
    after it) and of its build alone."""
    costs = [{name: s for m in r["measured"] for name, s in m[3].items()} for r in first]
    builds = [{name: s for m in r["measured"] for name, s in m[4].items()} for r in first]

    def median(per_round: list[dict], name: str) -> float:
        return statistics.median(c.get(name, 0.0) for c in per_round)

    names = sorted({name for c in costs for name in c}, key=lambda name: -median(costs, name))
    lines = ["", ("What measuring each candidate took in the first process (median over the rounds, seconds): in all "
             "(build on first use, warm-up, passes, pause after ONNX Runtime), and the build alone:"), "",
             "| candidate | in all | build | the rest |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {median(costs, name):.2f} | {median(builds, name):.2f} | "
              f"{statistics.median(c.get(name, 0.0) - b.get(name, 0.0) for c, b in zip(costs, builds)):.2f} |"
              for name in names]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bsr-lite-x2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "first_upscale.md")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "BSR_HUB_CACHE": cache, "BSR_HUB_AUTOTUNE": "1"}
        load_before = machine_load()
        for _ in range(args.rounds):  # interleaved, so load changes hit every setting alike
            for name, (backend, empty) in SETTINGS.items():
                if empty:  # the timings and the ONNX graphs (onnx/) a first process on this machine has not got
                    for entry in Path(cache).iterdir():
                        if entry.is_dir():
                            shutil.rmtree(entry)
                        else:
                            entry.unlink()
                out = subprocess.run([sys.executable, "-c", ROUND, args.model, backend, str(args.threads)],
                                     capture_output=True, text=True, check=True, env=env)
                runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
        load_after = machine_load()
    parts = ("import", "load", "first call", "of which measuring", "second call")
    command = f"python bench/first_upscale.py --model {args.model} --rounds {args.rounds}"
    command += f" --threads {args.threads}" if args.threads else ""
    lines = [
        "# The first upscale in a process, part by part",
        "",
        (f"`{command}`: the README's photo (chelsea, 451x300, x2), each round a fresh process; median seconds over the "
        "rounds. total = import + load + first call (what one `bsr-hub upscale` of this photo pays before writing)."),
        "",
        f"CPU: {cpu_description()}; torch threads: {args.threads or 'torch default'}.",
        f"Load before: {load_before}.",
        f"Load after: {load_after}.",
        "",
        "| setting | " + " | ".join(parts) + " | total |",
        "|---|" + "---:|" * (len(parts) + 1),
    ]
    for name, rows in runs.items():
        med = {p: statistics.median(r[p] for r in rows) for p in parts}
        total = statistics.median(sum(r[p] for p in ("import", "load", "first call")) for r in rows)
        lines.append(f"| {name} | " + " | ".join(f"{med[p]:.2f}" for p in parts) + f" | {total:.2f} |")
    first = runs[next(iter(SETTINGS))]
    lines += ["", ("What the first process measured (seconds, its choice, the probes (B, h, w), what measuring each "
              "candidate took, and of that its build), per round:"), ""]
    lines += [f"- {json.dumps(r['measured'])}" for r in first]
    lines += cost_table(first)
    write_result(args.out, lines)


if __name__ == "__main__":
    main()
