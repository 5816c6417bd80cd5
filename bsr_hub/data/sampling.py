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
import os
import warnings
from collections import Counter
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .pairs import ImagePairs, crop_pair, dihedral, iter_pools, stack_patches
from .pic import pic
from .resizers import DegradationMix
from .rfs_config import RFSConfig, RFSWarning, balanced_quotas, interval_index, prescan_edges
from .rfs_picks import PositionIndex, indexed_picks, literal_picks, prescan, uniform_picks
from .sources import DataConfig

_PRESCAN_STREAM = 0x5EED_9C  # second word of the pre-scan's seed, apart from every batch's [seed, rank, g]


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
            picks, counters = uniform_picks(pairs, cfg.batch_size, cfg.patch_size, rng), (cfg.batch_size, 0, 0)
        elif cfg.mode == "indexed":
            assert index is not None
            picks, counters = indexed_picks(pairs, index, self.quotas, cfg.patch_size, rng)
        else:
            picks, counters = literal_picks(pairs, self.edges, self.quotas, cfg, rng)
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

