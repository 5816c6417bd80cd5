"""Benchmark evaluation under the published protocol: load HR images, make LR on the fly, super-resolve, score.

Used by `evaluate.py` and `bsr-hub eval`. The protocol (METHOD.md section 7) lives in `metrics` and
`degradations`; this module is the loop around them:

- benchmarks load through `datasets` (`imagefolder` over `DATA_DIR/<name>`, or a Hub dataset id with an image
  column), HR only, so any folder of HR images is a benchmark;
- each HR is mod-cropped, degraded (BI or BD) to uint8 LR, grey LR replicated to 3 channels for the network,
  and super-resolved through `model.upscale` (so tiling and self-ensemble are the library's own);
- per-image PSNR / SSIM, then the mean; unreadable images are reported by name and make the run fail;
- under `accelerate launch` the images are split across processes and gathered with `gather_for_metrics`;
- `update_card` merges results into `eval_results.json` beside a checkpoint and re-renders its `README.md`.

`datasets` and `accelerate` are imported inside the functions that need them (the `train` extra).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from .degradations import DEGRADATIONS, degrade, imresize, modcrop
from .extras import MissingExtraError, require_extra
from .files import replace_atomically
from .metrics import psnr_ssim, quantize

if TYPE_CHECKING:
    pass

BICUBIC = "bicubic"
DEFAULT_BENCHMARKS = ("Set5", "Set14", "BSD100")
EVAL_RESULTS_NAME = "eval_results.json"
"""Beside a checkpoint: every result measured for it, merged run after run; the card is rendered from it."""
TRAINING_INFO_NAME = "training.json"
"""Beside a checkpoint, written by training: the `training` dict of the card, kept when the card is re-rendered."""

EXTRA_HINT = "pip install 'bsr-hub[train]'"


class EvaluationError(ValueError):
    """Bad evaluation input: a model of the wrong scale, a missing or empty benchmark, unreadable images."""


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as err:
        raise ImportError(f"evaluation needs `{module}`, which is in the train extra: {EXTRA_HINT}") from err


# ---------------------------------------------------------------------------------------------------------
# The bicubic baseline as a model
# ---------------------------------------------------------------------------------------------------------


class BicubicModel(torch.nn.Module):
    """MATLAB-compatible bicubic enlarging, shaped like a BSRModel so that it runs through `upscale`.

    `forward` takes (B, C, h, w) float in [0, 1] and returns (B, C, sh, sw). With `uint8=True` (the published
    baseline: MATLAB `imresize(LR, s, 'bicubic')` on the uint8 LR) the input is taken back to its uint8 values
    and each pass is rounded as MATLAB does; with `uint8=False` it is a linear, float-only interpolation,
    which commutes with flips and rotations, so self-ensemble must leave its output unchanged.
    """

    def __init__(self, scale: int, uint8: bool = True):
        super().__init__()
        self._scale = int(scale)
        self.uint8 = uint8
        # Only what `inference.upscale` reads from a model: a bicubic "network" needs no memory to speak of,
        # so the automatic tiling estimate sees a one-feature, zero-group net.
        self.config = SimpleNamespace(scale=self._scale, num_features=1, num_groups=0, preset=None)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # carries .device and .dtype

    @property
    def scale(self) -> int:
        return self._scale

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uint8:
            lr = torch.floor(x.clamp(0, 1) * 255 + 0.5).to(torch.uint8)  # exact: x came from a uint8 LR
            return imresize(lr, self._scale).to(x.dtype) / 255.0  # (B, C, sh, sw)
        return imresize(x, self._scale)

    def upscale(self, image: Any, **kwargs: Any) -> Any:
        from .inference import upscale

        return upscale(self, image, **kwargs)


def load_model(name: str, scale: int | None = None, device: str | torch.device = "cpu") -> torch.nn.Module:
    """`bicubic`, a bundled checkpoint name, a local folder or a Hub repo id, checked against `scale`.

    Raises:
        EvaluationError: `bicubic` without a scale, or a model whose scale is not `scale`.
    """
    if name == BICUBIC:
        if scale is None:
            raise EvaluationError("--model bicubic needs --scale (2, 3, 4, ...)")
        return BicubicModel(scale).to(device)
    from .modeling import BSRModel

    model = BSRModel.from_pretrained(name, map_location=device)
    if scale is not None and model.scale != scale:
        raise EvaluationError(
            f"model {name} is a x{model.scale} model but --scale {scale} was asked; "
            f"pass --scale {model.scale} or a x{scale} checkpoint"
        )
    return model.eval()


# ---------------------------------------------------------------------------------------------------------
# Benchmarks
# ---------------------------------------------------------------------------------------------------------

IMAGE_SUFFIXES = {".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass(frozen=True)
class ImageRecord:
    """One benchmark image, not yet decoded: decoding happens in the process that scores it."""

    name: str
    path: str | None = None
    data: bytes | None = None


@dataclass
class Benchmark:
    name: str
    images: list[ImageRecord]


def load_benchmark(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    dataset: str | None = None,
    split: str = "test",
    image_column: str = "image",
) -> Benchmark:
    """The HR images of a benchmark, through `datasets`.

    Args:
        name: the benchmark's name (a folder under `data_dir`, or the label of `dataset`).
        data_dir: folder holding one folder of HR images per benchmark (`imagefolder`).
        dataset: a Hub dataset id (or local dataset script/folder) with an image column, used instead of
            `data_dir`.
        split, image_column: which split and column of `dataset`.

    Raises:
        EvaluationError: the folder is missing or holds no images, or the dataset has no such column.
    """
    datasets = _require("datasets")
    if dataset is None:
        if data_dir is None:
            raise EvaluationError("give --data-dir (a folder of benchmark folders) or --dataset (a Hub dataset id)")
        folder = Path(data_dir) / name
        if not folder.is_dir():
            raise EvaluationError(f"benchmark folder {folder} does not exist (expected --data-dir/{name})")
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*") if p.is_file()):
            raise EvaluationError(f"benchmark folder {folder} holds no image files")
        ds = datasets.load_dataset("imagefolder", data_dir=str(folder), drop_labels=True, split="train")
        image_column = "image"
    else:
        ds = datasets.load_dataset(dataset, split=split)
        if image_column not in ds.column_names:
            raise EvaluationError(
                f"dataset {dataset} has no column {image_column!r} (columns: {ds.column_names}); pass --image-column"
            )
        if len(ds) == 0:
            raise EvaluationError(f"dataset {dataset} split {split} is empty")
    # Undecoded: {"path", "bytes"}, so that a broken file is reported by name rather than raising inside datasets.
    ds = ds.cast_column(image_column, datasets.Image(decode=False))
    images = []
    for i, item in enumerate(ds[image_column]):
        path = item.get("path")
        stem = Path(path).stem if path else f"{i:04d}"
        images.append(ImageRecord(name=stem, path=path, data=item.get("bytes")))
    images.sort(key=lambda r: r.name)  # a fixed order: per-image tables and process splits are reproducible
    return Benchmark(name=name, images=images)


def read_hr(record: ImageRecord) -> np.ndarray:
    """Decode one HR image to uint8 (H, W) grey or (H, W, 3) RGB.

    Raises:
        EvaluationError: the file cannot be decoded, or is not an 8-bit image.
    """
    import io

    try:
        with Image.open(io.BytesIO(record.data) if record.data else record.path) as img:
            img.load()
            mode = img.mode
            if mode in ("I;16", "I;16L", "I;16B", "I", "F"):
                raise EvaluationError(f"{record.name}: mode {mode} is not an 8-bit image")
            if mode in ("1", "L", "LA"):
                img = img.convert("L")  # grey ground truth: scored on its own channel
            elif mode != "RGB":
                img = img.convert("RGB")
            return np.array(img)  # a writable copy (np.asarray of a PIL image is read-only)
    except EvaluationError:
        raise
    except Exception as err:  # PIL raises many kinds (OSError, SyntaxError, ValueError, DecompressionBombError)
        raise EvaluationError(f"{record.name}: cannot read {record.path or 'image bytes'}: {err}") from err


# ---------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------


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

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not out["failed"]:
            del out["failed"]
        return out


def _lr_tensor(lr: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (h, w) or (h, w, 3) -> (1, 3, h, w) float in [0, 1]; grey replicated to 3 channels (METHOD.md 1)."""
    t = torch.from_numpy(np.ascontiguousarray(lr)).to(device)
    if t.ndim == 2:
        t = t[:, :, None].expand(-1, -1, 3)
    return t.permute(2, 0, 1)[None].float() / 255.0


def score_image(
    model: torch.nn.Module,
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
        degradation, model and metrics.
    """
    t0 = time.perf_counter()
    hr = modcrop(hr, scale)
    lr = degrade(hr, scale, degradation)
    x = _lr_tensor(lr, model.device)  # (1, 3, h, w)
    t1 = time.perf_counter()
    # The library's default fast path (tile="auto", backend="auto"): within one 8-bit level of one pass, and the
    # scores to 0.001 dB (bench/results/evaluate.md); --tile 0 forces one pass.
    sr = model.upscale(x, tile=tile, self_ensemble=self_ensemble)  # (1, 3, h*s, w*s)
    if sr.device.type == "cuda":
        torch.cuda.synchronize(sr.device)
    t2 = time.perf_counter()
    if sr.shape[-2:] != hr.shape[:2]:
        raise EvaluationError(f"the model returned {tuple(sr.shape[-2:])} for a {hr.shape[:2]} ground truth")
    hr_t = torch.from_numpy(np.ascontiguousarray(hr)).to(sr.device)
    hr_t = hr_t[None, None] if hr_t.ndim == 2 else hr_t.permute(2, 0, 1)[None]  # (1, C, H, W) uint8
    p, s = psnr_ssim(sr, hr_t, shave=scale)
    p, s = float(p[0]), float(s[0])
    t3 = time.perf_counter()
    return p, s, sr, {"degrade": t1 - t0, "model": t2 - t1, "metrics": t3 - t2}


def _save_sr(sr: torch.Tensor, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    arr = quantize(sr[0]).to(torch.uint8).permute(1, 2, 0).cpu().numpy()  # (H, W, 3)
    Image.fromarray(arr).save(target)


def evaluate_benchmark(
    model: torch.nn.Module,
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

    if degradation not in DEGRADATIONS:
        raise EvaluationError(f"degradation must be one of {DEGRADATIONS}, got {degradation!r}")
    if model.scale != scale:
        raise EvaluationError(f"the model is x{model.scale} but scale {scale} was asked")
    n = len(benchmark.images)
    if n == 0:
        raise EvaluationError(f"benchmark {benchmark.name} has no images")
    distributed = accelerator is not None and accelerator.num_processes > 1
    is_main = accelerator is None or accelerator.is_local_main_process
    timing = {"read": 0.0, "degrade": 0.0, "model": 0.0, "metrics": 0.0, "save": 0.0}
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
        from accelerate.utils import gather_object
        from torch.utils.data import DataLoader

        loader = accelerator.prepare(DataLoader(list(range(n)), batch_size=1))
        bar = tqdm(total=n, desc=desc, unit="image", disable=not (progress and is_main))
        for batch in loader:  # batch: (1,) image index
            i = int(batch[0])
            p, s = run_one(i)
            row = torch.tensor([[i, p, s]], dtype=torch.float64, device=accelerator.device)
            gathered = accelerator.gather_for_metrics(row)  # (<= num_processes, 3), padding duplicates dropped
            rows.extend((int(r[0]), float(r[1]), float(r[2])) for r in gathered.cpu())
            bar.update(len(gathered))
        bar.close()
        failed = list({f["name"]: f for f in gather_object(failed)}.values())  # padding may repeat one
        timing = {k: float(v) for k, v in timing.items()}  # this process's share only

    rows.sort()
    per_image = [
        {"name": benchmark.images[i].name, "psnr": p, "ssim": s} for i, p, s in rows if not math.isnan(p)
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
    )


# ---------------------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------------------


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
            f"{'yes' if r['self_ensemble'] else 'no'} | {r['num_images']} | {r['psnr']:.2f} | {r['ssim']:.4f} |"
        )
        if has_bicubic:
            bp, bs = r.get("bicubic_psnr"), r.get("bicubic_ssim")
            line += f" {bp:.2f} | {bs:.4f} |" if bp is not None else " - | - |"
        lines.append(line)
    return "\n".join(lines)


def _result_key(r: dict[str, Any]) -> tuple:
    return (r["benchmark"], int(r["scale"]), r["degradation"], bool(r.get("self_ensemble", False)))


def merge_results(old: Sequence[dict[str, Any]], new: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Old entries with the same (benchmark, scale, degradation, self_ensemble) as a new one are replaced."""
    merged = {_result_key(r): r for r in old}
    for r in new:
        merged[_result_key(r)] = r
    order = {"BI": 0, "BD": 1}
    return sorted(
        merged.values(), key=lambda r: (r["scale"], order.get(r["degradation"], 9), r["benchmark"], r.get("self_ensemble", False))
    )


def update_card(
    model_dir: str | os.PathLike,
    results: Sequence[dict[str, Any]],
    *,
    model_name: str | None = None,
    evaluation_command: str | None = None,
) -> Path:
    """Merge `results` into the checkpoint's `eval_results.json` and re-render its `README.md` model card.

    Results measured before (other benchmarks, scales, degradations) are kept; an entry with the same
    benchmark, scale, degradation and self-ensemble is replaced. The training section comes from
    `training.json` beside the checkpoint when training wrote one. Each entry keeps the command that measured
    it, and the card lists those commands.

    Returns:
        The path of the written README.md.

    Raises:
        EvaluationError: results with unreadable images, or results whose scale is not the model's.
    """
    from .card import model_index_mismatches, render_model_card
    from .modeling import BSRModel

    folder = Path(model_dir)
    model = BSRModel.from_pretrained(folder)
    for r in results:
        if r.get("failed"):
            names = ", ".join(f["name"] for f in r["failed"])
            raise EvaluationError(f"not writing {r['benchmark']} into the card: unreadable images ({names})")
        if int(r["scale"]) != model.scale:
            raise EvaluationError(f"{r['benchmark']} was measured at x{r['scale']}, but {folder} is a x{model.scale} model")
    store = folder / EVAL_RESULTS_NAME
    previous = json.loads(store.read_text()) if store.is_file() else {}
    name = model_name or previous.get("model") or folder.name
    new = []
    for r in results:
        entry = {k: v for k, v in r.items() if k != "timing_s"}
        if evaluation_command:
            entry["command"] = evaluation_command
        new.append(entry)
    merged = merge_results(previous.get("results", []), new)
    _write_atomic(store, json.dumps({"model": name, "results": merged}, indent=2) + "\n")

    training_file = folder / TRAINING_INFO_NAME
    training = json.loads(training_file.read_text()) if training_file.is_file() else None
    commands = list(dict.fromkeys(r["command"] for r in merged if r.get("command")))
    card_results = [{k: v for k, v in r.items() if k != "per_image"} for r in merged]
    card = render_model_card(
        model, model_name=name, results=card_results, training=training, evaluation_commands=commands,
        load_as=_load_name(folder, name),
    )
    target = folder / "README.md"
    _write_atomic(target, str(card))
    # ModelCard.validate() posts to the Hub; offline, check that the Hub's parser reads back what we measured.
    problems = model_index_mismatches(target, merged)
    if problems:
        raise RuntimeError("the rendered card's model-index does not match the results: " + "; ".join(problems))
    return target


def _load_name(folder: Path, name: str) -> str:
    """What the card's "How to use" passes to `from_pretrained`: the bundled name for a bundled checkpoint, a Hub
    id for a model that has one, and otherwise the folder (a user's model named like a bundled one must not
    point its readers at the bundled weights)."""
    from .hub import bundled_checkpoints

    bundled = bundled_checkpoints()
    if name in bundled:
        return name if bundled[name].resolve() == folder.resolve() else str(folder)
    return name if name.count("/") == 1 else str(folder)


def _write_atomic(target: Path, text: str) -> None:
    # A unique temporary name: two evaluations updating one card must not write into each other's file.
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    replace_atomically(tmp, target)


# ---------------------------------------------------------------------------------------------------------
# The command (evaluate.py and `bsr-hub eval`)
# ---------------------------------------------------------------------------------------------------------


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The evaluation flags, shared by `evaluate.py` and `bsr-hub eval`."""
    from .inference import parse_tile_arg

    parser.add_argument("--model", required=True, help="bundled name, local folder, Hub repo id, or 'bicubic'")
    parser.add_argument(
        "--benchmarks", nargs="+", default=None,
        help=f"folders under --data-dir (default: {' '.join(DEFAULT_BENCHMARKS)}); with --dataset, its label",
    )
    parser.add_argument("--data-dir", default=None, help="folder of benchmark folders of HR images")
    parser.add_argument("--dataset", default=None, help="a Hub dataset id with an image column, instead of --data-dir")
    parser.add_argument("--split", default="test", help="split of --dataset (default test)")
    parser.add_argument("--image-column", default="image", help="image column of --dataset (default image)")
    parser.add_argument("--scale", type=int, default=None, help="scale (default: the model's; required for bicubic)")
    parser.add_argument("--degradation", default="BI", choices=list(DEGRADATIONS), help="how LR is made (default BI)")
    parser.add_argument("--self-ensemble", action="store_true", help="mean over the 8 flips/rotations ('+')")
    parser.add_argument("--tile", type=parse_tile_arg, default="auto",
                        help="auto (default), 0 (one pass) or a tile size in LR pixels (bounded memory)")
    parser.add_argument("--save-images", default=None, metavar="DIR", help="write SR images to DIR/<benchmark>/x<s>/")
    parser.add_argument("--output", default=None, metavar="JSON", help="write results (with per-image values) here")
    parser.add_argument("--update-card", default=None, metavar="MODEL_DIR", help="write results into that checkpoint's card")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (under accelerate launch: its device)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return parser


def _launched_distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def command_line(args: argparse.Namespace, scale: int, prog: str = "python evaluate.py") -> str:
    """The command that reproduces these numbers (what decides them, not where outputs went), for the card."""
    parts = [prog, "--model", args.model]
    if args.dataset:
        parts += ["--dataset", args.dataset, "--split", args.split, "--image-column", args.image_column]
    else:
        parts += ["--benchmarks", *(args.benchmarks or DEFAULT_BENCHMARKS), "--data-dir", str(args.data_dir)]
    parts += ["--scale", str(scale), "--degradation", args.degradation]
    if args.self_ensemble:
        parts.append("--self-ensemble")
    if args.tile != "auto":
        parts += ["--tile", str(args.tile or 0)]
    return " ".join([prog, *map(_quote, parts[1:])])  # prog is a command ("python evaluate.py"), not one word


def run(args: argparse.Namespace, prog: str = "python evaluate.py") -> int:
    """Run the evaluation the flags describe; print the table; write JSON / card. Returns the exit status.

    `prog` starts the command line recorded in the card next to the numbers.
    """
    try:  # every benchmark is read through datasets: say so now, in one line, not as a traceback later
        require_extra("train", "datasets", what="evaluation")
    except MissingExtraError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    accelerator = None
    if _launched_distributed():
        _require("accelerate")
        from accelerate import Accelerator

        # cpu=True is what makes a CPU-only multi-process launch actually synchronise (ENVIRONMENT.md).
        accelerator = Accelerator(cpu=not torch.cuda.is_available() or args.device == "cpu")
        device: str | torch.device = accelerator.device
        if device.type == "cpu":
            device = "cpu"  # Accelerate says cpu:0 under debug_launcher, which safetensors' loader rejects
    else:
        device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    is_main = accelerator is None or accelerator.is_main_process
    if args.quiet:
        _require("datasets").disable_progress_bars()

    try:
        model = load_model(args.model, args.scale, device)
        if args.update_card:
            _check_card_target(args.update_card, args.model, model)  # before hours of evaluation, not after
        scale = args.scale or model.scale
        if args.dataset:
            if args.benchmarks and len(args.benchmarks) > 1:
                raise EvaluationError("with --dataset give at most one --benchmarks name (the label of that dataset)")
            names = args.benchmarks or [args.dataset.rstrip("/").split("/")[-1]]
        else:
            names = args.benchmarks or list(DEFAULT_BENCHMARKS)
        benchmarks = [
            load_benchmark(n, args.data_dir, dataset=args.dataset, split=args.split, image_column=args.image_column)
            for n in names
        ]
        with_bicubic = args.update_card is not None and args.model != BICUBIC
        bicubic = BicubicModel(scale).to(device) if with_bicubic else None
        results = []
        for bench in benchmarks:
            r = evaluate_benchmark(
                model, bench, scale, args.degradation, self_ensemble=args.self_ensemble, tile=args.tile,
                save_dir=args.save_images, accelerator=accelerator, progress=not args.quiet,
            ).to_dict()
            if bicubic is not None:
                # The baseline on the same images, so the card can show it next to the model's numbers.
                b = evaluate_benchmark(bicubic, bench, scale, args.degradation, accelerator=accelerator, progress=False)
                r["bicubic_psnr"], r["bicubic_ssim"] = b.psnr, b.ssim
            results.append(r)
    except (EvaluationError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    model_name = args.model
    if not is_main:
        return 0
    print(markdown_table(model_name, results))
    command = command_line(args, scale, prog)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"model": model_name, "results": results}, indent=2) + "\n")
    status = 0
    for r in results:
        for f in r.get("failed", []):
            print(f"error: {r['benchmark']}: {f['error']}", file=sys.stderr)
            status = 1
    if args.update_card:
        try:
            path = update_card(args.update_card, results, evaluation_command=command)
            print(f"updated {path}", file=sys.stderr)
        except (EvaluationError, OSError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    return status


def _check_card_target(model_dir: str | os.PathLike, model_name: str, model: torch.nn.Module) -> None:
    """Refuse to write one model's numbers into another checkpoint's card.

    Raises:
        EvaluationError: `model` is the bicubic baseline, or its weights are not those in `model_dir`.
    """
    from .modeling import BSRModel

    if not isinstance(model, BSRModel):
        raise EvaluationError(
            f"--update-card {model_dir}: --model {model_name} is not that checkpoint; its numbers would be written "
            "into the card as the checkpoint's own (the bicubic baseline is added to the card automatically)"
        )
    target = BSRModel.from_pretrained(model_dir)
    ours = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    theirs = target.state_dict()
    if target.config.to_dict() != model.config.to_dict() or ours.keys() != theirs.keys() or not all(
        torch.equal(ours[k], theirs[k]) for k in theirs
    ):
        raise EvaluationError(
            f"--update-card {model_dir}: that checkpoint is not the evaluated model {model_name} (different config "
            "or weights); pass the same checkpoint to --model and --update-card"
        )


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s) if s else "''"


def main(argv: Sequence[str] | None = None) -> int:
    """`python evaluate.py ...`."""
    parser = add_eval_arguments(
        argparse.ArgumentParser(prog="evaluate.py", description="Score a model on SR benchmarks (PSNR/SSIM on Y).")
    )
    return run(parser.parse_args(argv))

