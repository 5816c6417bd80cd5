"""`bsr-hub export` (a model as ONNX) and `bsr-hub space export` (a self-contained Hugging Face Space
folder), with their flags.
"""

from __future__ import annotations

import argparse
import sys


def cmd_export(args: argparse.Namespace) -> int:
    from ..models import BSRModel

    try:
        from ..core import require
        from ..models import export_onnx

        require("onnx", "onnxruntime", extra="export", what="ONNX export")  # before loading anything: said first
        model = BSRModel.from_pretrained(args.model)
        done = export_onnx(model, args.output, source=args.model, verify=not args.no_verify, overwrite=args.overwrite)
    except (ValueError, OSError, ImportError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    checked = "" if done.max_abs_diff is None else f", ONNX Runtime vs PyTorch max |diff| {done.max_abs_diff:.1e}"
    print(
        f"wrote {done.onnx_path} (x{model.scale}; input float32 RGB in [0, 1], NCHW, any height and width{checked}) "
        f"and {done.metadata_path}",
        file=sys.stderr,
    )
    return 0


def cmd_space_export(args: argparse.Namespace) -> int:
    from ..demo import export_space

    try:
        done = export_space(args.output, args.model or (), wheel=args.wheel, overwrite=args.overwrite)
    except (ValueError, OSError, ImportError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    served = ", ".join(f"{m.name} (x{m.scale})" for m in done.models)
    print(f"wrote a Space serving {served} into {done.folder} (wheel {done.wheel.name}); "
          f"try it: cd {done.folder} && pip install -r requirements.txt && python app.py", file=sys.stderr)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """`bsr-hub export` and `bsr-hub space export`, with their flags."""
    p = subparsers.add_parser("export", help="write a model as ONNX for ONNX Runtime / OpenCV (needs bsr-hub[export])")
    p.add_argument("model", help="bundled name, local folder or Hub repo id")
    p.add_argument("-o", "--output", required=True, help="the .onnx file; MODEL.json with the scale goes beside it")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check after writing")
    p.set_defaults(func=cmd_export)

    space = subparsers.add_parser("space", help="Hugging Face Space tools").add_subparsers(dest="space_command", required=True)
    p = space.add_parser("export", help="write a self-contained Space folder (app, README, wheel, checkpoints)")
    p.add_argument("output", help="the Space folder to write")
    p.add_argument("--model", action="append", help="checkpoint to serve (repeatable; default: every bundled one)")
    p.add_argument("--wheel", default=None, help="a bsr_hub wheel to ship (default: built from this checkout)")
    p.add_argument("--overwrite", action="store_true", help="replace the Space files in a non-empty folder")
    p.set_defaults(func=cmd_space_export)
