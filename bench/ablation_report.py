"""The ablation grid's report (bench/ablation.py): bench/results/ablation.md and the per-seed plot beside it."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ablation_stats import Interval, paired_interval, resolvable_effect, seed_spread
from common import cpu_description, machine_load, write_result


def recipe_of(args, column: str, seed: int) -> dict:
    """The recipe a finished run recorded (training.json), for the report's header."""
    record = args.out / column / f"seed{seed}" / "model" / "training.json"
    if not record.exists():
        return {}
    import yaml

    return yaml.safe_load(json.loads(record.read_text()).get("recipe") or "{}")


def paired(runs: dict, column: str, key: str) -> Interval | None:
    """The column's paired interval against full BSR over the seeds both have; None where they share none."""
    seeds = sorted(set(runs[column]) & set(runs["full"]))
    if not seeds:
        return None
    return paired_interval([runs[column][s][key] for s in seeds], [runs["full"][s][key] for s in seeds])


def verdict(iv: Interval, paper_diff: float | None) -> str:
    """What the column's interval (on the mean of the three sets) says about the paper's difference."""
    if iv.n < 2:
        return "one seed: no interval yet"
    if not iv.excludes_zero:
        if paper_diff is not None and not iv.low <= paper_diff <= iv.high:
            return f"no difference found, and the paper's {paper_diff:+.2f} dB lies outside the interval: contradicts its size"
        return "cannot resolve at this budget: the interval holds 0" + ("" if paper_diff is None else " and the paper's value")
    sign = "lower" if iv.mean < 0 else "higher"
    if paper_diff is None:
        return f"{sign} than full BSR (the paper has no such column)"
    if (iv.mean < 0) != (paper_diff < 0):
        return f"contradicts the paper: {sign} than full BSR, the paper {paper_diff:+.2f} dB"
    size = "and its size" if iv.low <= paper_diff <= iv.high else "not its size"
    return f"reproduces the paper's direction ({size}: the paper {paper_diff:+.2f} dB)"


def render(runs: dict, args, columns: dict, paper: dict, sets: tuple[str, ...]) -> None:
    keys = (*sets, "mean")
    recipe = recipe_of(args, "full", min(runs["full"]))
    optim, model = recipe.get("optim", {}), recipe.get("model", {})
    wall = sum(r["wall_s"] or 0 for col in runs.values() for r in col.values())
    lines = [
        "# The paper's ablation with seeds and paired intervals (issue 26)",
        "",
        f"Command: `{args.command}` (report written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
        f"Base recipe `{args.config}`: {model.get('preset', '?')} x{recipe.get('scale', '?')} from scratch, "
        f"{optim.get('max_steps', '?')} steps, lr {optim.get('learning_rate', '?')}, batch "
        f"{recipe.get('rfs', {}).get('batch_size', '?')} of {recipe.get('rfs', {}).get('patch_size', '?')} px LR "
        f"patches, EMA {optim.get('ema_decay', '?')}; each column changes one switch (bench/ablation.py COLUMNS). "
        f"Evaluation: train.py's at the end, MATLAB bicubic LR, Y-PSNR with the scale shaved.",
        f"CPU: {cpu_description()}. Load when the report was written: {machine_load()}. Training wall time of the "
        f"runs reported: {wall / 3600:.2f} h in all (training.json, without the evaluations).",
        "",
        "## Mean PSNR over seeds (dB; +/- the seed-to-seed standard deviation)",
        "",
        "| column | seeds | " + " | ".join(keys) + " | paper |",
        "|---|---:|" + "---:|" * len(keys) + "---:|",
    ]
    for c, rows in runs.items():
        cells = [f"{sum(r[k] for r in rows.values()) / len(rows):.3f} +/- {seed_spread([r[k] for r in rows.values()]):.3f}"
                 for k in keys]
        lines.append(f"| {columns[c][0]} | {len(rows)} | " + " | ".join(cells) + f" | {paper.get(c, '-')} |")
    lines += ["", "## Paired difference to full BSR (dB), mean [95 % paired t interval over seeds]", "",
              "| column | " + " | ".join(keys) + " | paper | what it says (on the mean of the three sets) |",
              "|---|" + "---:|" * len(keys) + "---:|---|"]
    for c in runs:
        if c == "full":
            continue
        paper_diff = paper[c] - paper["full"] if c in paper else None
        ivs = {k: paired(runs, c, k) for k in keys}
        cells = " | ".join("no paired seeds" if ivs[k] is None else ivs[k].format() for k in keys)
        said = "no seed of it has finished for full BSR too"
        if ivs["mean"] is not None:
            said = verdict(ivs["mean"], paper_diff)
        lines.append(f"| {columns[c][0]} | {cells} | {'-' if paper_diff is None else f'{paper_diff:+.2f}'} | {said} |")
    lines += resolution_lines(runs, keys) + per_seed_lines(runs, columns, keys) + RERUN
    write_result(args.results, lines)
    plot(runs, columns, keys, args.results.with_suffix(".png"))


RERUN = [
    "", "## Rerun it", "",
    "The grid above, from a clone with ../shared/data beside it (finished runs are kept in outputs/ablation and skipped,",
    "an interrupted one resumes): `python bench/ablation.py`. One column pair with more seeds: `python bench/ablation.py",
    "--columns full no-sc --seeds 0 1 2 3 4`. One run by hand: `accelerate launch train.py --config",
    "configs/ablation_tiny_x2.yaml --seed 0 --output.dir outputs/ablation/full/seed0` plus the column's flags",
    "(bench/ablation.py COLUMNS). At the paper's scale on a GPU (bsr-base, 48 px patches, batch 16; each run is one",
    "`accelerate launch`, on every GPU of the machine when `--threads 0` leaves the launcher its defaults):",
    "`python bench/ablation.py --preset bsr-base --steps 300000 --threads 0 --out outputs/ablation-base",
    "--results bench/results/ablation_base.md -- --optim.learning_rate 2e-4 --optim.ema_decay 0.999`.",
]
"""How to run the grid again, written under every report."""


def resolution_lines(runs: dict, keys: tuple[str, ...]) -> list[str]:
    """How large an effect this many seeds can resolve, from the spread of the paired differences measured."""
    n = len(set.intersection(*(set(rows) for rows in runs.values())))  # the seeds every column has
    ivs = [paired(runs, c, "mean") for c in runs if c != "full"]
    sds = sorted(iv.sd for iv in ivs if iv is not None and iv.n > 1)
    if not sds or n < 2:
        return []
    typical = sds[len(sds) // 2]
    lines = ["", "## What this budget can resolve", "",
             f"Full BSR's seed-to-seed standard deviation: " + ", ".join(
                 f"{k} {seed_spread([r[k] for r in runs['full'].values()]):.3f}" for k in keys) + " dB.",
             f"The per-seed differences to full BSR spread by {sds[0]:.3f}-{sds[-1]:.3f} dB (median {typical:.3f}, "
             f"mean of the three sets). With that spread an interval over {n} seeds is +/- "
             f"{resolvable_effect(typical, n):.3f} dB wide at 95 %;"]
    for m in (5, 10):
        lines[-1] += f" over {m} seeds it would be +/- {resolvable_effect(typical, m):.3f}"
        lines[-1] += ";" if m == 5 else "."
    return lines


def per_seed_lines(runs: dict, columns: dict, keys: tuple[str, ...]) -> list[str]:
    lines = ["", "## Every run", "", "| column | seed | " + " | ".join(keys) + " | training s |",
             "|---|---:|" + "---:|" * len(keys) + "---:|"]
    for c, rows in runs.items():
        for s, r in sorted(rows.items()):
            wall = f"{r['wall_s']:.0f}" if r["wall_s"] is not None else "-"
            lines.append(f"| {columns[c][0]} | {s} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + f" | {wall} |")
    return lines


def plot(runs: dict, columns: dict, keys: tuple[str, ...], path: Path) -> None:
    """One panel per set: each seed's PSNR per column, a line joining one seed's runs (the pairs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(runs)
    seeds = sorted({s for rows in runs.values() for s in rows})
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 4), sharex=True)
    for ax, k in zip(axes, keys):
        for s in seeds:
            xs = [i for i, c in enumerate(names) if s in runs[c]]
            ax.plot(xs, [runs[names[i]][s][k] for i in xs], marker="o", alpha=0.7, label=f"seed {s}")
        ax.set_title(f"{k} (Y-PSNR, dB)")
        ax.set_xticks(range(len(names)), [columns[c][0].split(" (")[0] for c in names], rotation=45, ha="right")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")
