"""Where RFS patches come from: the indexed mode's bucketed positions and the draws of each mode.

`PositionIndex` holds every image's patch positions on a stride grid, bucketed by PIC interval (indexed
mode); `uniform_picks`, `indexed_picks` and `literal_picks` choose a batch's (image, y, x) LR patch positions
in each mode; `prescan` measures the natural PIC distribution. The sampler (`sampling.RFSSampler`) crops what
they pick.
"""

from __future__ import annotations

import numpy as np
import torch

from .pairs import ImagePairs
from .pic import dense_pic, pic
from .rfs_config import RFSConfig, interval_index


class PositionIndex:
    """Patch positions of every image on a stride grid, bucketed by PIC interval.

    Per bucket b: ``pos[b]`` holds local flat grid indices (int32) grouped by image, image j's run being
    ``pos[b][start[b][j]:start[b][j + 1]]``; ``cdf[b]`` is the cumulative weight count_j(b) / positions_j over
    images (a draw picks image j with that probability, then a uniform position of j in b).
    """

    def __init__(self, pairs: ImagePairs, edges: list[float], patch_size: int, stride: int):
        self.stride, self.patch_size = stride, patch_size
        k = len(edges)
        self.grid_width = np.empty(len(pairs), dtype=np.int64)
        per_image: list[tuple[np.ndarray, np.ndarray]] = []
        counts = np.zeros((k, len(pairs)), dtype=np.int64)
        for j, lr in enumerate(pairs.lr):
            t = torch.from_numpy(lr).permute(2, 0, 1)  # (3, h, w) uint8
            values = dense_pic(t, patch_size, stride).numpy()  # (ny, nx) float32
            self.grid_width[j] = values.shape[1]
            bucket = interval_index(edges, values.ravel())  # (ny * nx,)
            order = np.argsort(bucket, kind="stable").astype(np.int32)
            c = np.bincount(bucket, minlength=k)
            counts[:, j] = c
            per_image.append((order, np.concatenate([[0], np.cumsum(c)])))
        totals = counts.sum(axis=0)  # positions per image
        self.pos: list[np.ndarray] = []
        self.start: list[np.ndarray] = []
        self.cdf: list[np.ndarray] = []
        for b in range(k):
            self.pos.append(
                np.concatenate([order[bounds[b] : bounds[b + 1]] for order, bounds in per_image])
                if per_image else np.empty(0, np.int32)
            )
            self.start.append(np.concatenate([[0], np.cumsum(counts[b])]))
            self.cdf.append(np.cumsum(counts[b] / totals))
        self.bucket_sizes = counts.sum(axis=1)

    def draw(self, bucket: int, n: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
        """n (image, y, x) positions from a non-empty bucket."""
        cdf, start = self.cdf[bucket], self.start[bucket]
        images = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
        images = np.minimum(images, len(cdf) - 1)
        # A zero-weight image has an empty cdf step, which searchsorted(side="right") never lands on.
        first, count = start[images], start[images + 1] - start[images]
        flat = self.pos[bucket][first + (rng.random(n) * count).astype(np.int64)]
        width = self.grid_width[images]
        return [
            (int(j), int(f // w) * self.stride, int(f % w) * self.stride)
            for j, f, w in zip(images, flat, width)
        ]


def prescan(pairs: ImagePairs, n: int, patch_size: int, rng: np.random.Generator, chunk: int = 256) -> np.ndarray:
    """PIC of n random patches (random image, then random position): the natural distribution. (n,) float64."""
    values = []
    for first in range(0, n, chunk):
        picks = uniform_picks(pairs, min(chunk, n - first), patch_size, rng)
        values.append(_patch_pics(pairs, picks, patch_size))
    return np.concatenate(values).astype(np.float64)


def _patch_pics(pairs: ImagePairs, picks: list[tuple[int, int, int]], patch_size: int) -> np.ndarray:
    p = patch_size
    crops = np.stack([pairs.lr[j][y : y + p, x : x + p] for j, y, x in picks])  # (n, P, P, 3) uint8
    return pic(torch.from_numpy(crops).permute(0, 3, 1, 2)).numpy()  # (n,) float32


def _random_position(lr: np.ndarray, patch_size: int, rng: np.random.Generator) -> tuple[int, int]:
    h, w = lr.shape[:2]
    return int(rng.integers(h - patch_size + 1)), int(rng.integers(w - patch_size + 1))


def uniform_picks(pairs: ImagePairs, n: int, patch_size: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """n (image, y, x) plain random positions: random image, then random position (uniform mode)."""
    picks = []
    for j in rng.integers(len(pairs), size=n):
        picks.append((int(j), *_random_position(pairs.lr[j], patch_size, rng)))
    return picks


def indexed_picks(
    pairs: ImagePairs, index: PositionIndex, quotas: list[int], patch_size: int, rng: np.random.Generator
) -> tuple[list[tuple[int, int, int]], tuple[int, int, int]]:
    """K_i positions per interval from the index, without rejection; returns (picks, (attempts, 0, spills))."""
    picks: list[tuple[int, int, int]] = []
    spills = 0
    for b, k in enumerate(quotas):
        if k == 0:
            continue
        # An empty bucket (possible with explicit edges) spills down to the nearest non-empty lower one.
        source = next((c for c in range(b, -1, -1) if index.bucket_sizes[c] > 0), None)
        if source is None:
            picks += uniform_picks(pairs, k, patch_size, rng)
            spills += k
            continue
        picks += index.draw(source, k, rng)
        spills += k if source != b else 0
    return picks, (len(picks), 0, spills)


def literal_picks(
    pairs: ImagePairs, edges: list[float], quotas: list[int], cfg: RFSConfig, rng: np.random.Generator
) -> tuple[list[tuple[int, int, int]], tuple[int, int, int]]:
    """The paper's RFS with a crop budget; returns (picks, (attempts, redraws, spills))."""
    n, p, m = len(pairs), cfg.patch_size, cfg.num_candidates
    budget = cfg.attempt_budget
    filled = [0] * len(quotas)
    accepted: list[tuple[int, int, int]] = []
    rejected: list[list[tuple[int, int, int]]] = [[] for _ in quotas]  # spare patches for spill-down
    attempts = redraws = idle_passes = 0
    candidates = rng.choice(n, size=m, replace=m > n)
    while len(accepted) < cfg.batch_size and attempts < budget:
        batch_candidates = candidates[: budget - attempts]
        picks = [(int(j), *_random_position(pairs.lr[j], p, rng)) for j in batch_candidates]
        attempts += len(picks)
        bins = interval_index(edges, _patch_pics(pairs, picks, p))
        got = False
        for pick, b in zip(picks, bins):
            if filled[b] < quotas[b]:
                filled[b] += 1
                accepted.append(pick)
                got = True
            elif len(rejected[b]) < cfg.batch_size:
                rejected[b].append(pick)
        idle_passes = 0 if got else idle_passes + 1
        if idle_passes >= cfg.passes_before_redraw and len(accepted) < cfg.batch_size:
            candidates = rng.choice(n, size=m, replace=m > n)
            redraws += 1
            idle_passes = 0
    spills = 0
    for b, k in enumerate(quotas):
        for _ in range(k - filled[b]):
            donor = next((c for c in range(b - 1, -1, -1) if rejected[c]), None)
            accepted.append(rejected[donor].pop() if donor is not None else uniform_picks(pairs, 1, p, rng)[0])
            spills += 1
    return accepted, (attempts, redraws, spills)
