"""`bsr-hub pic-stats`: the PIC balance report of the RFS sampler (bsr_hub.data.pic_stats computes and plots
it), with its flags; also `python -m bsr_hub.commands.pic_stats`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..core import write_text_atomically
from .signals import sigterm_as_exit


def add_pic_stats_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="folder of training images, 🤗 dataset id, ...")
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--patch", type=int, default=48, help="LR patch size P (default 48)")
    p.add_argument("--mode", default="indexed", choices=["literal", "indexed", "uniform"])
    p.add_argument("--batches", type=int, default=100, help="batches to draw (default 100)")
    p.add_argument("--batch-size", type=int, default=16, help="N (default 16)")
    p.add_argument("--tau", type=float, default=0.0, help="quota temper: 0 balanced (default), 1 natural")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default=None, help="write the PNG plot here")
    p.add_argument("--json", default=None, help="write the numbers here")


def cmd_pic_stats(args: argparse.Namespace) -> int:
    """Compute, print a table, write --json and --plot."""
    from ..core import MissingExtraError, require
    from ..data import compute_pic_stats, plot_pic_stats

    try:
        if args.plot:  # checked before the sampling, not after it
            require("matplotlib", extra="train", what="the PIC plot (--plot)")
        stats = compute_pic_stats(
            args.data, scale=args.scale, patch_size=args.patch, mode=args.mode, batches=args.batches,
            batch_size=args.batch_size, seed=args.seed, tau=args.tau,
        )
    except (ValueError, FileNotFoundError, TypeError, MissingExtraError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    skipped = ", ".join(f"{count} {reason}" for reason, count in sorted(stats["skipped"].items()))
    print(f"{stats['images']} images ({sum(stats['skipped'].values())} skipped{': ' + skipped if skipped else ''}), "
          f"mode {stats['mode']}, "
          f"{stats['batches']} batches of {stats['batch_size']}")
    print(f"{'interval from':>14} {'natural':>8} {'sampled':>8} {'quota':>6}")
    for e, n, s, q in zip(stats["edges"], stats["natural"], stats["sampled"], stats["quotas"]):
        print(f"{e:14.1f} {n:8.3f} {s:8.3f} {q:6d}")
    print(f"attempts/batch {stats['attempts_per_batch']:.1f}  redraws/batch {stats['redraws_per_batch']:.2f}  "
          f"spills/batch {stats['spills_per_batch']:.3f}  ({stats['seconds_per_batch'] * 1000:.1f} ms/batch)")
    for w in stats["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(args.json, json.dumps(stats, indent=1) + "\n")
    if args.plot:
        plot_pic_stats(stats, args.plot)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """`bsr-hub pic-stats` and its flags."""
    p = subparsers.add_parser("pic-stats", help="PIC balance report: natural vs RFS-sampled patches (needs bsr-hub[train])")
    add_pic_stats_arguments(p)
    p.set_defaults(func=cmd_pic_stats)


def pic_stats_main(argv: Sequence[str] | None = None) -> int:
    """`python -m bsr_hub.commands.pic_stats ...`: the same as `bsr-hub pic-stats ...`."""
    parser = argparse.ArgumentParser(prog="bsr-hub pic-stats")
    add_pic_stats_arguments(parser)
    args = parser.parse_args(argv)
    with sigterm_as_exit():
        return cmd_pic_stats(args)


if __name__ == "__main__":  # `python -m bsr_hub.commands.pic_stats ...`, the same as `bsr-hub pic-stats ...`
    sys.exit(pic_stats_main())
