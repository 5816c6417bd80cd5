"""`bsr-hub export` (a model as ONNX) and `bsr-hub space export` (a self-contained Hugging Face Space
folder), with their flags.
"""

from __future__ import annotations

import argparse
import sys


def cmd_export(args: argparse.Namespace) -> int:
    from ..models import BSRModel

    if args.int8:
        return cmd_export_int8(args)
    stray = [flag for flag, used in (("--calibration", args.calibration), ("--no-measure", args.no_measure)) if used]
    if stray:
        print(f"error: {', '.join(stray)} only go with --int8", file=sys.stderr)
        return 2
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


def cmd_export_int8(args: argparse.Namespace) -> int:
    """`bsr-hub export MODEL -o out.onnx --int8`: everything the run needs is checked before the minutes of
    calibration and scoring (the extras, the output, the calibration images, the benchmarks)."""
    from ..core import example_images, require
    from ..inference.quantize import calibration_patches
    from ..models import BSRModel
    from ..models.export import NOT_MEASURED, check_targets, export_onnx_int8

    measure = None
    try:
        require("onnx", "onnxruntime", extra="export", what="int8 ONNX export")
        if args.no_verify:
            raise ValueError("--int8 always checks the float32 graph it quantizes; drop --no-verify")
        check_targets(args.output, args.overwrite)
        if not args.no_measure:
            measure = _cost_measure(args)  # benchmarks read now: a missing folder is said before any work
        model = BSRModel.from_pretrained(args.model)
        if args.calibration:
            calibration = calibration_patches(args.calibration, count=args.calibration_patches)
        else:  # the bundled photos: calibration works offline, without our training data
            calibration = calibration_patches(example_images(), count=args.calibration_patches,
                                              source="bsr_hub/example_images (bundled)")
        done = export_onnx_int8(model, args.output, calibration, measure=measure, max_cost_db=args.max_cost,
                                source=args.model, overwrite=args.overwrite)
    except (ValueError, OSError, ImportError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cost = done.metadata["psnr_cost"]
    if cost == NOT_MEASURED:
        said = "PSNR cost NOT MEASURED (--no-measure): its metadata says so"
    else:
        said = "PSNR cost (fp32 - int8) " + ", ".join(
            f"{k} {v['cost_db']:+.3f} dB ({v['fp32_psnr']:.2f} -> {v['int8_psnr']:.2f})" for k, v in cost["benchmarks"].items()
        )
    print(f"wrote {done.onnx_path} (int8, x{model.scale}; input float32 RGB in [0, 1], NCHW, any height and width; "
          f"calibrated on {len(calibration.patches)} patches of {calibration.source}; {said}) and {done.metadata_path}",
          file=sys.stderr)
    return 0


def _cost_measure(args: argparse.Namespace):
    """The benchmarks --data-dir names, loaded now, and the callable that scores a float32 and an int8 graph on
    them (evaluation.quantization_cost)."""
    import functools

    from ..core import require
    from ..data import load_benchmark

    datasets = require("datasets", extra="train", what="measuring the int8 cost (or pass --no-measure)")
    datasets.disable_progress_bars()  # a benchmark folder loads in a blink: its bars would only bury the result
    from ..evaluation.quantization import quantization_cost

    try:
        benchmarks = [load_benchmark(name, args.data_dir) for name in args.benchmarks]
    except ValueError as err:
        raise ValueError(f"{err}. The int8 cost is measured on these benchmarks: give --data-dir, or --no-measure "
                         "to write the graph with its cost marked \"not measured\"") from err
    return functools.partial(quantization_cost, benchmarks=benchmarks)


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
    p.add_argument("--int8", action="store_true",
                   help="write the graph statically quantized to int8 (QDQ, per-channel weights) for ONNX Runtime, with "
                        "its PSNR cost against float32 on the benchmarks in its metadata")
    p.add_argument("--calibration", default=None, metavar="DIR",
                   help="with --int8: images to calibrate on, searched recursively (e.g. ../shared/data/train; "
                        "default: the bundled example photos)")
    p.add_argument("--calibration-patches", type=int, default=64, metavar="N",
                   help="with --int8: 64x64 patches drawn (seeded) from the calibration images (default 64)")
    p.add_argument("--data-dir", default="../shared/data/benchmarks",
                   help="with --int8: the folder of benchmark folders the cost is measured on "
                        "(default ../shared/data/benchmarks)")
    p.add_argument("--benchmarks", nargs="+", default=["Set5", "Set14", "BSD100"],
                   help="with --int8: benchmark folders under --data-dir (default Set5 Set14 BSD100)")
    p.add_argument("--no-measure", action="store_true",
                   help="with --int8: do not measure the cost (its metadata then says \"not measured\")")
    p.add_argument("--max-cost", type=float, default=0.10, metavar="DB",
                   help="with --int8: refuse (write nothing) if int8 loses more PSNR than this on any benchmark "
                        "(default 0.10 dB)")
    p.set_defaults(func=cmd_export)

    space = subparsers.add_parser("space", help="Hugging Face Space tools").add_subparsers(dest="space_command", required=True)
    p = space.add_parser("export", help="write a self-contained Space folder (app, README, wheel, checkpoints)")
    p.add_argument("output", help="the Space folder to write")
    p.add_argument("--model", action="append", help="checkpoint to serve (repeatable; default: every bundled one)")
    p.add_argument("--wheel", default=None, help="a bsr_hub wheel to ship (default: built from this checkout)")
    p.add_argument("--overwrite", action="store_true", help="replace the Space files in a non-empty folder")
    p.set_defaults(func=cmd_space_export)
