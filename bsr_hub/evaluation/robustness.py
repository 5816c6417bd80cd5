"""The robustness suite: how a model does on LR that MATLAB did not make, next to bicubic upscaling of the same LR.

The published protocol (`bsr_hub.evaluation.protocol`) makes LR with MATLAB's antialiased bicubic. Users' images come from
other resizers and JPEG. For every benchmark image this makes the LR with each resizer of `SUITE_RESIZERS`
(`bsr_hub.data.resizers`), alone and followed by JPEG at each of `SUITE_JPEG_QUALITIES`, then scores the model's output
and MATLAB-bicubic upscaling of that same LR against the HR (Y-PSNR, `scale` pixels shaved, as the protocol).
A model that scores below bicubic on a row makes such inputs worse than plain upscaling would. Each output's
`metrics.blockiness` (the JPEG 8x8 grid of the LR as it shows in the output; 1.0 = none) is kept next to its
PSNR: above bicubic's on a JPEG row, the model sharpens the grid; on the other rows it is a control near 1.

    python evaluate.py --suite robustness --model bsr-lite-x2 --benchmarks Set5 Set14 \\
        --data-dir ../shared/data/benchmarks [--update-card bsr_hub/checkpoints/bsr-lite-x2]

The results go to `robustness_results.json` beside the checkpoint and into its card, under Limitations
(`models.card.update_card`); the command line is `commands/eval.py`'s.
OpenCV is optional: without it the three opencv-* resizers are skipped, and the results say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from ..data import imresize, modcrop
from .metrics import blockiness, psnr_ssim
from ..data import OPENCV_RESIZERS, downscale, jpeg, opencv_available

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


class InputScore(NamedTuple):
    """One image, one degradation: the model's output and bicubic upscaling of the same LR."""

    psnr: float
    bicubic_psnr: float
    blockiness: float
    bicubic_blockiness: float


def score_inputs(
    model: torch.nn.Module, hr: np.ndarray, scale: int, suite: Sequence[InputDegradation], tile: Any = "auto"
) -> list[InputScore]:
    """The scores per degradation of `suite` for one HR image ((H, W) grey or (H, W, 3) uint8)."""
    hr = modcrop(hr, scale)
    hr_t = torch.from_numpy(np.ascontiguousarray(hr))
    hr_t = hr_t[None, None] if hr_t.ndim == 2 else hr_t.permute(2, 0, 1)[None]  # (1, C, H, W) uint8
    rgb = _rgb(hr)  # resizers take 3 channels; a grey ground truth is still scored on its own channel
    out = []
    for degradation in suite:
        lr = degradation.make_lr(rgb, scale)  # (h, w, 3) uint8
        x = torch.from_numpy(lr).permute(2, 0, 1)[None].float().div_(255.0).to(model.device)  # (1, 3, h, w)
        with torch.inference_mode():
            sr = model.upscale(x, tile=tile).cpu()  # (1, 3, H, W) in [0, 1]
        bicubic = torch.from_numpy(imresize(lr, scale)).permute(2, 0, 1)[None]  # (1, 3, H, W) uint8, MATLAB
        ours, _ = psnr_ssim(sr, hr_t, shave=scale)
        base, _ = psnr_ssim(bicubic, hr_t, shave=scale)
        out.append(InputScore(
            float(ours[0]), float(base[0]),
            float(blockiness(sr, scale, shave=scale)[0]), float(blockiness(bicubic, scale, shave=scale)[0]),
        ))
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
    blockiness: float  # metrics.blockiness of the model's output, mean over images (1.0 = no JPEG grid)
    bicubic_blockiness: float

    @property
    def gain(self) -> float:
        return self.psnr - self.bicubic_psnr


def evaluate_robustness(
    model: torch.nn.Module, benchmarks: Sequence[Any], scale: int, suite: Sequence[InputDegradation],
    *, tile: Any = "auto", progress: bool = True, skipped_images: list[dict[str, str]] | None = None,
) -> list[RobustnessRow]:
    """Mean PSNR and blockiness of the model and of bicubic per (benchmark, degradation), over every image of
    each benchmark that can be scored. An image that cannot (unreadable, or too small to score at this scale) is
    left out of the means and appended to `skipped_images` ({"benchmark", "name", "error"}), as the published
    protocol's evaluator names it and goes on; a benchmark with no image left is an EvaluationError."""
    from tqdm.auto import tqdm

    from ..data import EvaluationError, read_hr

    rows = []
    for bench in benchmarks:
        scores = []
        for record in tqdm(bench.images, desc=f"{bench.name} x{scale} robustness", disable=not progress):
            try:
                hr = read_hr(record)
                if min(hr.shape[:2]) < 2 * scale + 11:  # SSIM's 11x11 window after the shave, as evaluation
                    raise EvaluationError(f"{hr.shape[1]}x{hr.shape[0]} is too small to score at x{scale}")
                scores.append(score_inputs(model, hr, scale, suite, tile))
            except (EvaluationError, ValueError, OSError) as err:
                if skipped_images is not None:
                    skipped_images.append({"benchmark": bench.name, "name": record.name, "error": str(err)})
        if not scores:
            raise EvaluationError(f"{bench.name}: no image could be scored")
        table = np.array(scores)  # (images, degradations, InputScore fields)
        for k, d in enumerate(suite):
            rows.append(RobustnessRow(
                bench.name, d.name, d.resizer, d.jpeg_quality, len(scores),
                *(float(mean) for mean in table[:, k].mean(axis=0)),  # in InputScore's order
            ))
    return rows


def results_document(model_name: str, scale: int, rows: Sequence[RobustnessRow], skipped: dict[str, str],
                     command: str | None, skipped_images: Sequence[dict[str, str]] = ()) -> dict[str, Any]:
    """What `robustness_results.json` holds."""
    document = {
        "model": model_name, "scale": scale, "command": command,
        "rows": [asdict(r) for r in rows], "skipped_resizers": skipped,
    }
    if skipped_images:
        document["skipped_images"] = list(skipped_images)
    return document
