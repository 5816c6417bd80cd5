"""Benchmark I/O: which HR images a benchmark holds, read through `datasets`, and decoding one of them.

A benchmark is a folder of HR images (`imagefolder` over `DATA_DIR/<name>`) or a Hub dataset with an image column;
HR only, so any folder of HR images is a benchmark. Images stay undecoded (`ImageRecord`) until the process that
scores them reads them with `read_hr`, so a broken file is reported by name. `datasets` is the `train` extra.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core import require

DEFAULT_BENCHMARKS = ("Set5", "Set14", "BSD100")
IMAGE_SUFFIXES = {".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class EvaluationError(ValueError):
    """Bad evaluation input: a model of the wrong scale, a missing or empty benchmark, unreadable images."""


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
    datasets = require("datasets", extra="train", what="evaluation")
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
    from ..core import ImageReadError, open_image, to_uint8

    try:
        img = open_image(record.data if record.data else record.path)
    except ImageReadError as err:
        raise EvaluationError(f"{record.name}: cannot read {record.path or 'image bytes'}: {err}") from err
    try:
        return to_uint8(img, colour="keep_grey")  # grey ground truth: scored on its own channel
    except ImageReadError as err:
        raise EvaluationError(f"{record.name}: {err}") from err
    finally:
        img.close()
