"""Training images from any 🤗 `datasets` source: where they come from (`DataConfig`), RGB, LR made once.

Sources (`load_image_source`): a local folder (read with the `imagefolder` builder, `drop_labels=True`), a Hub
dataset id, an in-memory `datasets.Dataset`, or a streaming `datasets.IterableDataset` (for data larger than the
disk). The image column is found from the features (the only `Image` column) or named explicitly; an optional
paired LR column gives real-world pairs, otherwise LR is made from the mod-cropped HR by `make_lr` (BI or BD,
MATLAB-exact, `bsr_hub.data.degradations`) **once per image**: for a map-style source through `Dataset.map`, whose
on-disk cache makes a second run skip the work; for a stream, once per image per pass over the stream.

Every image is turned into an (H, W, 3) uint8 array: grey (L, LA, 1-bit, "RGB with equal channels" is already RGB)
is replicated to 3 channels, palette and CMYK are converted, an opaque alpha channel is dropped. What cannot be
used is skipped and counted by reason (`ImagePairs.skipped`), never crashing a run: images whose LR side is
smaller than the patch, partly transparent images (unless `transparent="drop_alpha"`), 16-bit/float modes,
unreadable files, LR/HR pairs whose sizes do not match the scale.

The rows read from here become in-memory HR/LR pairs in `pairs` (`ImagePairs`, `iter_pools`). `datasets` is
imported inside the functions that need it: `import bsr_hub` must not require the `train` extra.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image

from ..core import MODES, ImageReadError, mode_of, open_image, require, straight_mode, to_uint8
from .degradations import DEGRADATIONS, degrade, modcrop

if TYPE_CHECKING:
    from .resizers import DegradationMix

Transparent = Literal["skip", "drop_alpha"]
LR_CACHE_COLUMN = "_bsr_lr"  # where `add_lr_column` stores the LR made from HR
SKIP_CACHE_COLUMN = "_bsr_skip"  # "" or why the row cannot give an LR


# ---------------------------------------------------------------------------------------------------------
# Pixels: decoding, RGB conversion, LR
# ---------------------------------------------------------------------------------------------------------


def make_lr(hr: np.ndarray, scale: int, kind: str = "BI") -> np.ndarray:
    """The LR image of a mod-cropped (H, W, 3) uint8 HR: the one place training data is degraded.

    Returns (H // scale, W // scale, 3) uint8 (MATLAB-exact BI, or BD; see `bsr_hub.data.degradations`).
    """
    return degrade(hr, scale, kind=kind)  # type: ignore[arg-type]


def decode_image(value: Any) -> Image.Image | np.ndarray:
    """A PIL image or array from what a `datasets` row may hold: PIL image, numpy array, a path, or the
    ``{"bytes": ..., "path": ...}`` dict of an undecoded `Image` feature. Raises ValueError if unreadable."""
    if isinstance(value, (Image.Image, np.ndarray)):
        return value
    try:
        return open_image(value)
    except ImageReadError as err:  # a ValueError: one unreadable row is skipped and counted, never fatal to a run
        raise ImageReadError(f"unreadable image: {err}", reason=err.reason) from err


def to_rgb_array(image: Image.Image | np.ndarray, transparent: Transparent = "skip") -> tuple[np.ndarray | None, str]:
    """(H, W, 3) uint8, or (None, reason) when the image cannot be used as training data.

    Grey is replicated to 3 channels; palette, CMYK, YCbCr and 1-bit are converted; alpha that is fully opaque is
    dropped, partly transparent images are skipped unless ``transparent="drop_alpha"`` (the colours under
    transparent pixels are often garbage); 16-bit, 32-bit and float images are skipped (their range is unknown).
    """
    if isinstance(image, np.ndarray):
        a = image
        if a.dtype != np.uint8:
            return None, f"array dtype {a.dtype} (need uint8)"
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[:, :, 0]
        if a.ndim == 2:
            return np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2)), ""
        if a.ndim == 3 and a.shape[2] in (3, 4):
            if a.shape[2] == 4:
                if transparent == "skip" and a[:, :, 3].min() < 255:
                    return None, "partly transparent"
                a = a[:, :, :3]
            return np.array(a, dtype=np.uint8, order="C"), ""
        return None, f"array shape {a.shape}"
    try:
        if not mode_of(image).eight_bit:
            return None, f"mode {image.mode} (not 8-bit)"
        image = straight_mode(image)  # L, LA, RGB or RGBA
    except ImageReadError as err:
        return None, str(err)
    if MODES[image.mode].alpha and transparent == "skip" and np.asarray(image.getchannel("A")).min() < 255:
        return None, "partly transparent"
    return to_uint8(image, colour="rgb"), ""  # alpha dropped, grey replicated; a writable copy


# ---------------------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------------------


def load_image_source(source: Any, split: str = "train", streaming: bool = False) -> Any:
    """A `datasets.Dataset` or `IterableDataset` from a local folder, a Hub dataset id, or a dataset object.

    Args:
        source: a folder of images (read with `imagefolder`, `drop_labels=True`, recursively), a list of folders
            (one dataset of all their images), a Hub dataset id, a `datasets.Dataset`/`IterableDataset` (returned
            as is), or a `DatasetDict` (its `split`).
        split: the split of a folder, Hub dataset or DatasetDict.
        streaming: stream instead of downloading/preparing (folders and Hub ids).
    """
    datasets = require("datasets", extra="train", what="bsr_hub training data")
    if isinstance(source, (datasets.Dataset, datasets.IterableDataset)):
        return source
    if isinstance(source, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split not in source:
            raise ValueError(f"the DatasetDict has no split {split!r}; it has {list(source)}")
        return source[split]
    if isinstance(source, (list, tuple)):
        folders = [Path(s).expanduser() for s in source]
        missing = [str(f) for f in folders if not f.is_dir()]
        if not folders or missing:
            raise FileNotFoundError(f"no such folder: {', '.join(missing)}" if missing else "an empty list of folders")
        return _image_folders(datasets, folders, split, streaming)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if path.is_dir():
            return _image_folders(datasets, [path], split, streaming)
        if path.exists():
            raise ValueError(f"{path} is a file; give a folder of images or a 🤗 dataset id")
        if str(source).startswith((".", "/", "~")):
            raise FileNotFoundError(f"no such folder: {path}")
        return datasets.load_dataset(str(source), split=split, streaming=streaming)
    raise TypeError(
        "source must be a folder (or a list of folders), a Hub dataset id or a datasets.Dataset/IterableDataset, "
        f"got {type(source).__name__}"
    )


def _image_folders(datasets: Any, folders: list[Path], split: str, streaming: bool) -> Any:
    """One dataset of every image in or below `folders` (their union, in the order given)."""
    # drop_labels: a folder with sub-folders would otherwise get a `label` column of None values.
    # data_files, not data_dir: with data_dir, a sub-folder named like a split ("BSDS500_test200")
    # makes imagefolder split the folder by name, and split="train" then fails or silently shrinks.
    patterns = [str(f / "**") for f in folders]
    return datasets.load_dataset(  # one folder as a string, as before: the datasets cache keeps its fingerprint
        "imagefolder", data_files={split: patterns if len(patterns) > 1 else patterns[0]}, drop_labels=True,
        split=split, streaming=streaming,
    )


def find_image_column(ds: Any, image_column: str | None = None) -> str:
    """The HR image column: `image_column` if given, else the only `Image` feature, else a column named "image"."""
    datasets = require("datasets", extra="train", what="bsr_hub training data")
    features = getattr(ds, "features", None) or {}
    names = list(features) or list(getattr(ds, "column_names", None) or [])
    if image_column is not None:
        if names and image_column not in names:
            raise ValueError(f"image column {image_column!r} not in the dataset's columns {names}")
        return image_column
    image_features = [k for k, v in features.items() if isinstance(v, datasets.Image)]
    if len(image_features) == 1:
        return image_features[0]
    if "image" in names:
        return "image"
    raise ValueError(
        f"cannot tell which column holds the HR images (image features {image_features}, columns {names}); "
        "pass image_column=..."
    )


def _undecoded(ds: Any, column: str) -> Any:
    """Read an `Image` column as bytes/path dicts, so that a corrupt file is skipped by us instead of raising
    inside the dataset's iterator."""
    datasets = require("datasets", extra="train", what="bsr_hub training data")
    features = getattr(ds, "features", None) or {}
    if isinstance(features.get(column), datasets.Image):
        return ds.cast_column(column, datasets.Image(decode=False))
    return ds


def _lr_row(row: dict[str, Any], image_column: str, scale: int, degradation: str, transparent: str) -> dict[str, Any]:
    """`Dataset.map` function: the LR (as a PIL image) of one row's HR, or the reason it has none."""
    try:
        rgb, reason = to_rgb_array(decode_image(row[image_column]), transparent)  # type: ignore[arg-type]
    except ValueError as err:
        rgb, reason = None, str(err)
    if rgb is None:
        return {LR_CACHE_COLUMN: None, SKIP_CACHE_COLUMN: reason}
    hr = modcrop(rgb, scale)
    if hr.shape[0] < scale or hr.shape[1] < scale:
        return {LR_CACHE_COLUMN: None, SKIP_CACHE_COLUMN: "smaller than the scale"}
    return {LR_CACHE_COLUMN: Image.fromarray(make_lr(hr, scale, degradation)), SKIP_CACHE_COLUMN: ""}


def add_lr_column(
    ds: Any, image_column: str, scale: int, degradation: str = "BI", transparent: Transparent = "skip"
) -> Any:
    """`ds` with the LR of every HR image in column `LR_CACHE_COLUMN`, computed once with `Dataset.map`.

    For a file-backed dataset (imagefolder, Hub) the result lands in the 🤗 datasets cache and a later call with the
    same arguments loads it instead of recomputing; for an in-memory dataset it is computed in memory; for an
    `IterableDataset` the map is lazy (once per image per pass over the stream).
    """
    datasets = require("datasets", extra="train", what="bsr_hub training data")
    ds = _undecoded(ds, image_column)
    features = getattr(ds, "features", None)
    kwargs: dict[str, Any] = {
        "fn_kwargs": {
            "image_column": image_column, "scale": scale, "degradation": degradation, "transparent": transparent
        }
    }
    if features is not None:
        new = features.copy()
        new[LR_CACHE_COLUMN] = datasets.Image()
        new[SKIP_CACHE_COLUMN] = datasets.Value("string")
        kwargs["features"] = new
    if isinstance(ds, datasets.Dataset):
        kwargs["desc"] = f"making x{scale} {degradation} LR images (once; cached)"
    return ds.map(_lr_row, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# The data section of a recipe
# ---------------------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Where training images come from and how their LR is made: the `data` section of a training recipe, and
    what the sampler reads its images with."""

    train_dir: list[str] | str | None = None
    """A folder of HR images (read with datasets' imagefolder), or several (a YAML list; on the command line
    several values or a repeated flag): the sampler draws from their union. None with no dataset_name: train.py
    trains on the photos bundled with the package."""
    dataset_name: str | None = None
    """A Hub dataset id with an image column (instead of train_dir)."""
    split: str = "train"
    """The split of dataset_name."""
    image_column: str | None = None
    """HR image column; None finds the only `Image` feature (or a column named "image")."""
    lr_column: str | None = None
    """Paired LR column (real-world pairs). Its images must be 1/scale of the HR (HR is cropped by < scale
    pixels to match); None makes LR from HR with `degradation`."""
    streaming: bool = False
    """Stream the source (data larger than the disk); the sampler then holds a pool of images at a time."""
    degradation: str = "BI"
    """How LR is made from HR when there is no LR column: "BI" (MATLAB bicubic) or "BD" (blur, decimate). In a
    training run also how validation and the final evaluation make theirs."""
    degradation_mix: DegradationMix | None = None
    """Train on inputs of unknown origin: each patch's LR made by a random resizer, noise and JPEG
    (`bsr_hub.data.resizers.DegradationMix`; a nested mapping in a recipe, a JSON object as a flag, {} for the
    defaults). None = the LR of `degradation`, as the published protocol. Positions are still chosen by the PIC of
    the clean LR."""
    transparent: Transparent = "skip"
    """Partly transparent RGBA images: "skip" (their hidden colours are arbitrary) or "drop_alpha"."""
    num_workers: int = 1
    """DataLoader processes drawing batches; the batch stream is the same for any number (exact resume)."""
    scale: int = 2
    """The LR/HR factor. In a training recipe it is the run's `scale`, set once at the top."""

    def __post_init__(self) -> None:
        if isinstance(self.scale, bool) or not isinstance(self.scale, int) or self.scale < 2:
            raise ValueError(f"DataConfig.scale must be an integer >= 2, got {self.scale!r}")
        if self.degradation not in DEGRADATIONS:
            raise ValueError(f"DataConfig.degradation must be one of {DEGRADATIONS}, got {self.degradation!r}")
        if self.transparent not in ("skip", "drop_alpha"):
            raise ValueError(f"DataConfig.transparent must be 'skip' or 'drop_alpha', got {self.transparent!r}")
        if isinstance(self.train_dir, (list, tuple)):
            folders = [os.fspath(d) if isinstance(d, os.PathLike) else d for d in self.train_dir]
            if not folders or not all(isinstance(d, str) and d for d in folders):
                raise ValueError(
                    f"data.train_dir must be a folder or a non-empty list of folders, got {self.train_dir!r}"
                )
            if len(set(folders)) != len(folders):
                raise ValueError(f"data.train_dir names a folder twice: {folders}")
            # One folder is kept as a string, so that a recipe, its record and the resume guard read as before.
            self.train_dir = folders[0] if len(folders) == 1 else folders
        elif isinstance(self.train_dir, os.PathLike):
            self.train_dir = os.fspath(self.train_dir)
        if self.train_dir is not None and self.dataset_name is not None:
            raise ValueError("give data.train_dir or data.dataset_name, not both")
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"DataConfig.num_workers must be an integer >= 0, got {self.num_workers!r}")
        if self.degradation_mix is not None:  # resizers imports torch: only when a mix is asked for
            from .resizers import DegradationMix

            self.degradation_mix = DegradationMix.from_value(self.degradation_mix)

    @property
    def train_dirs(self) -> list[str]:
        """The training folders, as a list (empty without train_dir)."""
        if self.train_dir is None:
            return []
        return [self.train_dir] if isinstance(self.train_dir, str) else list(self.train_dir)

    @property
    def uses_bundled_photos(self) -> bool:
        return self.train_dir is None and self.dataset_name is None


def prepare_rows(ds: Any, config: DataConfig, image_column: str) -> Any:
    """`ds` ready for `pair_from_row`: images undecoded (we decode and skip bad files), LR column or LR cache."""
    if config.lr_column is not None:
        names = list(getattr(ds, "features", None) or getattr(ds, "column_names", None) or [])
        if names and config.lr_column not in names:
            raise ValueError(f"LR column {config.lr_column!r} not in the dataset's columns {names}")
        return _undecoded(_undecoded(ds, image_column), config.lr_column)
    return add_lr_column(ds, image_column, config.scale, config.degradation, config.transparent)
