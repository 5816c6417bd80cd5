"""What a training run says about itself: its loss (summed on the device, `LossMeter`), a loss that is no longer a
number, its hardware, its curve, and its training data as named datasets with image counts (for the record),
with the check that a training folder has images at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..core import describe_cpu, write_atomically
from ..models import DatasetInfo
from .config import TrainConfig

# ---------------------------------------------------------------------------------------------- the loss


def non_finite_message(cfg: TrainConfig, step: int, checkpoint: Path | None) -> str:
    """What to say when the loss stops being a number: where it happened, what was kept, what to change."""
    kept = (f"the last good checkpoint, {checkpoint}, is kept" if checkpoint is not None
            else "no checkpoint was written before it")
    clipping = "" if cfg.optim.max_grad_norm else ", or set optim.max_grad_norm (clipping is off)"
    return (f"the loss became inf or nan at step {step}; training stopped without saving the weights, which are "
            f"no longer finite ({kept}). The usual cause is a learning rate too high for this model and batch: "
            f"lower optim.learning_rate (now {cfg.optim.learning_rate:g}){clipping}, and resume from the checkpoint "
            "with --resume_allow_changes, or start over")


class LossMeter:
    """Loss terms summed as detached tensors on the device, so that a step makes no host sync; `mean()` is the
    one sync per logging interval."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._sum: torch.Tensor | None = None
        self.count = 0
        self._first_bad: torch.Tensor | None = None  # () int64 on the device: the first non-finite step, or -1

    def add(self, total: torch.Tensor, terms: dict[str, torch.Tensor], step: int) -> None:
        """`step`: the optimiser step this loss belongs to (1-based), named if the loss is not finite."""
        self.names = ["loss", *terms]
        values = torch.stack([total.detach().float(), *(t.detach().float() for t in terms.values())])  # (1 + T,)
        self._sum = values if self._sum is None else self._sum + values
        self.count += 1
        bad = ~torch.isfinite(values[0])  # on the device, no sync
        first = self._first_bad if self._first_bad is not None else torch.full((), -1, device=values.device)
        self._first_bad = torch.where(bad & (first < 0), torch.full_like(first, step), first)

    def first_non_finite(self, accelerator: Any = None) -> int | None:
        """The first step whose loss was inf or nan on any process, or None: a host sync (and, with several
        processes, a gather that every process must reach at the same step)."""
        if self._first_bad is None:
            return None
        flags = self._first_bad[None]  # (1,)
        if accelerator is not None and accelerator.num_processes > 1:
            flags = accelerator.gather(flags)  # (processes,)
        bad = [int(v) for v in flags.tolist() if v >= 0]
        return min(bad) if bad else None

    def mean(self) -> dict[str, float]:
        if self._sum is None:
            return {}
        values = (self._sum / self.count).tolist()  # host sync point
        self._sum, self.count = None, 0
        return dict(zip(self.names, values))


# ---------------------------------------------------------------------------------------------- the run's hardware and curve


def hardware_description(accelerator: Any) -> str:
    n = accelerator.num_processes
    if accelerator.device.type == "cuda":
        name = torch.cuda.get_device_name(accelerator.device)
        precision = f", {accelerator.mixed_precision} mixed precision" if accelerator.mixed_precision != "no" else ""
        # How its convolutions were chosen (training.choose_kernels): it changes the speed a run is sized by.
        kernels = ", cuDNN autotuned" if torch.backends.cudnn.benchmark else ", cuDNN not autotuned"
        return f"{n} x {name}{precision}{kernels}"
    precision = f", {accelerator.mixed_precision} autocast" if accelerator.mixed_precision != "no" else ", fp32"
    return (f"{n} CPU process(es) on {describe_cpu()}, {torch.get_num_threads()} threads each, {os.cpu_count()} "
            f"cores{precision}")


def plot_curves(history: list[dict[str, Any]], target: Path) -> None:
    """Training loss and validation PSNR against the step, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = [(h["step"], h["loss"]) for h in history if "loss" in h]
    psnrs = [(h["step"], h["val_psnr"]) for h in history if "val_psnr" in h]
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    if losses:
        ax.plot(*zip(*losses), color="tab:blue", lw=1, label="training loss")
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (L2 + a L1 + b Lp)", color="tab:blue")
    if psnrs:
        ax2 = ax.twinx()
        ax2.plot(*zip(*psnrs), color="tab:red", marker="o", ms=3, lw=1, label="validation PSNR")
        ax2.set_ylabel("validation PSNR, Y (dB)", color="tab:red")
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(target, lambda tmp: fig.savefig(tmp, format="png"))  # a new file, never through a link
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- the training data

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
# Folder names of ../shared/data/train and what the literature calls them (../shared/data/README.md).
KNOWN_DATASETS = {
    "T91": "T91",
    "BSD200": "BSD200 = BSDS500 train",
    "BSDS500_test200": "BSDS500 test",
}
RESEARCH_USE = "none stated, research use"
"""The licence of the known sets: neither T91 (Yang et al. 2010) nor BSDS500 ships one; both are passed around for
research, and ../shared/data/README.md calls their terms "research-only or unknown". Said on the card so that a user
of the weights knows what the images were, not left out."""


def _count_images(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def check_train_dir(folder: str | os.PathLike) -> None:
    """Raise ValueError, naming the folder, when a --data.train_dir has no image to train on (in it or below)."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"--data.train_dir {folder}: no such folder")
    if not _count_images(root):
        raise ValueError(f"--data.train_dir {folder}: no images in it or its subfolders (looked for "
                         f"{', '.join(sorted(IMAGE_SUFFIXES))} files)")


PHOTO_SET_MANIFEST = "manifest.csv"
"""The manifest of a set made by bench/make_photo_set.py: a row per source image with its package and licence, and
whether it was kept."""


def describe_training_data(cfg: TrainConfig, source: Any = None) -> list[DatasetInfo]:
    """The training data as named datasets with image counts, not a local path; several train_dirs one after the
    other.

    A train_dir's subfolders are its datasets (../shared/data/train: T91/, BSD200/, BSDS500_test200/); images
    directly in it count as one dataset named after the folder. A folder with a photo-set manifest
    (`PHOTO_SET_MANIFEST`) is one dataset named by its packages, with the licences of its kept images. A Hub
    dataset is named by its id and split.
    """
    if cfg.data.uses_bundled_photos:
        count = len(source) if source is not None and hasattr(source, "__len__") else None
        return [DatasetInfo("the photos bundled with bsr_hub (CC0/public domain), astronaut held out", count)]
    if cfg.data.dataset_name is not None:
        count = len(source) if source is not None and hasattr(source, "__len__") else None
        return [DatasetInfo(f"{cfg.data.dataset_name} (Hugging Face Hub, split {cfg.data.split})", count)]
    return [info for folder in cfg.data.train_dirs for info in _describe_folder(Path(folder))]


def _describe_photo_set(root: Path) -> DatasetInfo:
    """A folder made by bench/make_photo_set.py: its packages and licences, from the kept rows of its manifest."""
    import csv

    with (root / PHOTO_SET_MANIFEST).open(newline="") as f:
        kept = [row for row in csv.DictReader(f) if row.get("status") == "kept"]
    packages = sorted({row["package"] for row in kept if row.get("package")})
    licences = sorted({row["licence"] for row in kept if row.get("licence")})
    # "Not flat", not "photographs": the rule also keeps renders with noisy gradients (bench/results/photo_set.md).
    name = f"{root.name}: Debian wallpapers, not flat by a PIC rule, from {', '.join(packages) or '(none listed)'}"
    return DatasetInfo(name, _count_images(root), ", ".join(licences) or "not stated")


def _describe_folder(root: Path) -> list[DatasetInfo]:
    if (root / PHOTO_SET_MANIFEST).is_file():
        return [_describe_photo_set(root)]
    found = []
    loose = sum(1 for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if loose:
        found.append(_known_or_named(root, loose))
    known = list(KNOWN_DATASETS)
    subfolders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    # The known sets in the order the literature lists them (T91 first), then any others by name.
    for sub in sorted(subfolders, key=lambda p: (known.index(p.name) if p.name in known else len(known), p.name)):
        n = _count_images(sub)
        if n:
            found.append(_known_or_named(sub, n))
    return found


def _known_or_named(folder: Path, images: int) -> DatasetInfo:
    """A known set by its literature name and licence; any other folder by its name, its licence not stated."""
    if folder.name in KNOWN_DATASETS:
        return DatasetInfo(KNOWN_DATASETS[folder.name], images, RESEARCH_USE)
    return DatasetInfo(folder.name, images, "not stated")
