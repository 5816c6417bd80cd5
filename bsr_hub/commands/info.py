"""`bsr-hub list` (the bundled checkpoints with their measured Y-PSNR) and `bsr-hub info` (what network a
checkpoint or preset holds), with their flags.
"""

from __future__ import annotations

import argparse
import json
import sys


def model_info(model) -> dict:
    """What `bsr-hub info` prints: enough to tell which network a checkpoint holds."""
    return {
        "preset": model.config.preset,
        "scale": model.scale,
        "parameters": model.num_parameters(),
        "conv_layers": model.num_conv_layers(),
        "config": model.config.to_dict(),
    }


def preset_or_checkpoint(name: str, scale: int | None):
    """A preset's randomly initialised network at `scale`, else a checkpoint by name, folder or repo id:
    what `bsr-hub info` and `bsr-hub bench` take. Raises ValueError / OSError as loading does."""
    from ..models import BSRModel, list_presets

    if name in list_presets():
        return BSRModel.from_preset(name, scale=scale)
    return BSRModel.from_pretrained(name)


def cmd_info(args: argparse.Namespace) -> int:
    try:
        model = preset_or_checkpoint(args.model, args.scale)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    info = model_info(model)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"preset       {info['preset'] or 'custom'}")
        print(f"scale        x{info['scale']}")
        print(f"parameters   {info['parameters']:,}")
        print(f"conv layers  {info['conv_layers']}")
        for key, value in info["config"].items():
            print(f"  {key:22} {value}")
    return 0


def zoo_rows() -> list[dict]:
    """One row per bundled checkpoint: what `bsr-hub list` prints, from each folder's config and measured results."""
    from ..models import BSRModel, EvalResults, bundled_checkpoints, default_for, trained_for

    rows = []
    for name, folder in bundled_checkpoints().items():
        model = BSRModel.from_pretrained(folder)
        results = EvalResults.load(folder).results
        psnr = {r["benchmark"]: round(r["psnr"], 2) for r in results
                if r["scale"] == model.scale and r["degradation"] == "BI" and not r["self_ensemble"]}
        rows.append({"name": name, "preset": model.config.preset, "scale": model.scale,
                     "parameters": model.num_parameters(), "psnr": psnr, "trained_for": trained_for(folder),
                     "default_for": default_for(name)})
    return rows


def cmd_list(args: argparse.Namespace) -> int:
    rows = zoo_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from ..models import DEFAULT_REASONS, TRAINED_FOR

    benchmarks = ("Set5", "Set14", "BSD100")
    print(f"  {'name':20} {'scale':>5} {'parameters':>11}  {'Y-PSNR ' + ' / '.join(benchmarks):30}  for")
    for r in rows:
        scores = " / ".join(f"{r['psnr'][b]:.2f}" if b in r["psnr"] else "-" for b in benchmarks)
        mark = "*" if r["default_for"] == "photos" else " "
        print(f"{mark} {r['name']:20} {'x' + str(r['scale']):>5} {r['parameters']:>11,}  {scores:30}  {r['trained_for']}")
    print(f"\n* the default of its scale when no model is named (bsr-hub upscale, the demo, the Space): "
          f"{DEFAULT_REASONS['photos']}")
    print("for: " + "; ".join(f"{k} = {v}" for k, v in TRAINED_FOR.items()))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """`bsr-hub list` and `bsr-hub info`, with their flags."""
    p = subparsers.add_parser("list", help="the bundled checkpoints: scale, parameters, measured Y-PSNR, and which one is the default")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_list)

    p = subparsers.add_parser("info", help="describe a model: preset, scale, parameters, conv layers")
    p.add_argument("model", help="bundled name, local folder, Hub repo id, or a preset name")
    p.add_argument("--scale", type=int, default=2, help="scale, when MODEL is a preset name")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)
