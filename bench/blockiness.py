"""JPEG blockiness of every bundled model next to bicubic's, from the robustness suite's records.

    python bench/blockiness.py            # reads bsr_hub/checkpoints/*/robustness_results.json
                                          # writes bench/results/blockiness.md

The figures are made by the robustness suite (`python evaluate.py --suite robustness --model NAME ...
--update-card bsr_hub/checkpoints/NAME`, the command each record carries, repeated in the table's notes):
`bsr_hub.evaluation.metrics.blockiness` is the mean luma step across the LR's 8x8 JPEG block borders over that across its
other pixel borders, in the output (1.00 = no grid). This script only gathers them, per model, for the rows with
JPEG, so the bundled zoo can be compared and tracked in one place.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean

from common import write_result

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS = REPO / "bsr_hub" / "checkpoints"
RESULTS = Path(__file__).resolve().parent / "results" / "blockiness.md"


def _above(row: str) -> bool:
    """Whether a table row's model blockiness (last column) is above bicubic's (the one before it)."""
    cells = [c.strip() for c in row.strip("|").split("|")]
    return float(cells[-1]) > float(cells[-2])


def main() -> None:
    lines = ["# JPEG blockiness of the bundled models, against bicubic", "",
             "`python bench/blockiness.py`: gathered from each bundled checkpoint's robustness_results.json; the",
             "command that made each record is listed under the table. Blockiness: `bsr_hub.evaluation.metrics.blockiness`,",
             "mean over the benchmark's images (1.00 = no 8x8 grid; higher = a stronger grid). PSNR: Y channel, dB.",
             "",
             "| model | benchmark | LR made by | bicubic PSNR | model PSNR | bicubic blockiness | model blockiness |",
             "|---|---|---|---:|---:|---:|---:|"]
    commands, summary = [], []
    for folder in sorted(p for p in CHECKPOINTS.iterdir() if (p / "robustness_results.json").is_file()):
        record = json.loads((folder / "robustness_results.json").read_text())
        rows = [r for r in record["rows"] if r.get("jpeg_quality") is not None]
        if not rows or "blockiness" not in rows[0]:
            summary.append(f"| {folder.name} | - | - | (no blockiness in its record: rerun the suite) | | |")
            continue
        commands.append(f"- {folder.name}: `{record['command']}`")
        for bench in dict.fromkeys(r["benchmark"] for r in rows):
            for quality in sorted({r["jpeg_quality"] for r in rows}, reverse=True):
                chosen = [r for r in rows if r["benchmark"] == bench and r["jpeg_quality"] == quality]
                base = mean(r["bicubic_blockiness"] for r in chosen)
                model = mean(r["blockiness"] for r in chosen)
                summary.append(f"| {folder.name} | {bench} | {quality} | {len(chosen)} | {base:.2f} | {model:.2f} |")
        for r in rows:
            lines.append(f"| {folder.name} | {r['benchmark']} | {r['degradation']} | {r['bicubic_psnr']:.2f} | "
                         f"{r['psnr']:.2f} | {r['bicubic_blockiness']:.2f} | {r['blockiness']:.2f} |")
    rows_above = sum(1 for line in lines[8:] if _above(line))
    head = lines[:5] + [
        "", "In short: the mean over the suite's resizers, per JPEG quality. On "
        f"{rows_above} of the {len(lines) - 8} JPEG rows below, the model's output shows the grid more than "
        "bicubic's does.", "",
        "| model | benchmark | JPEG quality | resizers | bicubic blockiness | model blockiness |",
        "|---|---|---:|---:|---:|---:|", *summary, "", "Every JPEG row:", ""]
    write_result(RESULTS, head + lines[5:] + ["", "Records made by:", *commands])


if __name__ == "__main__":
    main()
