"""The balance report (`bsr-hub pic-stats`; its flags live in `commands/pic_stats.py`): PIC histograms of random
patches and of what the sampler emits.

(a) the natural distribution: PIC of random patches (random image, random position), as in the paper's Figure 1;
(b) the sampled distribution: PIC of the patches an `RFSSampler` actually emits (recomputed from the emitted LR
patches), over the same intervals, with the quotas and the literal-mode work counters (attempts, redraws, spills
per batch). Written as JSON and as a PNG plot (matplotlib, part of the `train` extra, imported when plotting).

Everything heavy is imported inside the functions, so that `bsr-hub --help` stays fast.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

from ..core import write_atomically


def compute_pic_stats(
    source: Any,
    scale: int = 2,
    patch_size: int = 48,
    mode: str = "indexed",
    batches: int = 100,
    batch_size: int = 16,
    seed: int = 0,
    **rfs_overrides: Any,
) -> dict[str, Any]:
    """Natural vs sampled PIC histograms over the sampler's intervals.

    Args:
        source: anything `RFSSampler` takes (folder, Hub id, Dataset, ImagePairs).
        batches: batches drawn from the sampler; the natural histogram uses as many random patches.
        rfs_overrides: further `RFSConfig` fields (tau, num_candidates, index_stride, ...).

    Returns:
        A JSON-plain dict: ``edges`` (interval lower bounds, last open-ended), ``natural`` and ``sampled``
        (shares per interval), ``quotas``, ``attempts_per_batch``, ``redraws_per_batch``, ``spills_per_batch``
        (means), the counts, per-batch counters, the pre-scan's 16 raw intervals and the images used/skipped.
    """
    import numpy as np

    from .sampling import RFSConfig, RFSSampler, interval_index, prescan

    config = RFSConfig(mode=mode, scale=scale, patch_size=patch_size, batch_size=batch_size, seed=seed,
                       **rfs_overrides)  # type: ignore[arg-type]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        sampler = RFSSampler(source, config, rank=0, world_size=1)
        setup_s = time.perf_counter() - start
        start = time.perf_counter()
        drawn = [sampler.batch(g) for g in range(batches)]
        draw_s = time.perf_counter() - start
    k = len(sampler.edges)
    sampled_counts = np.zeros(k, dtype=np.int64)
    for b in drawn:
        sampled_counts += np.bincount(b["interval"].numpy(), minlength=k)
    pairs = sampler.pairs
    natural_values = prescan(pairs, batches * batch_size, patch_size, np.random.default_rng([seed, 1]))
    natural_counts = np.bincount(interval_index(sampler.edges, natural_values), minlength=k)
    counters = {name: [int(b[name]) for b in drawn] for name in ("attempts", "redraws", "spills")}
    return {
        "source": str(source) if isinstance(source, (str, Path)) else type(source).__name__,
        "mode": mode,
        "scale": scale,
        "patch_size": patch_size,
        "batch_size": batch_size,
        "batches": batches,
        "seed": seed,
        "edges": [float(e) for e in sampler.edges],
        "natural": (natural_counts / natural_counts.sum()).tolist(),
        "sampled": (sampled_counts / sampled_counts.sum()).tolist(),
        "quotas": list(sampler.quotas),
        "attempts_per_batch": float(np.mean(counters["attempts"])),
        "redraws_per_batch": float(np.mean(counters["redraws"])),
        "spills_per_batch": float(np.mean(counters["spills"])),
        "natural_counts": natural_counts.tolist(),
        "sampled_counts": sampled_counts.tolist(),
        "per_batch": counters,
        "prescan": {
            "patches": config.prescan_patches,
            "raw_edges": [float(e) for e in sampler.raw_edges],
            "raw_shares": [float(s) for s in sampler.raw_shares],
        },
        "images": len(pairs) if pairs is not None else None,
        "skipped": dict(sampler.skipped),
        "setup_seconds": round(setup_s, 2),
        "seconds_per_batch": round(draw_s / max(batches, 1), 5),
        "warnings": sorted({str(w.message) for w in caught if issubclass(w.category, UserWarning)}),
        "config": sampler.resolved_config().to_dict(),
    }


def plot_pic_stats(stats: dict[str, Any], path: str | Path) -> None:
    """A PNG with two panels: the 16 raw pre-scan intervals (Figure 1 style) and natural vs sampled shares."""
    import numpy as np

    from ..core import require

    require("matplotlib", extra="train", what="the PIC plot").use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_raw, ax) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [1, 1.5]})
    raw_edges, raw_shares = stats["prescan"]["raw_edges"], stats["prescan"]["raw_shares"]
    width = raw_edges[1] - raw_edges[0] if len(raw_edges) > 1 else 1.0
    ax_raw.bar(raw_edges, raw_shares, width=width * 0.9, align="edge", color="0.55")
    ax_raw.set_xlabel("PIC (mean |Gx|+|Gy|, LR patch; last bin open-ended)")
    ax_raw.set_ylabel("share of random patches")
    ax_raw.set_title(f"Natural PIC, {stats['prescan']['patches']} random {stats['patch_size']}px patches")

    k = len(stats["edges"])
    x = np.arange(k)
    quota_share = np.array(stats["quotas"]) / max(sum(stats["quotas"]), 1)
    ax.bar(x - 0.2, stats["natural"], width=0.4, label="natural (random patches)", color="0.6")
    ax.bar(x + 0.2, stats["sampled"], width=0.4, label=f"sampled ({stats['mode']})", color="tab:blue")
    ax.plot(x, quota_share, "k_", markersize=14, markeredgewidth=2, label="quota K_i / N")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{e:.0f}" for e in stats["edges"]], rotation=45, fontsize=8)
    ax.set_xlabel("interval lower bound (merged intervals)")
    ax.set_ylabel("share of patches")
    ax.set_title(
        f"x{stats['scale']}, P={stats['patch_size']}, N={stats['batch_size']}, {stats['batches']} batches; "
        f"attempts/batch {stats['attempts_per_batch']:.0f}, spills/batch {stats['spills_per_batch']:.2f}",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))  # never through a link
    plt.close(fig)
