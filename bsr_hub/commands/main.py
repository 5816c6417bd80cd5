"""`bsr-hub`: the parser of every subcommand (each command's module adds its own, `add_parser`) and `main`, the
console script's entry point.

The commands: upscale (upscale.py), list and info (info.py), bench (bench.py), demo (demo.py), degrade (degrade.py), eval
(eval.py; also `python evaluate.py`), pic-stats (pic_stats.py), export and space export (export.py). The flags of
`accelerate launch train.py` are train.py's. No module outside this subpackage parses arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import bench, degrade, demo, export, info, pic_stats, upscale
from . import eval as eval_command
from .signals import sigterm_as_exit

# In the order `bsr-hub --help` lists them: upscale, list, info, bench, demo, degrade, eval, pic-stats, export, space.
COMMANDS = (upscale, info, bench, demo, degrade, eval_command, pic_stats, export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bsr-hub", description="BSR super-resolution models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with sigterm_as_exit():
        return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
