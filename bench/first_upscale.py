"""What a first `bsr-hub upscale` costs, split into its parts: the import, loading the model, the first call
(which builds the backend's graph once per process for inputs over 256x256) and a second call (built).

    python bench/first_upscale.py [--model bsr-lite-x2] [--rounds 3]

Each round is a fresh process, as the command line is. Writes bench/results/first_upscale.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from common import cpu_description, machine_load, write_result

ROUND = r"""
import json, sys, time
t0 = time.perf_counter()
from bsr_hub import BSRModel
from bsr_hub.core.examples import example_images
from PIL import Image
t1 = time.perf_counter()
model = BSRModel.from_pretrained(sys.argv[1])
t2 = time.perf_counter()
img = Image.open(example_images()[2]).convert("RGB")
model.upscale(img, backend=sys.argv[2])
t3 = time.perf_counter()
model.upscale(img, backend=sys.argv[2])
t4 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "first call": t3 - t2, "second call": t4 - t3}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bsr-lite-x2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "first_upscale.md")
    args = parser.parse_args()
    backends = ("auto", "eager")
    runs: dict[str, list[dict[str, float]]] = {b: [] for b in backends}
    for _ in range(args.rounds):  # interleaved, so load changes hit both alike
        for backend in backends:
            out = subprocess.run([sys.executable, "-c", ROUND, args.model, backend], capture_output=True, text=True,
                                 check=True)
            runs[backend].append(json.loads(out.stdout.strip().splitlines()[-1]))
    parts = ("import", "load", "first call", "second call")
    lines = [
        "# The first upscale in a process, part by part",
        "",
        f"`python bench/first_upscale.py --model {args.model} --rounds {args.rounds}`: the README's photo "
        "(chelsea, 451x300, x2), each round a fresh process; median seconds over the rounds.",
        "",
        f"CPU: {cpu_description()}. Load while measuring: {machine_load()}.",
        "",
        "| backend | " + " | ".join(parts) + " | total |",
        "|---|" + "---|" * (len(parts) + 1),
    ]
    for backend in backends:
        med = {p: statistics.median(r[p] for r in runs[backend]) for p in parts}
        total = statistics.median(sum(r[p] for p in parts[:3]) for r in runs[backend])
        lines.append(f"| {backend} | " + " | ".join(f"{med[p]:.2f}" for p in parts) + f" | {total:.2f} |")
    lines += ["", "total = import + load + first call (what one `bsr-hub upscale` of this photo pays before writing)."]
    write_result(args.out, lines)


if __name__ == "__main__":
    main()
