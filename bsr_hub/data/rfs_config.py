"""Random Filter Sampling settings (`RFSConfig`) and the PIC intervals and quotas they resolve to.

What a batch must hold: the interval lower bounds from a pre-scan (evenly spaced up to a cap, sparse
intervals merged), and the per-interval quotas K_i (share_i ** tau, largest-remainder rounding). Pure numpy:
no images, no torch. How the sampler uses them is in `sampling`'s docstring (docs/METHOD.md section 3).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Mode = Literal["literal", "indexed", "uniform"]
MODES: tuple[str, ...] = ("literal", "indexed", "uniform")


class RFSWarning(UserWarning):
    """RFS could not do what was asked (intervals left unfilled, degenerate pre-scan, zero quotas)."""


@dataclass
class RFSConfig:
    """Random Filter Sampling settings. [paper] and [ours] as in docs/METHOD.md section 3."""

    mode: Mode = "indexed"
    """"indexed" (fast, no rejection; the default for training), "literal" (the paper's algorithm, for fidelity
    runs) or "uniform" (plain random crops: the "without RFS" ablation)."""
    patch_size: int = 48
    """LR patch side P [paper: 48 at x2, 60 at x4]; HR patches are scale * P. PIC is computed on LR patches."""
    scale: int = 2
    batch_size: int = 16
    """N, patches per batch."""
    num_candidates: int = 16
    """M, candidate images per batch in literal mode [ours: M = N, so a batch draws on as many images as a
    uniform batch does]."""
    num_intervals: int = 16
    """PIC intervals before merging [paper: 16 evenly spaced]."""
    cap_percentile: float = 99.5
    """The intervals span 0 .. this percentile of the pre-scan's PIC, the last one open-ended [ours]. Quantile
    edges would be wrong: uniform sampling would already look balanced."""
    prescan_patches: int = 4096
    """Random patches measured to place the intervals and their natural shares [ours]."""
    merge_threshold: float = 0.005
    """Intervals whose pre-scan share is below this are merged into their lower neighbour [ours: 0.5%], so that
    no quota asks for patches that hardly exist."""
    tau: float = 0.0
    """Quota temper: K_i proportional to share_i ** tau. 0 = fully balanced [paper's intent]; 1 = natural."""
    max_attempts: int | None = None
    """Crop budget per batch in literal mode; None = 64 * batch_size [ours]. Bounded work: never hang."""
    passes_before_redraw: int = 4
    """R: passes over the M candidates without an acceptance before drawing M new images [ours]."""
    edges: tuple[float, ...] | None = None
    """Explicit interval lower bounds (first 0, increasing, last interval open-ended); None = from the pre-scan."""
    quotas: tuple[int, ...] | None = None
    """Explicit per-interval quotas summing to batch_size; None = from the shares and tau."""
    index_stride: int = 4
    """Indexed mode: grid step of the indexed patch positions [ours]. 4 bytes per position, positions ~ LR pixels
    / stride^2 (DIV2K x2 at stride 4: about 140 MB); neighbours 4 px apart have nearly the same PIC."""
    augment: bool = True
    """Apply a random one of the 8 flips/rotations to each accepted LR/HR pair [paper: rotations]."""
    seed: int = 0
    pool_size: int = 256
    """Streaming sources only: images held in memory at a time (one pool)."""
    batches_per_pool: int = 64
    """Streaming sources only: batches drawn from a pool before the next pool is read."""

    def __post_init__(self) -> None:
        if self.edges is not None:
            self.edges = tuple(float(e) for e in self.edges)  # JSON gives lists
        if self.quotas is not None:
            self.quotas = tuple(self.quotas)
        if self.mode not in MODES:
            raise ValueError(f"RFSConfig.mode must be one of {MODES}, got {self.mode!r}")
        for name, low in (
            ("patch_size", 3), ("scale", 2), ("batch_size", 1), ("num_candidates", 1), ("num_intervals", 1),
            ("prescan_patches", 16), ("passes_before_redraw", 1), ("index_stride", 1), ("pool_size", 1),
            ("batches_per_pool", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"RFSConfig.{name} must be an integer >= {low}, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"RFSConfig.seed must be a non-negative integer, got {self.seed!r}")
        if self.max_attempts is not None and (
            isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int)
            or self.max_attempts < self.batch_size
        ):
            raise ValueError(
                f"RFSConfig.max_attempts must be None or an integer >= batch_size ({self.batch_size}), "
                f"got {self.max_attempts!r}"
            )
        if not 0.0 < self.cap_percentile <= 100.0:
            raise ValueError(f"RFSConfig.cap_percentile must be in (0, 100], got {self.cap_percentile!r}")
        if not 0.0 <= self.merge_threshold < 1.0:
            raise ValueError(f"RFSConfig.merge_threshold must be in [0, 1), got {self.merge_threshold!r}")
        if not (math.isfinite(self.tau) and self.tau >= 0):
            raise ValueError(f"RFSConfig.tau must be >= 0 (0 = balanced, 1 = natural), got {self.tau!r}")
        if self.edges is not None:
            e = self.edges
            if len(e) == 0 or e[0] != 0.0 or any(not math.isfinite(v) for v in e) or any(
                b <= a for a, b in itertools.pairwise(e)
            ):
                raise ValueError(
                    f"RFSConfig.edges must be strictly increasing finite lower bounds starting at 0.0, got {e}"
                )
        if self.quotas is not None:
            q = self.quotas
            if any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in q):
                raise ValueError(f"RFSConfig.quotas must be non-negative integers, got {q}")
            if sum(q) != self.batch_size:
                raise ValueError(f"RFSConfig.quotas sum to {sum(q)}; they must sum to batch_size {self.batch_size}")
            if self.edges is None:
                raise ValueError("RFSConfig.quotas need explicit edges too (the pre-scan may merge intervals)")
            if len(q) != len(self.edges):
                raise ValueError(f"RFSConfig has {len(self.edges)} edges but {len(q)} quotas; give one per interval")

    @property
    def attempt_budget(self) -> int:
        return self.max_attempts if self.max_attempts is not None else 64 * self.batch_size

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("edges", "quotas"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RFSConfig:
        from ..core import from_mapping

        return from_mapping(cls, data, "RFSConfig")


# ---------------------------------------------------------------------------------------------------------
# Intervals and quotas
# ---------------------------------------------------------------------------------------------------------


def interval_index(edges: np.ndarray | list[float], values: Any) -> np.ndarray:
    """Interval of each PIC value: i such that edges[i] <= v < edges[i + 1] (the last interval open-ended)."""
    v = np.asarray(values, dtype=np.float64)
    return np.clip(np.searchsorted(np.asarray(edges, dtype=np.float64), v, side="right") - 1, 0, None)


def prescan_edges(
    values: np.ndarray, num_intervals: int = 16, cap_percentile: float = 99.5, merge_threshold: float = 0.005
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Interval lower bounds from pre-scan PIC values, with sparse intervals merged.

    Returns:
        (edges, shares, raw_edges, raw_shares): the merged lower bounds and the share of the pre-scan in each,
        and the same before merging (``raw_edges[k] = k * cap / num_intervals``).
    """
    values = np.asarray(values, dtype=np.float64)
    cap = float(np.percentile(values, cap_percentile))
    if not cap > 0.0:
        warnings.warn(
            f"RFS pre-scan: the {cap_percentile} percentile of PIC over {values.size} random patches is {cap}: the "
            "images are flat, so there is a single interval and RFS is plain random cropping",
            RFSWarning, stacklevel=3,
        )
        return [0.0], [1.0], [0.0], [1.0]
    raw_edges = [k * cap / num_intervals for k in range(num_intervals)]
    counts = np.bincount(interval_index(raw_edges, values), minlength=num_intervals)
    raw_shares = (counts / values.size).tolist()
    edges, shares = list(raw_edges), list(raw_shares)
    # From the top down, so sparse top intervals pile into the first one below them with enough mass.
    for i in range(len(edges) - 1, 0, -1):
        if shares[i] < merge_threshold:
            shares[i - 1] += shares.pop(i)
            edges.pop(i)
    if len(edges) > 1 and shares[0] < merge_threshold:  # no lower neighbour: merge upwards
        shares[0:2] = [shares[0] + shares[1]]  # the merged interval starts where the lowest one did
        edges.pop(1)
    if len(edges) == 1:
        # Noise-like images: PIC so concentrated that every other interval is nearly empty.
        warnings.warn(
            f"RFS pre-scan: PIC over {values.size} random patches is concentrated in a range too narrow for "
            f"intervals (all but one hold under {merge_threshold:.1%} of patches): there is a single interval and "
            "RFS is plain random cropping",
            RFSWarning, stacklevel=3,
        )
    return edges, shares, raw_edges, raw_shares


def balanced_quotas(shares: list[float], batch_size: int, tau: float = 0.0) -> list[int]:
    """K_i proportional to share_i ** tau, rounded by largest remainder (ties to the lower interval) to sum to N."""
    s = np.asarray(shares, dtype=np.float64)
    w = np.where(s > 0, s, 0.0) ** tau if tau > 0 else np.ones_like(s)
    if w.sum() <= 0:
        raise ValueError(f"cannot set quotas: every interval has a pre-scan share of 0 ({shares})")
    exact = batch_size * w / w.sum()
    quotas = np.floor(exact).astype(int)
    remainder = exact - quotas
    order = sorted(range(len(s)), key=lambda i: (-remainder[i], i))
    for i in order[: batch_size - int(quotas.sum())]:
        quotas[i] += 1
    return quotas.tolist()
