"""The robustness suite: how a model does on LR that MATLAB did not make, next to bicubic upscaling of the same LR.

The published protocol (`bsr_hub.evaluation`) makes LR with MATLAB's antialiased bicubic. Users' images come from
other resizers and JPEG. For every benchmark image this makes the LR with each resizer of `SUITE_RESIZERS`
(`bsr_hub.resizers`), alone and followed by JPEG at each of `SUITE_JPEG_QUALITIES`, then scores the model's output
and MATLAB-bicubic upscaling of that same LR against the HR (Y-PSNR, `scale` pixels shaved, as the protocol).
A model that scores below bicubic on a row makes such inputs worse than plain upscaling would.

    python evaluate.py --suite robustness --model bsr-lite-x2 --benchmarks Set5 Set14 \\
        --data-dir ../shared/data/benchmarks [--update-card bsr_hub/checkpoints/bsr-lite-x2]

The results go to `robustness_results.json` beside the checkpoint and into its card, under Limitations.
OpenCV is optional: without it the three opencv-* resizers are skipped, and the results say so.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from .degradations import imresize, modcrop
from .metrics import psnr_ssim
from .resizers import OPENCV_RESIZERS, downscale, jpeg, opencv_available

ROBUSTNESS_RESULTS_NAME = "robustness_results.json"
SUITE_RESIZERS = (
    "matlab-bicubic", "pil-bicubic", "pil-bilinear", "pil-box", "pil-lanczos",
    "opencv-cubic", "opencv-linear", "opencv-area", "torch-bicubic",
)
SUITE_JPEG_QUALITIES: tuple[int | None, ...] = (None, 90, 75)
DEFAULT_SUITE_BENCHMARKS = ("Set5", "Set14")


@dataclass(frozen=True)
class InputDegradation:
    """One way an LR input is made: a resizer, then optionally a JPEG round trip."""

    resizer: str
    jpeg_quality: int | None = None

    @property
    def name(self) -> str:
        return self.resizer if self.jpeg_quality is None else f"{self.resizer}+jpeg{self.jpeg_quality}"

    def make_lr(self, hr: np.ndarray, scale: int) -> np.ndarray:
        """(H / s, W / s, 3) uint8 from a mod-cropped (H, W, 3) uint8 HR."""
        lr = downscale(hr, scale, self.resizer)
        return lr if self.jpeg_quality is None else jpeg(lr, self.jpeg_quality)


def robustness_suite(with_opencv: bool | None = None) -> tuple[list[InputDegradation], dict[str, str]]:
    """(the degradations to score, {left-out resizer: why}). `with_opencv` None = when OpenCV is installed."""
    if with_opencv is None:
        with_opencv = opencv_available()
    skipped = {} if with_opencv else {r: "OpenCV is not installed (pip install opencv-python-headless)" for r in OPENCV_RESIZERS}
    suite = [InputDegradation(r, q) for r in SUITE_RESIZERS if r not in skipped for q in SUITE_JPEG_QUALITIES]
    return suite, skipped


def _rgb(hr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(hr[:, :, None], 3, axis=2)) if hr.ndim == 2 else hr


def score_inputs(
    model: torch.nn.Module, hr: np.ndarray, scale: int, suite: Sequence[InputDegradation], tile: Any = "auto"
) -> list[tuple[float, float]]:
    """(model PSNR, bicubic PSNR) per degradation of `suite` for one HR image ((H, W) grey or (H, W, 3) uint8)."""
    hr = modcrop(hr, scale)
    hr_t = torch.from_numpy(np.ascontiguousarray(hr))
    hr_t = hr_t[None, None] if hr_t.ndim == 2 else hr_t.permute(2, 0, 1)[None]  # (1, C, H, W) uint8
    rgb = _rgb(hr)  # resizers take 3 channels; a grey ground truth is still scored on its own channel
    out = []
    for degradation in suite:
        lr = degradation.make_lr(rgb, scale)  # (h, w, 3) uint8
        x = torch.from_numpy(lr).permute(2, 0, 1)[None].float().div_(255.0).to(model.device)  # (1, 3, h, w)
        with torch.inference_mode():
            sr = model.upscale(x, tile=tile)  # (1, 3, H, W) in [0, 1]
        bicubic = torch.from_numpy(imresize(lr, scale)).permute(2, 0, 1)[None]  # (1, 3, H, W) uint8, MATLAB
        ours, _ = psnr_ssim(sr.cpu(), hr_t, shave=scale)
        base, _ = psnr_ssim(bicubic, hr_t, shave=scale)
        out.append((float(ours[0]), float(base[0])))
    return out


@dataclass
class RobustnessRow:
    benchmark: str
    degradation: str
    resizer: str
    jpeg_quality: int | None
    num_images: int
    psnr: float
    bicubic_psnr: float

    @property
    def gain(self) -> float:
        return self.psnr - self.bicubic_psnr


def evaluate_robustness(
    model: torch.nn.Module, benchmarks: Sequence[Any], scale: int, suite: Sequence[InputDegradation],
    *, tile: Any = "auto", progress: bool = True,
) -> list[RobustnessRow]:
    """Mean PSNR of the model and of bicubic per (benchmark, degradation), over every image of each benchmark."""
    from tqdm.auto import tqdm

    from .benchmarks import read_hr

    rows = []
    for bench in benchmarks:
        scores = np.zeros((len(bench.images), len(suite), 2))
        for i, record in enumerate(tqdm(bench.images, desc=f"{bench.name} x{scale} robustness", disable=not progress)):
            scores[i] = score_inputs(model, read_hr(record), scale, suite, tile)
        for k, d in enumerate(suite):
            rows.append(RobustnessRow(
                bench.name, d.name, d.resizer, d.jpeg_quality, len(bench.images),
                float(scores[:, k, 0].mean()), float(scores[:, k, 1].mean()),
            ))
    return rows


def results_document(model_name: str, scale: int, rows: Sequence[RobustnessRow], skipped: dict[str, str],
                     command: str | None) -> dict[str, Any]:
    """What `robustness_results.json` holds."""
    return {
        "model": model_name, "scale": scale, "command": command,
        "rows": [asdict(r) for r in rows], "skipped_resizers": skipped,
    }


def markdown_table(document: dict[str, Any]) -> str:
    """Rows: degradations; per benchmark: bicubic, the model, and the difference (dB)."""
    rows = document["rows"]
    benches = list(dict.fromkeys(r["benchmark"] for r in rows))
    degradations = list(dict.fromkeys(r["degradation"] for r in rows))
    by_key = {(r["benchmark"], r["degradation"]): r for r in rows}
    head = "| LR made by | " + " | ".join(f"{b} bicubic | {b} model | {b} gain" for b in benches) + " |"
    lines = [head, "|---|" + "---|" * (3 * len(benches))]
    for d in degradations:
        cells = []
        for b in benches:
            r = by_key[(b, d)]
            gain = r["psnr"] - r["bicubic_psnr"]
            mark = " **(worse)**" if gain < 0 else ""
            cells += [f"{r['bicubic_psnr']:.2f}", f"{r['psnr']:.2f}", f"{gain:+.2f}{mark}"]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_suite(args: Any, prog: str = "python evaluate.py") -> int:
    """`evaluate.py --suite robustness`: score, print, and write the JSON / the card's Limitations table."""
    import json
    import shlex
    import sys
    from pathlib import Path

    from .benchmarks import EvaluationError, load_benchmark
    from .evaluation import load_model
    from .records import RecordError, check_card_target, update_card

    if args.self_ensemble or args.degradation != "BI" or args.dataset:
        print("error: --suite robustness makes its own LR (no --degradation, --self-ensemble or --dataset)",
              file=sys.stderr)
        return 2
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        model = load_model(args.model, args.scale, device)
        if args.update_card:
            check_card_target(args.update_card, args.model, model)
        scale = args.scale or model.scale
        names = args.benchmarks or list(DEFAULT_SUITE_BENCHMARKS)
        benchmarks = [load_benchmark(n, args.data_dir) for n in names]
        suite, skipped = robustness_suite()
        started = time.perf_counter()
        rows = evaluate_robustness(model, benchmarks, scale, suite, tile=args.tile, progress=not args.quiet)
    except (EvaluationError, RecordError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    words = ["--suite", "robustness", "--model", args.model, "--benchmarks", *names, "--data-dir", str(args.data_dir),
             "--scale", str(scale)]
    command = " ".join([prog, *map(shlex.quote, words)])
    document = results_document(args.model, scale, rows, skipped, command)
    document["wall_time_s"] = round(time.perf_counter() - started, 1)
    print(markdown_table(document))
    for resizer, why in skipped.items():
        print(f"skipped {resizer}: {why}", file=sys.stderr)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(document, indent=2) + "\n")
    if args.update_card:
        try:
            path = update_card(args.update_card, [], robustness=document)
            print(f"updated {path}", file=sys.stderr)
        except (RecordError, OSError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    worse = [r for r in rows if r.gain < 0]
    if worse:
        print(f"note: below bicubic on {len(worse)} of {len(rows)} rows (see the table)", file=sys.stderr)
    return 0
