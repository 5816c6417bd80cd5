"""`bsr-hub eval --leaderboard DIR`: several models (any `--model` value: BSR, bicubic, ONNX, OpenCV) scored in one
run under the same protocol, each timed on the same images, written as one Markdown table (leaderboard.md), one plot
of PSNR against seconds per image (leaderboard.png) and the full results (leaderboard.json).

Time is what `score_image` measures around `model.upscale` on each LR image (the runtime and the library's border and
tiling around it, not the degradation or the metrics), after one untimed call that builds what a model builds once
(a session, a graph); its mean over every scored image is the model's seconds per image.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core import require, write_atomically, write_text_atomically
from ..data import Benchmark, EvaluationError
from ..inference import Upscaler
from .loading import ModelSpec, load_model, model_kind, parameter_count
from .protocol import evaluate_benchmarks

WARM_UP_SIZE = 256
"""Side of the untimed input each model runs on first: as large as Set5's largest x2 LR, so that whatever the
library builds for large inputs on the CPU (`backend="auto"`: an ONNX Runtime session from 256x256 pixels) is built
before the clock starts."""


@dataclass(frozen=True)
class LeaderboardEntry:
    """One model's row: what it is and how it scored. `results` are `evaluate_benchmarks`' entries."""

    model: str
    kind: str
    device: str
    scale: int
    parameters: int | None
    seconds_per_image: float
    """Wall-clock time in `upscale`: what a user waits, on a machine as loaded as this one was."""
    cpu_seconds_per_image: float
    """CPU time of the process in `upscale` (all its threads, spin-waits included): what other processes on the
    machine change least."""
    results: list[dict[str, Any]]

    @property
    def mean_psnr(self) -> float:
        """The mean of the benchmarks' PSNRs (each set weighs the same): the plot's y."""
        return float(np.mean([r["psnr"] for r in self.results]))


def _images_scored(results: Sequence[dict[str, Any]]) -> int:
    return sum(r["num_images"] + len(r.get("identical", [])) for r in results)


def score_model(name: str, model: Upscaler, benchmarks: Sequence[Benchmark], scale: int | None, *,
                degradation: str = "BI", self_ensemble: bool = False, tile: int | str | None = "auto",
                progress: bool = False) -> LeaderboardEntry:
    """Warm up one loaded `--model` value, score and time it on every benchmark."""
    s = scale or model.scale
    with torch.no_grad():
        model.upscale(torch.rand(1, 3, WARM_UP_SIZE, WARM_UP_SIZE, device=model.device), tile=tile,
                      self_ensemble=self_ensemble)
    results = evaluate_benchmarks(model, benchmarks, s, degradation, self_ensemble=self_ensemble, tile=tile,
                                  progress=progress)
    n = max(_images_scored(results), 1)
    seconds, cpu = (sum(r["timing_s"][key] for r in results) / n for key in ("model", "model_cpu"))
    return LeaderboardEntry(name, model_kind(model), str(model.device), s, parameter_count(model), seconds, cpu,
                            results)


def run_leaderboard(names: Sequence[str], benchmarks: Sequence[Benchmark], scale: int | None, *,
                    device: str | torch.device = "cpu", **options: Any) -> list[LeaderboardEntry]:
    """`score_model` for each name, reported in the given order.

    Every model is loaded before the first is scored, so a name that cannot load (a typo, a missing --scale, an
    OpenCV without dnn_superres) stops the run in seconds, not after the models before it were scored. dnn_superres
    models load last: creating OpenCV's DnnSuperResImpl replaces the DepthToSpace layer of every OpenCV net read after
    it (inference/runtimes.py)."""
    specs = [ModelSpec.parse(n) for n in names]
    missing = [s.text for s in specs if s.kind not in ("bsr", "bicubic") and not Path(s.target).is_file()]
    if missing:
        raise EvaluationError(f"--model {' '.join(missing)}: no such file")
    order = sorted(range(len(names)), key=lambda i: specs[i].kind == "dnn_superres")
    models = {i: load_model(names[i], scale, device) for i in order}
    entries = {i: score_model(names[i], models[i], benchmarks, scale, **options) for i in order}
    return [entries[i] for i in range(len(names))]


def timing_note(threads: int, load: tuple[float, float], started: float) -> str:
    """How the seconds were measured, with the machine's load average at the start and the end of the run."""
    cores = os.cpu_count() or 1
    return (
        f"Seconds per image: the mean over every scored image of the time spent in the model's `upscale` on its LR "
        f"image (runtime, mirrored border, tiling), after one untimed {WARM_UP_SIZE}x{WARM_UP_SIZE} call: wall-clock "
        f"(`s / image`, the plot's) and the process's CPU time (`CPU s / image`, every thread's). Measured one model "
        f"after another in this run with {threads} thread(s) for PyTorch, ONNX Runtime and OpenCV alike, on a "
        f"{cores}-core machine whose 1-minute load average was {load[0]:.2f} at the start and {load[1]:.2f} at the "
        f"end ({time.time() - started:.0f} s in all). Other processes on the machine stretch the wall-clock times, "
        "unevenly as their load changes; compare times within one table, not across machines or runs."
    )


def _fmt_parameters(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _fmt(value: float, digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def leaderboard_markdown(entries: Sequence[LeaderboardEntry], note: str, command: str = "") -> str:
    """One row per model, best mean PSNR first; PSNR and SSIM of each benchmark, parameters and seconds per image."""
    sets = list(dict.fromkeys(r["benchmark"] for e in entries for r in e.results))
    first = entries[0].results[0] if entries and entries[0].results else {}
    degradation = first.get("degradation", "BI")
    protocol = f"{degradation}{' (MATLAB-exact bicubic)' if degradation == 'BI' else ''}"
    protocol += ", self-ensemble" if first.get("self_ensemble") else ""
    lines = [
        "# Leaderboard",
        "",
        (f"Y-channel PSNR (dB) and SSIM with the scale shaved, LR made by {protocol}: the protocol of `bsr-hub eval` "
         "for every model, best mean PSNR first. Parameters: a PyTorch model's learned parameters; an ONNX file's sum "
         "of initializer sizes (its weights and any constant tensors); `-` where the file does not say."),
        "",
        note,
        "",
    ]
    if command:
        lines += [f"Command: `{command}`", ""]
    head = "| model | kind | device | scale | parameters |" + "".join(f" {s} PSNR | {s} SSIM |" for s in sets)
    head += " s / image | CPU s / image |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for e in sorted(entries, key=lambda e: -e.mean_psnr if not math.isnan(e.mean_psnr) else math.inf):
        by_set = {r["benchmark"]: r for r in e.results}
        cells = "".join(f" {_fmt(by_set[s]['psnr'], 2)} | {_fmt(by_set[s]['ssim'], 4)} |" if s in by_set else " - | - |"
                        for s in sets)
        lines.append(f"| {e.model} | {e.kind} | {e.device} | x{e.scale} | {_fmt_parameters(e.parameters)} |{cells} "
                     f"{e.seconds_per_image:.3g} | {e.cpu_seconds_per_image:.3g} |")
    return "\n".join(lines) + "\n"


def _label(entry: LeaderboardEntry) -> str:
    """A point's label: the model's name (a file's name without its folder) and, where the name does not say, how
    it ran."""
    prefix, colon, rest = entry.model.rpartition(":")
    name = f"{prefix}{colon}{Path(rest).name}" if "/" in rest and Path(rest).suffix else entry.model
    return name if entry.kind in (name, "bicubic") else f"{name} ({entry.kind})"


def plot_leaderboard(entries: Sequence[LeaderboardEntry], path: str | os.PathLike) -> Path:
    """PSNR (mean over the benchmarks) against seconds per image, log-scale x, one labelled point per model: wall-clock
    on the left, the process's CPU time on the right (what other processes on the machine change least)."""
    require("matplotlib", extra="train", what="the leaderboard's plot").use("Agg")
    import matplotlib.pyplot as plt

    sets = ", ".join(dict.fromkeys(r["benchmark"] for e in entries for r in e.results))
    scales = sorted({e.scale for e in entries})
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    try:
        for ax, key, what in ((axes[0], "seconds_per_image", "wall-clock"),
                              (axes[1], "cpu_seconds_per_image", "CPU time, all threads")):
            _plot_panel(ax, entries, key)
            ax.set_xscale("log")
            ax.set_xlabel(f"seconds per image, {what} (log scale)")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].set_ylabel(f"Y-PSNR (dB), mean over {sets}")
        fig.suptitle(f"PSNR against time per image, x{'/x'.join(map(str, scales))}")
        fig.tight_layout()
        return write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)


def _plot_panel(ax: Any, entries: Sequence[LeaderboardEntry], key: str) -> None:
    """One point per model, its colour the same in both panels, its label joined to it by a line: models of equal
    PSNR sit side by side, so their labels alternate above and below."""
    colours = {id(e): f"C{i % 10}" for i, e in enumerate(entries)}
    offsets = [(10, 16), (10, -22), (10, 34), (10, -40)]
    for i, e in enumerate(sorted(entries, key=lambda e: getattr(e, key))):
        x = max(getattr(e, key), 1e-6)  # log scale: a zero time would vanish
        ax.scatter([x], [e.mean_psnr], s=30, color=colours[id(e)], zorder=3)
        ax.annotate(_label(e), (x, e.mean_psnr), textcoords="offset points", xytext=offsets[i % len(offsets)],
                    fontsize=8, arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "grey"})
    ax.margins(x=0.3, y=0.2)


def write_leaderboard(entries: Sequence[LeaderboardEntry], out_dir: str | os.PathLike, note: str,
                      command: str = "") -> list[Path]:
    """leaderboard.md, leaderboard.png and leaderboard.json in `out_dir` (made if missing); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = write_text_atomically(out / "leaderboard.md", leaderboard_markdown(entries, note, command))
    plot = plot_leaderboard(entries, out / "leaderboard.png")
    document = {"command": command, "timing": note, "models": [asdict(e) for e in entries]}
    data = write_text_atomically(out / "leaderboard.json", json.dumps(document, indent=2) + "\n")
    return [Path(table), plot, Path(data)]
