"""HR/LR training pairs in memory (`ImagePairs`, and pools of them from a stream), their aligned crops and the
8 flips/rotations.

Rows come from `sources` (a folder, a Hub dataset, a `datasets` object, with the LR made once); each usable
row becomes an (HR, LR) pair of uint8 arrays whose LR patch at (y, x) covers the HR patch at (scale * y,
scale * x). What cannot be used is counted by reason in `ImagePairs.skipped`. The sampler (`sampling`) crops
these pairs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core import require
from .degradations import modcrop
from .sources import (
    LR_CACHE_COLUMN,
    SKIP_CACHE_COLUMN,
    DataConfig,
    decode_image,
    find_image_column,
    load_image_source,
    make_lr,
    prepare_rows,
    to_rgb_array,
)


@dataclass
class ImagePairs:
    """HR/LR training pairs held in memory as uint8 arrays.

    ``hr[i]`` is (scale * h_i, scale * w_i, 3) and ``lr[i]`` is (h_i, w_i, 3), with h_i, w_i >= `min_lr_size`, so
    that the LR patch at (y, x) and the HR patch at (scale * y, scale * x) cover the same region.
    """

    hr: list[np.ndarray]
    lr: list[np.ndarray]
    scale: int
    skipped: Counter = field(default_factory=Counter)
    """Images left out, by reason (never an error: a training run must not crash on one odd file)."""

    def __len__(self) -> int:
        return len(self.hr)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    @classmethod
    def from_rows(
        cls, rows: Iterable[dict[str, Any]], config: DataConfig, image_column: str, min_lr_size: int,
        limit: int | None = None,
    ) -> ImagePairs:
        """Pairs from rows that carry the HR image and either `config.lr_column` or the `add_lr_column` cache."""
        pairs = cls(hr=[], lr=[], scale=config.scale)
        for row in rows:
            pair, reason = pair_from_row(row, config, image_column, min_lr_size)
            if pair is None:
                pairs.skipped[reason] += 1
            else:
                pairs.hr.append(pair[0])
                pairs.lr.append(pair[1])
                if limit is not None and len(pairs) >= limit:
                    break
        return pairs

    @classmethod
    def from_source(
        cls, source: Any, config: DataConfig | None = None, min_lr_size: int = 48, **config_overrides: Any
    ) -> ImagePairs:
        """All usable pairs of a map-style source, in memory (LR made once, through the `Dataset.map` cache).

        Args:
            source: see `load_image_source` (a streaming source is refused: use `iter_pools`).
            config: data options; keyword overrides are applied on top (e.g. ``scale=4``).
            min_lr_size: images whose LR height or width is below this (the LR patch size) are skipped.
        """
        datasets = require("datasets", extra="train", what="bsr_hub training data")
        config = _with_overrides(config, config_overrides)
        ds = load_image_source(source, split=config.split, streaming=config.streaming)
        if isinstance(ds, datasets.IterableDataset):
            raise ValueError(  # a valid type, but the wrong kind of source for this constructor
                "ImagePairs.from_source needs a map-style dataset; a stream is read with iter_pools"
            )
        column = find_image_column(ds, config.image_column)
        ds = prepare_rows(ds, config, column)
        pairs = cls.from_rows(ds, config, column, min_lr_size)
        if len(pairs) == 0:
            raise ValueError(
                f"no usable training image in {source!r} at LR patch size {min_lr_size} (skipped: "
                f"{dict(pairs.skipped) or 'none; the source is empty'})"
            )
        return pairs


def _with_overrides(config: DataConfig | None, overrides: dict[str, Any]) -> DataConfig:
    from dataclasses import replace

    config = config or DataConfig()
    return replace(config, **overrides) if overrides else config


def pair_from_row(
    row: dict[str, Any], config: DataConfig, image_column: str, min_lr_size: int
) -> tuple[tuple[np.ndarray, np.ndarray] | None, str]:
    """((hr, lr), "") for a usable row, or (None, reason)."""
    s = config.scale
    if config.lr_column is None and row.get(SKIP_CACHE_COLUMN):
        return None, row[SKIP_CACHE_COLUMN]
    try:
        hr, reason = to_rgb_array(decode_image(row[image_column]), config.transparent)
        if hr is None:
            return None, reason
        lr_value = row[config.lr_column] if config.lr_column is not None else row.get(LR_CACHE_COLUMN)
        if lr_value is None:
            if config.lr_column is not None:
                return None, "missing LR image"
            lr = make_lr(modcrop(hr, s), s, config.degradation)  # a row that did not go through add_lr_column
        else:
            lr, reason = to_rgb_array(decode_image(lr_value), config.transparent)
            if lr is None:
                return None, f"LR {reason}"
    except ValueError as err:
        return None, str(err)
    h, w = lr.shape[:2]
    if hr.shape[0] - s * h not in range(s) or hr.shape[1] - s * w not in range(s):
        return None, "LR/HR sizes do not match the scale"
    if h < min_lr_size or w < min_lr_size:
        return None, "smaller than the patch"
    return (np.ascontiguousarray(hr[: s * h, : s * w]), lr), ""


def iter_pools(
    source: Any, config: DataConfig, min_lr_size: int, pool_size: int, rank: int = 0, world_size: int = 1,
    shuffle_seed: int | None = None,
) -> Iterator[ImagePairs]:
    """Successive pools of `pool_size` pairs from a stream (or any source read as one), for data that does not
    fit in memory. The stream is split between `world_size` readers (`split_dataset_by_node`), so that processes
    and data-loader workers read different images. Ends when the stream ends (the caller starts a new pass).

    Args:
        shuffle_seed: shuffle the stream (shard order and a buffer of examples) with this seed; None keeps its order.
    """
    datasets = require("datasets", extra="train", what="bsr_hub training data")
    ds = load_image_source(source, split=config.split, streaming=True)
    column = find_image_column(ds, config.image_column)
    if shuffle_seed is not None and isinstance(ds, datasets.IterableDataset):
        ds = ds.shuffle(seed=shuffle_seed, buffer_size=max(pool_size, 64))
    if world_size > 1:
        from datasets.distributed import split_dataset_by_node

        ds = split_dataset_by_node(ds, rank=rank, world_size=world_size)
    ds = prepare_rows(ds, config, column)
    rows = iter(ds)
    skipped: Counter = Counter()
    while True:
        pool = ImagePairs.from_rows(rows, config, column, min_lr_size, limit=pool_size)
        pool.skipped.update(skipped)
        skipped = Counter()
        if len(pool) == 0:
            return
        yield pool


# ---------------------------------------------------------------------------------------------------------
# Patches: aligned crops, augmentation
# ---------------------------------------------------------------------------------------------------------


def crop_pair(
    hr: np.ndarray, lr: np.ndarray, y: int, x: int, patch_size: int, scale: int
) -> tuple[np.ndarray, np.ndarray]:
    """The LR patch at (y, x) and the HR patch covering the same region: (P, P, 3) and (sP, sP, 3) views."""
    s, p = scale, patch_size
    return lr[y : y + p, x : x + p], hr[s * y : s * (y + p), s * x : s * (x + p)]


def dihedral(image: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/rotations of an (H, W, C) array: rotate by 90 * (k % 4) degrees, then mirror if k >= 4."""
    out = np.rot90(image, k % 4, axes=(0, 1))
    return out[:, ::-1] if k >= 4 else out


def stack_patches(patches: list[np.ndarray]) -> Any:
    """A list of (h, w, 3) uint8 arrays -> a contiguous (N, 3, h, w) uint8 tensor (``.float() / 255`` for [0, 1])."""
    import torch

    return torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2).contiguous()  # (N, h, w, 3) -> (N, 3, h, w)
