"""Random Filter Sampling (RFS): PIC-balanced training batches (docs/METHOD.md section 3).

Three modes, one `RFSSampler` (a `torch.utils.data.IterableDataset` of whole batches):

- ``literal``: the paper's algorithm. Choose M candidate images; crop one random patch per candidate per pass;
  accept a patch into its PIC interval i while V_i < K_i; stop when the batch of N is full. Bounded work [ours]:
  at most `max_attempts` crops per batch; after R passes without an acceptance, M new candidates; when the
  budget is spent, each unfilled slot of interval i takes a patch that was rejected from the nearest lower
  interval (rejected because that interval was already full), then, if there is none, any random patch.
  Attempts, redraws and spills are counted in every batch; the first shortfall raises an `RFSWarning`.
- ``indexed`` [ours]: the same target distribution without rejection. Every image's dense PIC on a stride grid
  (integral image, `bsr_hub.data.pic.dense_pic`) is bucketed by interval; K_i positions are drawn per interval, with
  each position weighted by 1 / (number of positions of its image), which is what literal mode's "random image,
  then random position, keep if in interval i" gives.
- ``uniform``: plain random crops (random image, random position), the "without RFS" ablation baseline.

Intervals [ours]: a pre-scan of `prescan_patches` random patches (seeded by the base seed only, so every
process and worker gets the same intervals) gives cap = the `cap_percentile` of PIC; the 16 intervals are evenly
spaced with lower bounds k * cap / 16, the last one open-ended; an interval whose pre-scan share is below
`merge_threshold` is merged into its lower neighbour. Quotas K_i are proportional to share_i ** tau (tau = 0:
fully balanced; tau = 1: the natural distribution) with largest-remainder rounding so they sum to N. Explicit
`edges` and `quotas` replace the pre-scan's; `sampler.to_dict()` returns a config with both filled in, which
reproduces the run.

Seeding and resume: batch number g of process `rank` is drawn from ``numpy.random.default_rng([seed, rank, g])``.
Data-loader worker w of W yields g = start + w, start + w + W, ...; `DataLoader` takes workers round-robin, so the
stream of batches is the same for any number of workers, never repeats across workers or ranks, and resuming a
run at step g is exact: build the sampler with ``start_batch=g`` (map-style sources; a stream restarts its pass).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .sources import DataConfig, ImagePairs, crop_pair, dihedral, iter_pools, stack_patches
from .resizers import DegradationMix
from .pic import dense_pic, pic

Mode = Literal["literal", "indexed", "uniform"]
MODES: tuple[str, ...] = ("literal", "indexed", "uniform")
_PRESCAN_STREAM = 0x5EED_9C  # second word of the pre-scan's seed, apart from every batch's [seed, rank, g]


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
        from ..core.typed import from_mapping

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


# ---------------------------------------------------------------------------------------------------------
# Indexed mode: bucketed dense PIC
# ---------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------
# The sampler
# ---------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _one_thread():
    """Run torch on one intra-op thread. The sampler's tensors are tiny, so a second thread never helps, and on a
    busy machine OpenMP's barrier makes each small op wait for a thread that has no core. DataLoader workers
    already run on one thread; this covers num_workers=0."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values, else torch.distributed if initialised, else RANK / WORLD_SIZE, else a single process."""
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            r, w = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            r, w = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        rank = r if rank is None else rank
        world_size = w if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank {rank}, world_size {world_size}")
    return rank, world_size


class RFSSampler(IterableDataset):
    """Whole training batches, PIC-balanced (or uniform): ``{"lr": (N, 3, P, P), "hr": (N, 3, sP, sP)}`` in [0, 1].

    Each batch also carries ``"pic"`` (N,) float32, ``"interval"`` (N,) int64 and ``"image"`` (N,) int64 (index
    of the source image in the pool) of its LR patches, and 0-d
    int64 counters ``"attempts"``, ``"redraws"``, ``"spills"`` (slots filled from another interval or at random)
    and ``"index"`` (the batch number g).

    Use with ``DataLoader(sampler, batch_size=None, num_workers=k)``. Build it after `Accelerator()` (or pass
    `rank`/`world_size`) so that each process draws its own batches; do not pass that DataLoader through
    `accelerator.prepare` (it would shard or dispatch a stream that is already per-process): move batches to
    `accelerator.device` yourself.

    Args:
        source: an `ImagePairs`, or anything `bsr_hub.data.sources.load_image_source` reads (folder, Hub id, Dataset,
            IterableDataset); a streaming source is read in pools of `config.pool_size` images.
        config: RFS settings. `config.scale` must match `data_config.scale` (it is copied there when that is None).
        data_config: how images are read and LR made (`bsr_hub.data.sources.DataConfig`). With its `degradation_mix`,
            each patch's LR is made from its HR with that random mix of resizers, noise and JPEG instead of taken
            from the pair's LR; positions are still chosen by the PIC of the pair's (clean) LR, and ``"pic"`` is
            that of the LR actually returned.
        rank, world_size: this process's place; None = from torch.distributed, else RANK / WORLD_SIZE, else 0 / 1.
        start_batch: first batch number (resume a run at this step).
        num_batches: stop after this many batches (per process); None = infinite.
    """

    def __init__(
        self,
        source: Any,
        config: RFSConfig | None = None,
        data_config: DataConfig | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        start_batch: int = 0,
        num_batches: int | None = None,
    ):
        super().__init__()
        self.config = config or RFSConfig()
        cfg = self.config
        if data_config is None:
            data_config = DataConfig(scale=cfg.scale)
        if data_config.scale != cfg.scale:
            raise ValueError(f"RFSConfig.scale is {cfg.scale} but DataConfig.scale is {data_config.scale}; make them equal")
        self.data_config = data_config
        self.rank, self.world_size = _resolve_rank(rank, world_size)
        if start_batch < 0 or (num_batches is not None and num_batches < 0):
            raise ValueError(f"start_batch and num_batches must be >= 0, got {start_batch}, {num_batches}")
        self.start_batch, self.num_batches = int(start_batch), num_batches
        self.degradation_mix: DegradationMix | None = data_config.degradation_mix
        self._warned = False

        self.source = source
        self.streaming = False
        if isinstance(source, ImagePairs):
            if source.scale != cfg.scale:
                raise ValueError(f"ImagePairs are x{source.scale} but RFSConfig.scale is {cfg.scale}")
            self.pairs: ImagePairs | None = source
        elif data_config.streaming or _is_iterable_dataset(source):
            self.streaming, self.pairs = True, None
        else:
            self.pairs = ImagePairs.from_source(source, data_config, min_lr_size=cfg.patch_size)
        if self.pairs is not None:
            _check_pairs(self.pairs, cfg.patch_size)
            scan_pairs = self.pairs
            self.skipped = Counter(self.pairs.skipped)
        else:
            # Pre-scan on the head of the unsplit, unshuffled stream: every rank and worker sees the same images.
            scan_pairs = next(iter_pools(source, data_config, cfg.patch_size, cfg.pool_size), None)
            if scan_pairs is None:
                raise ValueError(f"the stream {source!r} has no usable image at LR patch size {cfg.patch_size}")
            self.skipped = Counter(scan_pairs.skipped)

        # Intervals: the pre-scan always runs (it is also the "natural" distribution of the balance report).
        with _one_thread():
            self.prescan_values = prescan(scan_pairs, cfg.prescan_patches, cfg.patch_size,
                                          np.random.default_rng([cfg.seed, _PRESCAN_STREAM]))
        if cfg.edges is None:
            edges, shares, self.raw_edges, self.raw_shares = prescan_edges(
                self.prescan_values, cfg.num_intervals, cfg.cap_percentile, cfg.merge_threshold
            )
        else:
            edges = list(cfg.edges)
            counts = np.bincount(interval_index(edges, self.prescan_values), minlength=len(edges))
            shares = (counts / counts.sum()).tolist()
            self.raw_edges, self.raw_shares = list(edges), list(shares)
        self.edges: list[float] = edges
        self.prescan_shares: list[float] = shares
        self.quotas: list[int] = (
            list(cfg.quotas) if cfg.quotas is not None else balanced_quotas(shares, cfg.batch_size, cfg.tau)
        )
        if cfg.mode != "uniform" and 0 in self.quotas:
            zero = [i for i, k in enumerate(self.quotas) if k == 0]
            warnings.warn(
                f"RFS quotas {self.quotas}: intervals {zero} get no patches (batch_size {cfg.batch_size} is smaller "
                f"than the {len(self.quotas)} intervals, or tau/explicit quotas say so); raise batch_size or lower "
                "num_intervals if that is not intended",
                RFSWarning, stacklevel=2,
            )
        self.index: PositionIndex | None = None
        if cfg.mode == "indexed" and self.pairs is not None:
            with _one_thread():
                self.index = PositionIndex(self.pairs, self.edges, cfg.patch_size, cfg.index_stride)

    # ------------------------------------------------------------------ reproducibility

    def resolved_config(self) -> RFSConfig:
        """The config with the edges and quotas in use filled in: it reproduces this sampler's batches."""
        return dataclasses.replace(self.config, edges=tuple(self.edges), quotas=tuple(self.quotas))

    def to_dict(self) -> dict[str, Any]:
        """JSON-plain state for a training run's records: resolved config, data config, position, pre-scan."""
        return {
            "rfs": self.resolved_config().to_dict(),
            "data": dataclasses.asdict(self.data_config),
            "start_batch": self.start_batch,
            "degradation_mix": None if self.degradation_mix is None else self.degradation_mix.to_dict(),
            "prescan_shares": list(self.prescan_shares),
            "raw_edges": list(self.raw_edges),
            "raw_shares": list(self.raw_shares),
            "skipped": dict(self.skipped),
        }

    # ------------------------------------------------------------------ batches

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        """Batch number `index` of this rank (map-style sources): the same index always gives the same batch."""
        if self.pairs is None:
            raise RuntimeError("batch(index) needs a map-style source; a stream is read by iterating the sampler")
        with _one_thread():
            return self._draw(self.pairs, self.index, index)

    def __iter__(self):
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        end = None if self.num_batches is None else self.start_batch + self.num_batches
        g = self.start_batch + worker
        if not self.streaming:
            while end is None or g < end:
                yield self.batch(g)
                g += workers
            return
        cfg = self.config
        reader, readers = self.rank * workers + worker, self.world_size * workers
        epoch = 0
        while True:
            got_any = False
            # The same shuffle seed on every reader (split_dataset_by_node requires it), new every pass.
            for pool in iter_pools(self.source, self.data_config, cfg.patch_size, cfg.pool_size,
                                   rank=reader, world_size=readers, shuffle_seed=cfg.seed + epoch):
                got_any = True
                self.skipped.update(pool.skipped)
                index = PositionIndex(pool, self.edges, cfg.patch_size, cfg.index_stride) if cfg.mode == "indexed" else None
                for _ in range(cfg.batches_per_pool):
                    if end is not None and g >= end:
                        return
                    with _one_thread():
                        batch = self._draw(pool, index, g)
                    yield batch
                    g += workers
            if not got_any:
                raise RuntimeError(
                    f"stream reader {reader} of {readers} got no usable image (at LR patch size {cfg.patch_size}); "
                    "use fewer workers/processes or a larger stream"
                )
            epoch += 1

    def _draw(self, pairs: ImagePairs, index: PositionIndex | None, g: int) -> dict[str, torch.Tensor]:
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, self.rank, int(g)])
        if cfg.mode == "uniform":
            picks, counters = _uniform_picks(pairs, cfg.batch_size, cfg.patch_size, rng), (cfg.batch_size, 0, 0)
        elif cfg.mode == "indexed":
            assert index is not None
            picks, counters = _indexed_picks(pairs, index, self.quotas, cfg.patch_size, rng)
        else:
            picks, counters = _literal_picks(pairs, self.edges, self.quotas, cfg, rng)
        attempts, redraws, spills = counters
        if spills and not self._warned:
            self._warned = True
            warnings.warn(
                f"RFS ({cfg.mode}) could not fill every PIC interval of batch {g}: {spills} of {cfg.batch_size} "
                f"slots were filled from a lower interval or with random patches after {attempts} attempts "
                f"(quotas {self.quotas}). The dataset lacks patches of that PIC: lower tau, raise max_attempts, or "
                "use pre-scan edges. Further shortfalls are only counted (batch['spills']).",
                RFSWarning, stacklevel=2,
            )
        lr_patches, hr_patches = [], []
        s, p = cfg.scale, cfg.patch_size
        for j, y, x in picks:
            lr, hr = crop_pair(pairs.hr[j], pairs.lr[j], y, x, p, s)
            if self.degradation_mix is not None:
                lr = self.degradation_mix.lr_patch(pairs.hr[j], y, x, p, s, rng)  # (P, P, 3), drawn per patch
            if cfg.augment:
                k = int(rng.integers(8))
                lr, hr = dihedral(lr, k), dihedral(hr, k)
            lr_patches.append(lr)
            hr_patches.append(hr)
        lr_u8 = stack_patches(lr_patches)  # (N, 3, P, P) uint8
        pics = pic(lr_u8)  # (N,); the 8 flips/rotations leave PIC unchanged
        return {
            "lr": lr_u8.float().div_(255.0),  # (N, 3, P, P) in [0, 1]
            "hr": stack_patches(hr_patches).float().div_(255.0),  # (N, 3, sP, sP)
            "pic": pics,
            "interval": torch.from_numpy(interval_index(self.edges, pics.numpy())),
            "image": torch.tensor([j for j, _, _ in picks], dtype=torch.int64),  # (N,) source image of each patch
            "attempts": torch.tensor(attempts),
            "redraws": torch.tensor(redraws),
            "spills": torch.tensor(spills),
            "index": torch.tensor(int(g)),
        }


def _is_iterable_dataset(source: Any) -> bool:
    try:
        import datasets
    except ImportError:
        return False
    return isinstance(source, datasets.IterableDataset)


def _check_pairs(pairs: ImagePairs, patch_size: int) -> None:
    if len(pairs) == 0:
        raise ValueError("no training images (the ImagePairs are empty)")
    small = [i for i, lr in enumerate(pairs.lr) if lr.shape[0] < patch_size or lr.shape[1] < patch_size]
    if small:
        raise ValueError(f"ImagePairs {small[:5]}... have an LR side smaller than patch_size {patch_size}")


def prescan(pairs: ImagePairs, n: int, patch_size: int, rng: np.random.Generator, chunk: int = 256) -> np.ndarray:
    """PIC of n random patches (random image, then random position): the natural distribution. (n,) float64."""
    values = []
    for first in range(0, n, chunk):
        picks = _uniform_picks(pairs, min(chunk, n - first), patch_size, rng)
        values.append(_patch_pics(pairs, picks, patch_size))
    return np.concatenate(values).astype(np.float64)


def _patch_pics(pairs: ImagePairs, picks: list[tuple[int, int, int]], patch_size: int) -> np.ndarray:
    p = patch_size
    crops = np.stack([pairs.lr[j][y : y + p, x : x + p] for j, y, x in picks])  # (n, P, P, 3) uint8
    return pic(torch.from_numpy(crops).permute(0, 3, 1, 2)).numpy()  # (n,) float32


def _random_position(lr: np.ndarray, patch_size: int, rng: np.random.Generator) -> tuple[int, int]:
    h, w = lr.shape[:2]
    return int(rng.integers(h - patch_size + 1)), int(rng.integers(w - patch_size + 1))


def _uniform_picks(pairs: ImagePairs, n: int, patch_size: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    picks = []
    for j in rng.integers(len(pairs), size=n):
        picks.append((int(j), *_random_position(pairs.lr[j], patch_size, rng)))
    return picks


def _indexed_picks(
    pairs: ImagePairs, index: PositionIndex, quotas: list[int], patch_size: int, rng: np.random.Generator
) -> tuple[list[tuple[int, int, int]], tuple[int, int, int]]:
    picks: list[tuple[int, int, int]] = []
    spills = 0
    for b, k in enumerate(quotas):
        if k == 0:
            continue
        # An empty bucket (possible with explicit edges) spills down to the nearest non-empty lower one.
        source = next((c for c in range(b, -1, -1) if index.bucket_sizes[c] > 0), None)
        if source is None:
            picks += _uniform_picks(pairs, k, patch_size, rng)
            spills += k
            continue
        picks += index.draw(source, k, rng)
        spills += k if source != b else 0
    return picks, (len(picks), 0, spills)


def _literal_picks(
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
            accepted.append(rejected[donor].pop() if donor is not None else _uniform_picks(pairs, 1, p, rng)[0])
            spills += 1
    return accepted, (attempts, redraws, spills)
