"""`bsr-hub degrade`: make LR images (MATLAB-exact BI, or BD) from HR files and folders, with its flags."""

from __future__ import annotations

import argparse
import sys


def cmd_degrade(args: argparse.Namespace) -> int:
    from ..data import degrade_files

    done, problems = degrade_files(args.inputs, args.output, args.scale, args.degradation, args.overwrite)
    for line in problems:
        print(line, file=sys.stderr)
    print(f"{done} LR images (x{args.scale}, {args.degradation}) written into {args.output}", file=sys.stderr)
    nothing_to_do = not done and not any(p.startswith("skipped") for p in problems)
    return 1 if any(p.startswith("failed") for p in problems) or nothing_to_do else 0  # skipped-only is success


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """`bsr-hub degrade` and its flags."""
    p = subparsers.add_parser("degrade", help="make LR images (MATLAB-exact BI, or BD) from HR files or folders")
    p.add_argument("inputs", nargs="+", help="HR image files and/or folders")
    p.add_argument("-o", "--output", required=True, help="output folder (same names as PNG, structure kept)")
    p.add_argument("--scale", type=int, required=True, help="downscaling factor (2, 3, 4, ...)")
    p.add_argument("--degradation", default="BI", choices=["BI", "BD"], help="BI bicubic (default) or BD blur")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=cmd_degrade)
