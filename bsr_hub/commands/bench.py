"""`bsr-hub bench`: what `upscale` measures on this machine to choose its backend and layout (the table, stored in
the autotune cache for later processes), and where `upscale`'s time goes against the network's raw forward."""

from __future__ import annotations

import argparse
import json
import sys


def _size(text: str) -> tuple[int, int]:
    """argparse type for --size: WxH, or N for N x N."""
    width, _, height = text.lower().partition("x")
    try:
        w, h = int(width), int(height or width)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH or N (e.g. 512x384), got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"the sides must be positive, got {text!r}")
    return w, h


def _test_image(width: int, height: int):
    """An 8-bit RGB photo-like image (smooth gradients plus texture): what a user hands upscale. Speed does not
    depend on the content."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx / max(width - 1, 1), yy / max(height - 1, 1), (xx + yy) / max(width + height - 2, 1)], -1)
    return Image.fromarray(np.clip(base * 200 + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8))


def _candidates(tuning) -> list[dict]:
    """The measured table as rows (candidate, probe shape, seconds per pass, probe passes per image, estimated seconds
    for the image, chosen, and what measuring it took in this process and of that its build: None for a table read
    from the cache), the least estimate first."""
    chosen = tuning.best().name
    costs, builds = tuning.costs or {}, tuning.builds or {}
    rows = [{"candidate": name, "probe_shape": list(tuning.probes[name].shape), "seconds": s,
             "work": tuning.probes[name].work, "image_seconds": tuning.image_seconds(name), "chosen": name == chosen,
             "measure_seconds": costs.get(name), "build_seconds": builds.get(name)}
            for name, s in tuning.seconds.items()]
    return sorted(rows, key=lambda row: row["image_seconds"])


def _report(name: str, model, size: tuple[int, int], profile, cache: str) -> dict:
    import torch

    from ..core import describe_cpu
    from ..inference.tuning_cache import machine_key

    machine = machine_key()
    return {"model": name, "scale": model.scale, "parameters": sum(p.numel() for p in model.parameters()),
            "size": list(size), "cpu": describe_cpu(), "threads": torch.get_num_threads(), "machine": machine,
            "candidates": _candidates(profile.tuning), "measured_now": profile.tuning.fresh,
            "measure_seconds": profile.tuning.cost, "cache": cache,
            **profile.as_dict()}


def _print_table(r: dict) -> None:
    from ..inference.autotune import RETIME_WITHIN

    w, h = r["size"]
    print(f"{r['model']} (x{r['scale']}, {r['parameters']:,} parameters) on {r['cpu']}, {r['threads']} torch threads, "
          f"torch {r['machine']['torch']}, onnxruntime {r['machine']['onnxruntime'] or 'not installed'}")
    print(f"input {w}x{h} RGB 8-bit (PIL) -> {w * r['scale']}x{h * r['scale']}; plan: {r['plan']}")
    source = f"measured now in {r['measure_seconds']:.2f} s, builds included" if r["measured_now"] else "from the cache"
    print(f"\nbackends, each on one pass of its own tiling after a warm-up on a corner; one pass each, the faster of "
          f"two for those within {RETIME_WITHIN}x of the least estimate ({source}; {r['cache']}):")
    fresh = r["measured_now"]
    print(f"  {'':24} {'pass':>9}    {'one pass':>9}    {'passes':>6}    {'the image (estimated)':>9}"
          + ("    measuring it (of which the build)" if fresh else ""))
    for row in r["candidates"]:
        _, ph, pw = row["probe_shape"]
        cost = f" {row['measure_seconds']:14.2f} s ({row['build_seconds']:.2f} s)" if fresh else ""
        print(f"  {row['candidate']:24} {f'{pw}x{ph}':>9} {1000 * row['seconds']:9.1f} ms {row['work']:8.2f}"
              f" {row['image_seconds']:9.3f} s{cost}{'   <- fastest' if row['chosen'] else ''}")
    print(f"upscale runs: {r['runs_as']}")
    total = sum(r["steps"].values())
    print(f"\nupscale, median of the plain calls   {r['upscale']:8.3f} s")
    print(f"  one instrumented call, step by step {total:8.3f} s")
    for step, seconds in r["steps"].items():
        what = f"network ({r['passes']} passes)" if step == "network" else step
        print(f"    {what:33} {seconds:8.3f} s  {100 * seconds / total:5.1f} %")
    print(f"raw forward                           {r['raw_forward']:8.3f} s  ({r['raw_forward_how']})")
    print(f"upscale / raw forward                 {r['upscale_over_raw_forward']:8.2f}x")


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)  # before anything is measured: the thread count is part of the key
    from ..inference.autotune import enabled
    from ..inference.profile import profile_upscale
    from ..inference.tuning_cache import cache_path
    from .info import preset_or_checkpoint

    try:
        model = preset_or_checkpoint(args.model, args.scale)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    model.eval()
    profile = profile_upscale(model, _test_image(*args.size), repeats=args.repeats, retune=args.retune)
    cache = str(cache_path()) + ("" if enabled() else "; BSR_HUB_AUTOTUNE=0: upscale does not use it")
    report = _report(args.model, model, args.size, profile, cache)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(report)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """`bsr-hub bench` and its flags."""
    p = subparsers.add_parser("bench", help="measure the backends and layouts on this CPU (the choice upscale makes, "
                                            "cached) and where upscale's time goes")
    p.add_argument("model", help="bundled name, local folder, Hub repo id, or a preset name")
    p.add_argument("--scale", type=int, default=2, help="scale, when MODEL is a preset name")
    p.add_argument("--size", type=_size, default=(512, 512), help="input size, WxH or N (default 512x512)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--repeats", type=int, default=3, help="timed upscale calls (default 3)")
    p.add_argument("--retune", action="store_true", help="measure the backends again, replacing the cached table")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_bench)
