"""Scoring under the published protocol: degrade each HR image, super-resolve it, score it, average.

The protocol (METHOD.md section 7) lives in `metrics` and `degradations`; this module is the loop around them:

- each HR is mod-cropped, degraded (BI or BD) to uint8 LR, grey LR replicated to 3 channels for the network,
  and super-resolved through `model.upscale` (so tiling and self-ensemble are the library's own); any model
  of the `inference.Upscaler` contract runs, `BSRModel`, the bicubic baseline (`bicubic.py`) and the ONNX
  Runtime and OpenCV models (`loading.py`) alike;
- per-image PSNR / SSIM, then the mean; unreadable images are reported by name and make the run fail;
- under `accelerate launch` the images are split across processes and gathered with `gather_for_metrics`.

Around it: the benchmarks are read by `benchmarks.py`, results go into a checkpoint's card through `models/card.py`,
and the command line (`bsr-hub eval`, `python evaluate.py`) is `commands/eval.py`'s.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..core import launched_world_size, require, write_atomically
from ..data import (
    DEFAULT_BENCHMARKS,
    DEGRADATIONS,
    Benchmark,
    EvaluationError,
    ImageRecord,
    degrade,
    load_benchmark,
    modcrop,
    read_hr,
)
from ..inference import Upscaler
from ..inference.autotune import exact_only
from .bicubic import BicubicModel
from .loading import BICUBIC, load_model
from .metrics import psnr_ssim, quantize

__all__ = [  # the benchmark side is re-exported: scoring callers (robustness, bench/) import it from here
    "BICUBIC", "DEFAULT_BENCHMARKS", "Benchmark", "BenchmarkResult", "BicubicModel", "EvaluationError",
    "ImageRecord", "evaluate_benchmark", "evaluate_benchmarks", "launch_accelerator", "load_benchmark", "load_model",
    "markdown_table", "read_hr", "score_image",
]


def resolve_device(device: str = "auto") -> str:
    """"auto" -> CUDA when there is one, else the CPU; any other name as given."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def launch_accelerator(device: str = "auto") -> tuple[Any, str | torch.device]:
    """(Accelerator or None, device): an Accelerator when launched as several processes (`accelerate launch`),
    whose device wins; otherwise `device` (`resolve_device`)."""
    if launched_world_size() <= 1:  # torchrun's WORLD_SIZE or an MPI launcher's
        return None, resolve_device(device)
    Accelerator = require("accelerate", extra="train", what="evaluation over several processes").Accelerator
    # cpu=True is what makes a CPU-only multi-process launch actually synchronise (ENVIRONMENT.md).
    accelerator = Accelerator(cpu=not torch.cuda.is_available() or device == "cpu")
    placed: str | torch.device = accelerator.device
    if placed.type == "cpu":
        placed = "cpu"  # Accelerate says cpu:0 under debug_launcher, which safetensors' loader rejects
    return accelerator, placed


@dataclass
class BenchmarkResult:
    benchmark: str
    scale: int
    degradation: str
    self_ensemble: bool
    num_images: int
    psnr: float
    ssim: float
    per_image: list[dict[str, Any]]
    failed: list[dict[str, str]] = field(default_factory=list)
    timing_s: dict[str, float] = field(default_factory=dict)
    identical: list[str] = field(default_factory=list)
    """Images reconstructed exactly (MSE 0, PSNR infinite): listed, and left out of both means, since one of them
    would make the mean PSNR infinite and hide every other image's score [ours; the image is flagged, not capped]."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("failed", "identical"):
            if not out[key]:
                del out[key]
        return out


def _lr_tensor(lr: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (h, w) or (h, w, 3) -> (1, 3, h, w) float in [0, 1]; grey replicated to 3 channels (METHOD.md 1)."""
    t = torch.from_numpy(np.ascontiguousarray(lr)).to(device)
    if t.ndim == 2:
        t = t[:, :, None].expand(-1, -1, 3)
    return t.permute(2, 0, 1)[None].float() / 255.0


def score_image(
    model: Upscaler,
    hr: np.ndarray,
    scale: int,
    degradation: str = "BI",
    *,
    self_ensemble: bool = False,
    tile: int | str | None = "auto",
) -> tuple[float, float, torch.Tensor, dict[str, float]]:
    """Degrade one HR image, super-resolve it, score it.

    Returns:
        (psnr, ssim, sr, seconds) with sr the (1, 3, H, W) float output in [0, 1] and seconds the time spent in
        degradation, model and metrics, and the CPU time the process spent in the model ("model_cpu": every
        thread's, so it is what other processes on the machine do not change).
    """
    t0 = time.perf_counter()
    hr = modcrop(hr, scale)
    lr = degrade(hr, scale, degradation)
    x = _lr_tensor(lr, model.device)  # (1, 3, h, w)
    t1, c1 = time.perf_counter(), time.process_time()
    # The library's default fast path (tile="auto", backend="auto"): within one 8-bit level of one pass, and the
    # scores to 0.001 dB (bench/results/evaluate.md); --tile 0 forces one pass.
    with exact_only():  # a score must not depend on which backend won a timing here (no bf16 autocast)
        sr = model.upscale(x, tile=tile, self_ensemble=self_ensemble)  # (1, 3, h*s, w*s)
    if sr.device.type == "cuda":
        torch.cuda.synchronize(sr.device)
    t2, c2 = time.perf_counter(), time.process_time()
    if sr.shape[-2:] != hr.shape[:2]:
        raise EvaluationError(f"the model returned {tuple(sr.shape[-2:])} for a {hr.shape[:2]} ground truth")
    hr_t = torch.from_numpy(np.ascontiguousarray(hr)).to(sr.device)
    hr_t = hr_t[None, None] if hr_t.ndim == 2 else hr_t.permute(2, 0, 1)[None]  # (1, C, H, W) uint8
    p, s = psnr_ssim(sr, hr_t, shave=scale)
    p, s = float(p[0]), float(s[0])
    t3 = time.perf_counter()
    return p, s, sr, {"degrade": t1 - t0, "model": t2 - t1, "model_cpu": c2 - c1, "metrics": t3 - t2}


def _save_sr(sr: torch.Tensor, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    arr = quantize(sr[0]).to(torch.uint8).permute(1, 2, 0).cpu().numpy()  # (H, W, 3)
    # Written beside and renamed: a link planted under the name is replaced, never written through.
    write_atomically(target, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"))


def evaluate_benchmark(
    model: Upscaler,
    benchmark: Benchmark,
    scale: int,
    degradation: str = "BI",
    *,
    self_ensemble: bool = False,
    tile: int | str | None = "auto",
    save_dir: str | os.PathLike | None = None,
    accelerator: Any = None,
    progress: bool = True,
) -> BenchmarkResult:
    """Score every image of a benchmark; per-image values and their mean.

    With an `accelerator` of several processes, each process scores its share of the images (a DataLoader
    over image indices, prepared by Accelerate) and the per-image values are gathered with
    `gather_for_metrics`, which drops the duplicates Accelerate pads the last batch with; every process
    returns the same result. Unreadable images are listed in `failed` (the caller decides to fail).
    """
    from tqdm.auto import tqdm

    n = _check_request(model, benchmark, scale, degradation)
    distributed = accelerator is not None and accelerator.num_processes > 1
    is_main = accelerator is None or accelerator.is_local_main_process
    timing = {"read": 0.0, "degrade": 0.0, "model": 0.0, "model_cpu": 0.0, "metrics": 0.0, "save": 0.0}
    failed: list[dict[str, str]] = []
    rows: list[tuple[int, float, float]] = []  # (index, psnr, ssim), nan for a failed image

    def run_one(i: int) -> tuple[float, float]:
        record = benchmark.images[i]
        t0 = time.perf_counter()
        try:
            hr = read_hr(record)
            if hr.shape[0] < 2 * scale + 11 or hr.shape[1] < 2 * scale + 11:
                raise EvaluationError(f"{record.name}: {hr.shape[1]}x{hr.shape[0]} is too small to score at x{scale}")
        except EvaluationError as err:
            failed.append({"name": record.name, "error": str(err)})
            return math.nan, math.nan
        timing["read"] += time.perf_counter() - t0
        try:
            p, s, sr, seconds = score_image(model, hr, scale, degradation, self_ensemble=self_ensemble, tile=tile)
        except ValueError as err:  # e.g. too small for SSIM once mod-cropped and shaved: report, do not abort
            failed.append({"name": record.name, "error": str(err)})
            return math.nan, math.nan
        for k, v in seconds.items():
            timing[k] += v
        if save_dir is not None:
            t1 = time.perf_counter()
            _save_sr(sr, Path(save_dir) / benchmark.name / f"x{scale}" / f"{record.name}.png")
            timing["save"] += time.perf_counter() - t1
        return p, s

    desc = f"{benchmark.name} x{scale} {degradation}{' +' if self_ensemble else ''}"
    if not distributed:
        for i in tqdm(range(n), desc=desc, unit="image", disable=not progress):
            rows.append((i, *run_one(i)))
    else:
        rows, failed = _score_across_processes(run_one, n, accelerator, failed, desc, show_bar=progress and is_main)
        timing = {k: float(v) for k, v in timing.items()}  # this process's share only
    return _benchmark_result(benchmark, scale, degradation, self_ensemble, rows, failed, timing)


def _check_request(model: Upscaler, benchmark: Benchmark, scale: int, degradation: str) -> int:
    """The number of images to score; EvaluationError for a request that cannot be scored."""
    if degradation not in DEGRADATIONS:
        raise EvaluationError(f"degradation must be one of {DEGRADATIONS}, got {degradation!r}")
    if model.scale != scale:
        raise EvaluationError(f"the model is x{model.scale} but scale {scale} was asked")
    n = len(benchmark.images)
    if n == 0:
        raise EvaluationError(f"benchmark {benchmark.name} has no images")
    return n


def _score_across_processes(
    run_one: Callable[[int], tuple[float, float]],
    n: int,
    accelerator: Any,
    failed: list[dict[str, str]],
    desc: str,
    show_bar: bool,
) -> tuple[list[tuple[int, float, float]], list[dict[str, str]]]:
    """Each process scores its share of the n images; every process gets all the (index, psnr, ssim) rows and
    all the failures (`failed` being what `run_one` appended here)."""
    from accelerate.utils import gather_object
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    rows: list[tuple[int, float, float]] = []
    loader = accelerator.prepare(DataLoader(list(range(n)), batch_size=1))
    bar = tqdm(total=n, desc=desc, unit="image", disable=not show_bar)
    for batch in loader:  # batch: (1,) image index
        i = int(batch[0])
        p, s = run_one(i)
        row = torch.tensor([[i, p, s]], dtype=torch.float64, device=accelerator.device)
        gathered = accelerator.gather_for_metrics(row)  # (<= num_processes, 3), padding duplicates dropped
        rows.extend((int(r[0]), float(r[1]), float(r[2])) for r in gathered.cpu())
        bar.update(len(gathered))
    bar.close()
    return rows, list({f["name"]: f for f in gather_object(failed)}.values())  # padding may repeat one


def _benchmark_result(
    benchmark: Benchmark,
    scale: int,
    degradation: str,
    self_ensemble: bool,
    rows: list[tuple[int, float, float]],
    failed: list[dict[str, str]],
    timing: dict[str, float],
) -> BenchmarkResult:
    """The per-image rows (any order) as a result: exact reconstructions listed apart, the means of the rest."""
    n = len(benchmark.images)
    rows.sort()
    identical = [benchmark.images[i].name for i, p, _ in rows if math.isinf(p)]
    per_image = [
        {"name": benchmark.images[i].name, "psnr": p, "ssim": s} for i, p, s in rows if math.isfinite(p)
    ]
    if len({r[0] for r in rows}) != n:
        raise RuntimeError(f"{benchmark.name}: scored {len(rows)} results for {n} images; the split lost images")
    psnr_mean = float(np.mean([r["psnr"] for r in per_image])) if per_image else math.nan
    ssim_mean = float(np.mean([r["ssim"] for r in per_image])) if per_image else math.nan
    return BenchmarkResult(
        benchmark=benchmark.name,
        scale=scale,
        degradation=degradation,
        self_ensemble=self_ensemble,
        num_images=len(per_image),
        psnr=psnr_mean,
        ssim=ssim_mean,
        per_image=per_image,
        failed=sorted(failed, key=lambda f: f["name"]),
        timing_s={k: round(v, 4) for k, v in timing.items()},
        identical=identical,
    )


def _images(result: dict[str, Any]) -> str:
    """The table's image count, naming what was left out of the means."""
    identical = result.get("identical") or []
    if not identical:
        return str(result["num_images"])
    return f"{result['num_images']} (+{len(identical)} reconstructed exactly, not in the means: {', '.join(identical)})"


def markdown_table(model_name: str, results: Sequence[dict[str, Any]]) -> str:
    """The results as a markdown table, one row per benchmark / scale / degradation / self-ensemble."""
    has_bicubic = any(r.get("bicubic_psnr") is not None for r in results)
    head = "| model | benchmark | scale | degradation | self-ensemble | images | PSNR (dB) | SSIM |"
    rule = "|---|---|---|---|---|---|---|---|"
    if has_bicubic:
        head += " bicubic PSNR | bicubic SSIM |"
        rule += "---|---|"
    lines = [head, rule]
    for r in results:
        line = (
            f"| {model_name} | {r['benchmark']} | x{r['scale']} | {r['degradation']} | "
            f"{'yes' if r['self_ensemble'] else 'no'} | {_images(r)} | {r['psnr']:.2f} | {r['ssim']:.4f} |"
        )
        if has_bicubic:
            bp, bs = r.get("bicubic_psnr"), r.get("bicubic_ssim")
            line += f" {bp:.2f} | {bs:.4f} |" if bp is not None else " - | - |"
        lines.append(line)
    return "\n".join(lines)


def evaluate_benchmarks(
    model: Upscaler,
    benchmarks: Sequence[Benchmark],
    scale: int,
    degradation: str = "BI",
    *,
    with_bicubic: bool = False,
    **options: Any,
) -> list[dict[str, Any]]:
    """`evaluate_benchmark` over several benchmarks, as the JSON-plain entries `models.card.update_card` takes; with
    `with_bicubic`, the bicubic baseline on the same images too (`bicubic_psnr`, `bicubic_ssim`), for the card.
    `options` are `evaluate_benchmark`'s (self_ensemble, tile, save_dir, accelerator, progress)."""
    bicubic = BicubicModel(scale).to(model.device) if with_bicubic else None
    results = []
    for bench in benchmarks:
        r = evaluate_benchmark(model, bench, scale, degradation, **options).to_dict()
        if bicubic is not None:
            b = evaluate_benchmark(bicubic, bench, scale, degradation, accelerator=options.get("accelerator"),
                                   progress=False)
            r["bicubic_psnr"], r["bicubic_ssim"] = b.psnr, b.ssim
        results.append(r)
    return results
