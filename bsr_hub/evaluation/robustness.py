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

import zlib

import numpy as np
import torch
import torch.nn.functional as F

from ..data import imresize, modcrop
from .metrics import blockiness, psnr_ssim
from ..data import OPENCV_RESIZERS, add_noise, downscale, jpeg, opencv_available

SUITE_RESIZERS = (
    "matlab-bicubic", "pil-bicubic", "pil-bilinear", "pil-box", "pil-lanczos",
    "opencv-cubic", "opencv-linear", "opencv-area", "torch-bicubic",
)
SUITE_JPEG_QUALITIES: tuple[int, ...] = (90, 75)
SUITE_NOISE_SIGMA = 3.0
"""Grey levels of Gaussian noise after the resizer (the "noise" rows): a dim indoor phone photo's noise."""
CAMERA_BLUR_SIGMA = (0.4, 1.2)
"""Range of the Gaussian blur (HR pixels, drawn uniformly per image) before the resizer in the "camera" rows: a
phone's lens and demosaicing, mildly; the resizer and JPEG at CAMERA_JPEG_QUALITY then follow, as a photo shrunk
for the web. [Ours: a figure to improve later, not a bar.]"""
CAMERA_JPEG_QUALITY = 80
FAMILIES = ("resize", "jpeg", "noise", "camera")
"""The row families, in table order: a resizer alone; then JPEG; then noise; blur, resizer and JPEG."""
DEFAULT_SUITE_BENCHMARKS = ("Set5", "Set14")


@dataclass(frozen=True)
class InputDegradation:
    """One way an LR input is made: optionally a Gaussian blur of the HR (sigma drawn from `blur_sigma`), a
    resizer, optionally Gaussian noise of `noise_sigma` grey levels, optionally a JPEG round trip."""

    resizer: str
    jpeg_quality: int | None = None
    noise_sigma: float | None = None
    blur_sigma: tuple[float, float] | None = None

    @property
    def family(self) -> str:
        if self.blur_sigma is not None:
            return "camera"
        return "noise" if self.noise_sigma is not None else ("jpeg" if self.jpeg_quality is not None else "resize")

    @property
    def name(self) -> str:
        parts = ["blur"] if self.blur_sigma is not None else []
        parts.append(self.resizer)
        if self.noise_sigma is not None:
            parts.append(f"noise{self.noise_sigma:g}")
        if self.jpeg_quality is not None:
            parts.append(f"jpeg{self.jpeg_quality}")
        return "+".join(parts)

    def make_lr(self, hr: np.ndarray, scale: int, rng: np.random.Generator) -> np.ndarray:
        """(H / s, W / s, 3) uint8 from a mod-cropped (H, W, 3) uint8 HR; `rng` draws the blur and the noise."""
        if self.blur_sigma is not None:
            hr = gaussian_blur(hr, float(rng.uniform(*self.blur_sigma)))
        lr = downscale(hr, scale, self.resizer)
        if self.noise_sigma is not None:
            lr = add_noise(lr, self.noise_sigma, rng)
        return lr if self.jpeg_quality is None else jpeg(lr, self.jpeg_quality)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """(H, W, 3) uint8 convolved with a Gaussian of `sigma` pixels (truncated at 3 sigma, mirrored borders)."""
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float64) / sigma) ** 2)
    taps /= taps.sum()
    x = torch.tensor(image, dtype=torch.float64).permute(2, 0, 1)[:, None]  # (3, 1, H, W), a copy
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), taps.view(1, 1, 1, -1))  # along W
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), taps.view(1, 1, -1, 1))  # along H
    return torch.floor(x[:, 0] + 0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()  # (H, W, 3)


def robustness_suite(
    with_opencv: bool | None = None, families: Sequence[str] = FAMILIES
) -> tuple[list[InputDegradation], dict[str, str]]:
    """(the degradations to score, {left-out resizer: why}). `with_opencv` None = when OpenCV is installed.
    Rows come per resizer, in the order of FAMILIES (those of `families`)."""
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown or not families:
        raise ValueError(f"unknown robustness row families {unknown}; choose from {', '.join(FAMILIES)}")
    if with_opencv is None:
        with_opencv = opencv_available()
    skipped = {} if with_opencv else {r: "OpenCV is not installed (pip install opencv-python-headless)" for r in OPENCV_RESIZERS}
    per_resizer = {
        "resize": lambda r: [InputDegradation(r)],
        "jpeg": lambda r: [InputDegradation(r, q) for q in SUITE_JPEG_QUALITIES],
        "noise": lambda r: [InputDegradation(r, noise_sigma=SUITE_NOISE_SIGMA)],
        "camera": lambda r: [InputDegradation(r, CAMERA_JPEG_QUALITY, blur_sigma=CAMERA_BLUR_SIGMA)],
    }
    suite = [d for r in SUITE_RESIZERS if r not in skipped for f in FAMILIES if f in families for d in per_resizer[f](r)]
    return suite, skipped


def family_descriptions(families: Sequence[str]) -> dict[str, str]:
    """What each row family of a results document is, in words: the document carries them, so the card says them."""
    words = {
        "resize": "the resizer alone",
        "jpeg": "the resizer, then JPEG at quality " + " and ".join(map(str, SUITE_JPEG_QUALITIES)),
        "noise": f"the resizer, then Gaussian noise of {SUITE_NOISE_SIGMA:g} grey levels (rows +noise{SUITE_NOISE_SIGMA:g})",
        "camera": (f"camera-like (rows blur+...): a Gaussian blur of the HR with sigma drawn uniformly in "
                   f"[{CAMERA_BLUR_SIGMA[0]:g}, {CAMERA_BLUR_SIGMA[1]:g}] HR pixels per image, the resizer, then JPEG at "
                   f"quality {CAMERA_JPEG_QUALITY}"),
    }
    return {f: words[f] for f in FAMILIES if f in families}


def _rgb(hr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(hr[:, :, None], 3, axis=2)) if hr.ndim == 2 else hr


class InputScore(NamedTuple):
    """One image, one degradation: the model's output and bicubic upscaling of the same LR."""

    psnr: float
    bicubic_psnr: float
    blockiness: float
    bicubic_blockiness: float


def score_inputs(
    model: torch.nn.Module, hr: np.ndarray, scale: int, suite: Sequence[InputDegradation], tile: Any = "auto",
    seed: int = 0,
) -> list[InputScore]:
    """The scores per degradation of `suite` for one HR image ((H, W) grey or (H, W, 3) uint8). The random draws
    (blur sigma, noise) of a row depend on `seed` (the image's) and the row's name only, so a row scores the same
    whichever other rows run beside it."""
    hr = modcrop(hr, scale)
    hr_t = torch.from_numpy(np.ascontiguousarray(hr))
    hr_t = hr_t[None, None] if hr_t.ndim == 2 else hr_t.permute(2, 0, 1)[None]  # (1, C, H, W) uint8
    rgb = _rgb(hr)  # resizers take 3 channels; a grey ground truth is still scored on its own channel
    out = []
    for degradation in suite:
        rng = np.random.default_rng([seed, zlib.crc32(degradation.name.encode())])
        lr = degradation.make_lr(rgb, scale, rng)  # (h, w, 3) uint8
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
    family: str = "resize"  # FAMILIES

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
                scores.append(score_inputs(model, hr, scale, suite, tile, seed=zlib.crc32(record.name.encode())))
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
                family=d.family,
            ))
    return rows


def results_document(model_name: str, scale: int, rows: Sequence[RobustnessRow], skipped: dict[str, str],
                     command: str | None, skipped_images: Sequence[dict[str, str]] = ()) -> dict[str, Any]:
    """What `robustness_results.json` holds; `families` describes, in words, each row family it has."""
    document = {
        "model": model_name, "scale": scale, "command": command,
        "families": family_descriptions({r.family for r in rows}),
        "rows": [asdict(r) for r in rows], "skipped_resizers": skipped,
    }
    if skipped_images:
        document["skipped_images"] = list(skipped_images)
    return document


def row_family(row: dict[str, Any]) -> str:
    """A stored row's family; rows written before families existed are resizer-alone or JPEG rows."""
    return row.get("family") or ("jpeg" if row.get("jpeg_quality") else "resize")


MERGE_TOLERANCE_DB = 0.01
"""How far a row re-measured for a merge may be from its stored value (same weights: summation order alone)."""


def merge_documents(stored: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`stored` (a checkpoint's robustness_results.json) with the rows of `new` (a run of some families) added
    or replaced, for adding a row family without re-running the rest.

    The stored rows are kept only if they are this model's: every row both documents have (a partial run
    re-measures at least one, `eval_robustness` adds the MATLAB-bicubic row) must agree within
    MERGE_TOLERANCE_DB. Raises ValueError otherwise, or when the scale differs.
    """
    if int(stored["scale"]) != int(new["scale"]):
        raise ValueError(f"the stored results are x{stored['scale']}, this run is x{new['scale']}")
    old = {(r["benchmark"], r["degradation"]): r for r in stored["rows"]}
    shared = [(key, r) for r in new["rows"] if (key := (r["benchmark"], r["degradation"])) in old]
    if not shared:
        raise ValueError("no row of this run is in the stored results, so they cannot be checked against these "
                         "weights: run the whole suite (without --families)")
    for key, r in shared:
        if abs(r["psnr"] - old[key]["psnr"]) > MERGE_TOLERANCE_DB:
            raise ValueError(f"{key[0]} {key[1]}: {r['psnr']:.3f} dB now, {old[key]['psnr']:.3f} dB stored: the "
                             "stored results come from other weights; run the whole suite (without --families)")
    merged = dict(stored)
    old.update({(r["benchmark"], r["degradation"]): r for r in new["rows"]})
    order = {d.name: k for k, d in enumerate(robustness_suite(with_opencv=True)[0])}
    benches = list(dict.fromkeys([r["benchmark"] for r in stored["rows"]] + [r["benchmark"] for r in new["rows"]]))
    merged["rows"] = sorted(old.values(), key=lambda r: (benches.index(r["benchmark"]), order.get(r["degradation"], len(order))))
    families = {row_family(r) for r in merged["rows"]}
    merged["families"] = family_descriptions(families)
    merged["commands"] = [*stored.get("commands", [stored.get("command")]), new["command"]]
    merged["command"] = new["command"]
    walls = [stored.get("wall_time_s"), new.get("wall_time_s")]
    merged["wall_time_s"] = sum(walls) if None not in walls else None
    return merged
