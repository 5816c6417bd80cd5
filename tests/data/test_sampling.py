"""Random Filter Sampling (docs/METHOD.md section 3): intervals, quotas, the three modes, seeding, workers, ranks."""

import math
import time
import warnings

import numpy as np
import pytest
import torch
from rfs_synthetic import SHARED_DATA, synthetic_pairs
from torch.utils.data import DataLoader

from bsr_hub.data.pairs import ImagePairs
from bsr_hub.data.pic import pic
from bsr_hub.data.rfs_config import (
    RFSConfig,
    RFSWarning,
    balanced_quotas,
    interval_index,
    prescan_edges,
)
from bsr_hub.data.sampling import RFSSampler

P, N = 16, 16


def cfg(**kw) -> RFSConfig:
    base = {"patch_size": P, "batch_size": N, "prescan_patches": 1024, "index_stride": 2}
    return RFSConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def pairs() -> ImagePairs:
    return synthetic_pairs(n=10)


def counts_by_recomputed_pic(batch, edges) -> np.ndarray:
    """Interval counts from the emitted LR patches themselves, not from the sampler's bookkeeping."""
    values = pic(torch.round(batch["lr"] * 255.0))
    return np.bincount(interval_index(edges, values.numpy()), minlength=len(edges))


# ---------------------------------------------------------------------------------------------------------
# Intervals and quotas
# ---------------------------------------------------------------------------------------------------------


def test_prescan_edges_evenly_spaced_to_the_cap_then_merged():
    rng = np.random.default_rng(0)
    values = rng.exponential(20.0, size=20000)  # long tail: the top intervals are sparse
    edges, shares, raw_edges, raw_shares = prescan_edges(values, 16, 99.5, 0.005)
    cap = np.percentile(values, 99.5)
    np.testing.assert_allclose(raw_edges, np.arange(16) * cap / 16)
    assert math.isclose(sum(shares), 1.0) and math.isclose(sum(raw_shares), 1.0)
    assert all(s >= 0.005 for s in shares), shares
    assert len(edges) < 16 and edges[0] == 0.0 and set(edges) <= set(raw_edges)
    # Each merged interval's share is the sum of the raw shares it covers.
    bins = interval_index(edges, raw_edges)
    np.testing.assert_allclose(np.bincount(bins, weights=raw_shares), shares)


def test_prescan_of_flat_images_gives_one_interval_with_a_warning():
    with pytest.warns(RFSWarning, match="flat"):
        edges, shares, _, _ = prescan_edges(np.zeros(100))
    assert edges == [0.0] and shares == [1.0]


def test_prescan_with_a_sparse_lowest_interval_merges_it_upwards():
    # 0.2 % of patches near 0, the rest spread high: the lowest interval joins the one above it.
    rng = np.random.default_rng(0)
    values = np.r_[np.full(20, 1.0), rng.uniform(40.0, 100.0, 9980)]
    edges, shares, raw_edges, raw_shares = prescan_edges(values, 16, 99.5, 0.005)
    assert edges[0] == 0.0 and len(edges) > 2
    assert all(s >= 0.005 for s in shares), shares
    counts = np.bincount(interval_index(edges, values), minlength=len(edges))
    np.testing.assert_allclose(shares, counts / values.size)  # each share is its interval's, none lost


def test_prescan_of_noise_like_images_gives_one_interval_with_a_warning():
    # All PIC in the top raw interval (what random-noise images give): everything else merges away.
    values = np.random.default_rng(0).uniform(95.0, 100.0, 1000)
    with pytest.warns(RFSWarning, match="too narrow for intervals"):
        edges, shares, _, _ = prescan_edges(values, 16, 99.5, 0.005)
    assert edges == [0.0] and shares == [1.0]


def test_pic_stats_on_random_noise_images_reports_instead_of_crashing(tmp_path, capsys):
    from PIL import Image

    from bsr_hub.commands.main import main

    for i in range(3):  # at x4 their LR patches' PIC is one narrow peak (this crashed with an IndexError)
        noise = np.random.default_rng(i).integers(0, 256, (300, 300, 3), dtype=np.uint8)
        Image.fromarray(noise).save(tmp_path / f"{i}.png")
    args = ["pic-stats", str(tmp_path), "--scale", "4", "--patch", "48", "--batches", "2", "--batch-size", "4"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "0.0    1.000    1.000      4" in captured.out  # one interval: natural = sampled = everything
    assert "too narrow for intervals" in captured.err and "plain random cropping" in captured.err


def test_quotas_largest_remainder_and_tau():
    shares = [0.5, 0.3, 0.15, 0.05]
    assert balanced_quotas(shares, 16, tau=0) == [4, 4, 4, 4]
    assert balanced_quotas(shares, 10, tau=0) == [3, 3, 2, 2]  # ties go to the lower interval
    q = balanced_quotas(shares, 16, tau=1)  # exact 8, 4.8, 2.4, 0.8 -> 8, 4, 2, 0 + remainders .8, .8, .4
    assert q == [8, 5, 2, 1] and sum(q) == 16
    q_half = balanced_quotas(shares, 16, tau=0.5)
    assert sum(q_half) == 16 and q_half[0] > q_half[-1] and q_half[-1] > q[-1]


def test_config_validation_says_what_to_change():
    with pytest.raises(ValueError, match="mode"):
        RFSConfig(mode="balanced")
    with pytest.raises(ValueError, match="sum to batch_size"):
        RFSConfig(edges=(0.0, 10.0), quotas=(8, 7))
    with pytest.raises(ValueError, match="explicit edges"):
        RFSConfig(quotas=(16,))
    with pytest.raises(ValueError, match="increasing"):
        RFSConfig(edges=(0.0, 5.0, 5.0))
    with pytest.raises(ValueError, match="starting at 0.0"):
        RFSConfig(edges=(1.0, 5.0))
    with pytest.raises(ValueError, match="max_attempts"):
        RFSConfig(max_attempts=3)
    with pytest.raises(ValueError, match="tau"):
        RFSConfig(tau=-1)
    with pytest.raises(ValueError, match="unknown"):
        RFSConfig.from_dict({"patch": 48})
    assert RFSConfig().attempt_budget == 64 * 16


# ---------------------------------------------------------------------------------------------------------
# Quotas met
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["indexed", "literal"])
def test_quotas_met_exactly_on_synthetic_images(pairs, mode):
    sampler = RFSSampler(pairs, cfg(mode=mode))
    assert len(sampler.edges) >= 8 and sum(sampler.quotas) == N
    for g in range(12):
        b = sampler.batch(g)
        assert b["lr"].shape == (N, 3, P, P) and b["hr"].shape == (N, 3, 2 * P, 2 * P)
        assert b["lr"].dtype == torch.float32 and 0 <= b["lr"].min() and b["lr"].max() <= 1
        assert int(b["spills"]) == 0
        assert counts_by_recomputed_pic(b, sampler.edges).tolist() == sampler.quotas


def test_quotas_met_exactly_on_real_data():
    folder = SHARED_DATA / "train" / "T91"
    if not folder.is_dir():
        pytest.skip(f"real training images not found at {folder} (../shared/data beside the checkout)")
    real = ImagePairs.from_source(folder, min_lr_size=48)
    assert len(real) >= 80
    indexed = RFSSampler(real, RFSConfig(mode="indexed"))
    assert len(indexed.edges) >= 10  # 16 minus the merged sparse intervals
    for g in range(10):
        assert counts_by_recomputed_pic(indexed.batch(g), indexed.edges).tolist() == indexed.quotas
    literal = RFSSampler(real, RFSConfig(mode="literal"))
    assert literal.edges == indexed.edges  # the pre-scan depends on the seed only
    spilled = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RFSWarning)
        for g in range(10):
            b = literal.batch(g)
            spilled += int(b["spills"])
            if int(b["spills"]) == 0:
                assert counts_by_recomputed_pic(b, literal.edges).tolist() == literal.quotas
            assert int(b["attempts"]) <= 64 * 16
    assert spilled <= 0.02 * 10 * 16  # measured: 2 of 800 slots over 50 batches


def test_tau_one_follows_the_natural_shares(pairs):
    with pytest.warns(RFSWarning, match="get no patches"):  # 16 slots for 15 intervals, one of them small
        sampler = RFSSampler(pairs, cfg(tau=1.0))
    assert sampler.quotas == balanced_quotas(sampler.prescan_shares, N, 1.0)


# ---------------------------------------------------------------------------------------------------------
# Bounded work
# ---------------------------------------------------------------------------------------------------------


def flat_pairs(n: int = 4) -> ImagePairs:
    hr = [np.full((64, 64, 3), 90 + 10 * i, np.uint8) for i in range(n)]
    return ImagePairs(hr=hr, lr=[h[::2, ::2].copy() for h in hr], scale=2)


def test_flat_dataset_with_balanced_edges_finishes_with_a_warning():
    edges = tuple(float(e) for e in np.linspace(0, 150, 16, endpoint=False))
    sampler = RFSSampler(flat_pairs(), cfg(mode="literal", edges=edges, quotas=(1,) * 16))
    start = time.perf_counter()
    with pytest.warns(RFSWarning, match="could not fill"):
        batches = [sampler.batch(g) for g in range(3)]
    assert time.perf_counter() - start < 20  # bounded: about 1024 crops per batch
    for b in batches:
        assert b["lr"].shape == (N, 3, P, P)
        assert int(b["attempts"]) == 64 * N
        assert int(b["spills"]) == 15  # interval 0 is filled; the 15 others spill down to it
        assert int(b["redraws"]) > 0
        assert torch.all(b["pic"] == 0)


def test_flat_dataset_indexed_spills_and_prescan_degenerates():
    edges = tuple(float(e) for e in np.linspace(0, 150, 16, endpoint=False))
    with pytest.warns(RFSWarning, match="could not fill"):
        b = RFSSampler(flat_pairs(), cfg(edges=edges, quotas=(1,) * 16)).batch(0)
    assert int(b["spills"]) == 15
    with pytest.warns(RFSWarning, match="flat"):
        sampler = RFSSampler(flat_pairs(), cfg(mode="literal"))
    assert sampler.edges == [0.0] and sampler.quotas == [N]
    assert int(sampler.batch(0)["spills"]) == 0


def test_literal_spills_down_to_the_nearest_lower_interval(pairs):
    # An interval above everything the data has: its slots go to the highest interval that has spare patches.
    median = float(np.median(RFSSampler(pairs, cfg(mode="uniform")).prescan_values))
    edges = (0.0, median, 5000.0)
    sampler = RFSSampler(pairs, cfg(mode="literal", edges=edges, quotas=(4, 8, 4), max_attempts=200))
    with pytest.warns(RFSWarning):
        b = sampler.batch(0)
    assert int(b["spills"]) == 4 and int(b["attempts"]) == 200
    assert np.bincount(b["interval"].numpy(), minlength=3).tolist() == [4, 12, 0]


# ---------------------------------------------------------------------------------------------------------
# Distributions: indexed vs literal
# ---------------------------------------------------------------------------------------------------------


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    grid = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), grid, side="right") / a.size
    fb = np.searchsorted(np.sort(b), grid, side="right") / b.size
    return float(np.abs(fa - fb).max())


def chi2_homogeneity(counts_a: np.ndarray, counts_b: np.ndarray) -> float:
    total = counts_a + counts_b
    keep = total > 0
    expected_a = total * counts_a.sum() / total.sum()
    expected_b = total * counts_b.sum() / total.sum()
    return float((((counts_a - expected_a) ** 2 / expected_a + (counts_b - expected_b) ** 2 / expected_b)[keep]).sum())


def batch_permutation_pvalue(per_batch_a: list, per_batch_b: list, statistic, n_perm: int = 400) -> float:
    """p-value of statistic(a, b) under random relabelling of whole batches (the independent units: patches of
    one batch share their candidate images, so patch-level tests would be over-confident)."""
    rng = np.random.default_rng(0)
    units = per_batch_a + per_batch_b
    observed = statistic(per_batch_a, per_batch_b)
    hits = 0
    for _ in range(n_perm):
        order = rng.permutation(len(units))
        a, b = [units[i] for i in order[: len(per_batch_a)]], [units[i] for i in order[len(per_batch_a) :]]
        hits += statistic(a, b) >= observed
    return (1 + hits) / (1 + n_perm)


def test_indexed_and_literal_distributions_agree(pairs):
    """Both modes emit exactly K_i patches of interval i (tested above); here, which patches of an interval.

    Literal mode picks a random image, then a random position, and keeps the patch if its interval has room, so
    within interval i image j is chosen in proportion to the fraction of its positions that fall in i. Indexed mode
    must reproduce that (it weights each indexed position by 1 / positions of its image) on its stride-2 grid.
    Two statistics, each with a batch-level permutation p-value (a batch is the independent unit), at alpha = 0.01
    (fixed seeds, so the outcome is deterministic): a chi-square of the source-image counts, and a KS statistic of
    the position of each PIC inside its interval ((v - lo) / (hi - lo)). The chi-square has teeth: an index that
    weights positions uniformly (over-weighting large images) gives p < 0.01. And balanced sampling must be far
    from uniform sampling (KS of PIC), or there would be nothing to compare.
    """
    n_batches = 100
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RFSWarning)
        indexed = RFSSampler(pairs, cfg(mode="indexed", seed=3))
        literal = RFSSampler(pairs, cfg(mode="literal", seed=3))
        uniform = RFSSampler(pairs, cfg(mode="uniform", seed=3))
        misweighted = RFSSampler(pairs, cfg(mode="indexed", seed=3))
    for b, start in enumerate(misweighted.index.start):
        misweighted.index.cdf[b] = np.cumsum(np.diff(start)).astype(float)  # uniform over positions: wrong
    draws = {
        name: [s.batch(g) for g in range(n_batches)]
        for name, s in (("indexed", indexed), ("literal", literal), ("uniform", uniform), ("misweighted", misweighted))
    }
    k = len(pairs)
    image_counts = {name: [np.bincount(b["image"].numpy(), minlength=k) for b in bs] for name, bs in draws.items()}

    def image_chi2(a, b):
        return chi2_homogeneity(np.sum(a, axis=0), np.sum(b, axis=0))

    edges = np.array(literal.edges)

    def in_interval(batch) -> np.ndarray:  # position inside the interval, closed intervals only
        v = batch["pic"].numpy().astype(np.float64)
        i = interval_index(edges, v)
        closed = i < len(edges) - 1
        return (v[closed] - edges[i[closed]]) / (edges[i[closed] + 1] - edges[i[closed]])

    positions = {name: [in_interval(b) for b in bs] for name, bs in draws.items()}

    def position_ks(a, b):
        return ks_statistic(np.concatenate(a), np.concatenate(b))

    assert batch_permutation_pvalue(image_counts["indexed"], image_counts["literal"], image_chi2) > 0.01
    assert batch_permutation_pvalue(positions["indexed"], positions["literal"], position_ks) > 0.01
    assert batch_permutation_pvalue(image_counts["misweighted"], image_counts["literal"], image_chi2) < 0.01
    pics = {name: np.concatenate([b["pic"].numpy() for b in bs]) for name, bs in draws.items()}
    assert ks_statistic(pics["uniform"], pics["literal"]) > 0.2  # measured 0.35 to 0.38 over 4 seeds


# ---------------------------------------------------------------------------------------------------------
# Seeds, ranks, workers, resume
# ---------------------------------------------------------------------------------------------------------


def same_batch(a, b) -> bool:
    return torch.equal(a["lr"], b["lr"]) and torch.equal(a["hr"], b["hr"])


@pytest.mark.parametrize("mode", ["indexed", "literal", "uniform"])
def test_same_seed_same_batches_other_seed_other_batches(pairs, mode):
    a, b = RFSSampler(pairs, cfg(mode=mode)), RFSSampler(pairs, cfg(mode=mode))
    c = RFSSampler(pairs, cfg(mode=mode, seed=1))
    for g in range(3):
        assert same_batch(a.batch(g), b.batch(g))
        assert not same_batch(a.batch(g), c.batch(g))
    assert not same_batch(a.batch(0), a.batch(1))


def test_ranks_draw_different_batches_with_the_same_intervals(pairs):
    r0 = RFSSampler(pairs, cfg(), rank=0, world_size=2)
    r1 = RFSSampler(pairs, cfg(), rank=1, world_size=2)
    assert r0.edges == r1.edges and r0.quotas == r1.quotas
    for g in range(3):
        assert not same_batch(r0.batch(g), r1.batch(g))
    with pytest.raises(ValueError, match="rank"):
        RFSSampler(pairs, cfg(), rank=2, world_size=2)


def test_dataloader_workers_split_the_stream_without_repeats(pairs):
    sampler = RFSSampler(pairs, cfg(), num_batches=6)
    loader = DataLoader(sampler, batch_size=None, num_workers=2)
    got = list(loader)
    # Round-robin over workers gives batches 0..5 in order, each exactly as a single process draws it.
    assert [int(b["index"]) for b in got] == list(range(6))
    for g, b in enumerate(got):
        assert same_batch(b, sampler.batch(g))
    flat = torch.stack([b["lr"] for b in got]).flatten(0, 1)  # (6 * N, 3, P, P)
    assert len({hash(x.numpy().tobytes()) for x in flat}) == flat.shape[0]


def test_resume_at_a_batch_number_is_exact(pairs):
    full = list(RFSSampler(pairs, cfg(), num_batches=5))
    resumed = list(RFSSampler(pairs, cfg(), start_batch=3, num_batches=2))
    assert same_batch(resumed[0], full[3]) and same_batch(resumed[1], full[4])


@pytest.mark.filterwarnings("ignore::bsr_hub.data.rfs_config.RFSWarning")  # tau = 0.5 leaves two small intervals at 0
def test_resolved_config_reproduces_the_run(pairs):
    a = RFSSampler(pairs, cfg(tau=0.5))
    state = a.to_dict()
    assert state["rfs"]["edges"] == a.edges and state["rfs"]["quotas"] == a.quotas
    # Another pre-scan seed would place other intervals; the stored edges and quotas override it.
    b = RFSSampler(pairs, RFSConfig.from_dict({**state["rfs"], "prescan_patches": 256}))
    assert b.edges == a.edges and b.quotas == a.quotas
    assert same_batch(a.batch(7), b.batch(7))


# ---------------------------------------------------------------------------------------------------------
# Alignment and augmentation
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("augment", [False, True])
def test_lr_hr_patches_stay_aligned(pairs, augment):
    from bsr_hub.data.degradations import degrade

    sampler = RFSSampler(pairs, cfg(mode="uniform", augment=augment))
    b = sampler.batch(0)
    lr = torch.round(b["lr"] * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (N, P, P, 3)
    hr = torch.round(b["hr"] * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (N, 2P, 2P, 3)
    m = 3  # the x2 antialiased bicubic reaches 2 LR pixels beyond a patch; 3 leaves no border effect
    for i in range(N):
        remade = degrade(hr[i], 2).astype(int)
        diff = np.abs(remade[m:-m, m:-m] - lr[i, m:-m, m:-m].astype(int))
        # Without augmentation: exact. Rotations swap MATLAB's height-then-width rounding order: 1 level at most.
        assert diff.max() <= (1 if augment else 0), diff.max()
    # and a patch is not aligned with another patch's HR (the check has teeth)
    assert np.abs(degrade(hr[1], 2).astype(int)[m:-m, m:-m] - lr[0, m:-m, m:-m].astype(int)).max() > 10


def test_augmentation_uses_all_8_transforms(pairs):
    from bsr_hub.data.pairs import dihedral

    a = np.arange(12).reshape(3, 4, 1)
    assert len({dihedral(a, k).tobytes() + bytes(dihedral(a, k).shape) for k in range(8)}) == 8


# ---------------------------------------------------------------------------------------------------------
# Streaming source and 2 processes
# ---------------------------------------------------------------------------------------------------------


def test_streaming_source(pairs):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    ds = datasets.Dataset.from_dict({"image": [Image.fromarray(h) for h in pairs.hr]})
    stream = ds.to_iterable_dataset(num_shards=2)
    sampler = RFSSampler(stream, cfg(pool_size=5, batches_per_pool=2), num_batches=5)
    assert sampler.streaming
    batches = list(sampler)
    assert len(batches) == 5
    for b in batches:
        assert b["lr"].shape == (N, 3, P, P) and b["hr"].shape == (N, 3, 2 * P, 2 * P)
        assert counts_by_recomputed_pic(b, sampler.edges).tolist() == sampler.quotas
    assert not same_batch(batches[0], batches[1])
    with pytest.raises(RuntimeError, match="map-style"):
        sampler.batch(0)


def _two_process_fn():
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    # debug_launcher forks, and Accelerator sets 2 intra-op threads: a forked child that runs a multi-threaded
    # OpenMP region the parent already used hangs (GNU libgomp is not fork-safe; DataLoader workers use 1 thread
    # for the same reason). `accelerate launch` starts fresh processes and does not need this.
    torch.set_num_threads(1)
    assert accelerator.num_processes == 2
    sampler = RFSSampler(synthetic_pairs(n=6), cfg(prescan_patches=256))  # rank from torch.distributed
    assert sampler.rank == accelerator.process_index and sampler.world_size == 2
    batch = next(iter(sampler))
    lr = accelerator.gather(batch["lr"][None])  # (2, N, 3, P, P)
    edges = accelerator.gather(torch.tensor(sampler.edges)[None])
    assert torch.equal(edges[0], edges[1]), "ranks must share the intervals"
    assert not torch.equal(lr[0], lr[1]), "ranks must draw different batches"


@pytest.mark.slow
def test_two_processes_draw_different_batches():
    pytest.importorskip("accelerate")
    import os
    import subprocess
    import sys
    from pathlib import Path

    # A fresh interpreter: debug_launcher forks, and its children inherit whatever Accelerate state earlier tests
    # left in this process (in the full suite they then saw one process, not two).
    code = "import accelerate, test_sampling as t; accelerate.debug_launcher(t._two_process_fn, num_processes=2)"
    here = Path(__file__).parent  # this module, and rfs_synthetic.py one folder up
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", code], cwd=here, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]


# ---------------------------------------------------------------------------------------------------------
# The balance report
# ---------------------------------------------------------------------------------------------------------


def test_pic_stats_cli_writes_json_and_plot(tmp_path, pairs):
    pytest.importorskip("matplotlib")
    import json

    from PIL import Image

    from bsr_hub.commands.main import main

    folder = tmp_path / "images"
    folder.mkdir()
    for i, hr in enumerate(pairs.hr):
        Image.fromarray(hr).save(folder / f"{i}.png")
    out_json, out_png = tmp_path / "pic.json", tmp_path / "pic.png"
    args = ["pic-stats", str(folder), "--scale", "2", "--patch", str(P), "--mode", "literal", "--batches", "4"]
    assert main(args + ["--json", str(out_json), "--plot", str(out_png)]) == 0
    stats = json.loads(out_json.read_text())
    for key in ("edges", "natural", "sampled", "quotas", "attempts_per_batch", "spills_per_batch"):
        assert key in stats
    k = len(stats["edges"])
    assert len(stats["natural"]) == len(stats["sampled"]) == len(stats["quotas"]) == k
    assert math.isclose(sum(stats["natural"]), 1.0) and math.isclose(sum(stats["sampled"]), 1.0)
    if stats["spills_per_batch"] == 0:
        assert stats["sampled_counts"] == [4 * q for q in stats["quotas"]]
    assert len(stats["per_batch"]["attempts"]) == 4 and stats["attempts_per_batch"] >= N
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["pic-stats", str(tmp_path / "nothing-here")]) == 2  # a clear error, not a traceback
