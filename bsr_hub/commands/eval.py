"""`bsr-hub eval` and `python evaluate.py` (`eval_main`): score a model on SR benchmarks under the published
protocol, or the robustness suite (`--suite robustness`); print the table, write the JSON and the model card; or
score several models side by side (`--leaderboard DIR`: a table and a plot). A model is a BSR checkpoint, bicubic,
an ONNX file or an OpenCV model (evaluation/loading.py). The flags (`add_eval_arguments`) are shared by both
command lines.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..core import write_text_atomically
from .signals import sigterm_as_exit
from .upscale import parse_tile_arg


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The evaluation flags, shared by `evaluate.py` and `bsr-hub eval`."""
    from ..data import DEFAULT_BENCHMARKS, DEGRADATIONS

    parser.add_argument(
        "--model", required=True, nargs="+", action="extend", metavar="MODEL",  # repeated: the values add up
        help="a BSR checkpoint (bundled name, local folder, Hub repo id), 'bicubic', an ONNX file (PATH.onnx: ONNX "
             "Runtime; opencv:PATH: OpenCV's dnn; float32 RGB in [0, 1], NCHW, as bsr-hub export writes) or an OpenCV "
             "dnn_superres model (dnn_superres:ALGORITHM:PATH, opencv-contrib). Several (--model A B C): with --leaderboard",
    )
    parser.add_argument(
        "--leaderboard", default=None, metavar="DIR",
        help="score every --model in this run and write DIR/leaderboard.md (PSNR/SSIM per benchmark, parameters, "
             "seconds per image), DIR/leaderboard.png (PSNR against time) and DIR/leaderboard.json",
    )
    parser.add_argument(
        "--suite", default="published", choices=["published", "robustness"],
        help="published (default): the papers' protocol, LR by MATLAB bicubic. robustness: LR by other resizers "
             "(PIL, OpenCV, F.interpolate) alone, with JPEG 90/75, with noise, and camera-like (blur, resizer, JPEG), "
             "each next to bicubic upscaling of the same LR (default benchmarks Set5 Set14; --update-card writes "
             "the table under the card's Limitations)",
    )
    parser.add_argument(
        "--families", nargs="+", default=None, metavar="FAMILY",
        help="with --suite robustness: only these row families (resize, jpeg, noise, camera; default all). With "
             "--update-card they are added to the checkpoint's stored rows, after checking that a re-measured "
             "row (MATLAB bicubic) matches them",
    )
    parser.add_argument(
        "--benchmarks", nargs="+", default=None,
        help=f"folders under --data-dir (default: {' '.join(DEFAULT_BENCHMARKS)}); with --dataset, its label",
    )
    parser.add_argument("--data-dir", default=None, help="folder of benchmark folders of HR images")
    parser.add_argument("--dataset", default=None, help="a Hub dataset id with an image column, instead of --data-dir")
    parser.add_argument("--split", default="test", help="split of --dataset (default test)")
    parser.add_argument("--image-column", default="image", help="image column of --dataset (default image)")
    parser.add_argument("--scale", type=int, default=None,
                        help="scale (default: the model's, or an ONNX file's metadata; required for bicubic, "
                             "dnn_superres and graphs without it)")
    parser.add_argument("--degradation", default="BI", choices=list(DEGRADATIONS), help="how LR is made (default BI)")
    parser.add_argument("--self-ensemble", action="store_true", help="mean over the 8 flips/rotations ('+')")
    parser.add_argument("--tile", type=parse_tile_arg, default="auto",
                        help="auto (default), 0 (one pass) or a tile size in LR pixels (bounds the network's memory)")
    parser.add_argument("--save-images", default=None, metavar="DIR", help="write SR images to DIR/<benchmark>/x<s>/")
    parser.add_argument("--output", default=None, metavar="JSON", help="write results (with per-image values) here")
    parser.add_argument("--update-card", default=None, metavar="MODEL_DIR", help="write results into that checkpoint's card")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (under accelerate launch: its device)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return parser


def eval_command_line(args: argparse.Namespace, scale: int, prog: str = "python evaluate.py") -> str:
    """The command that reproduces these numbers (what decides them, not where outputs went), for the card."""
    import shlex

    from ..data import DEFAULT_BENCHMARKS

    parts = ["--model", *args.model]
    if args.dataset:
        parts += ["--dataset", args.dataset, "--split", args.split, "--image-column", args.image_column]
    else:
        parts += ["--benchmarks", *(args.benchmarks or DEFAULT_BENCHMARKS), "--data-dir", str(args.data_dir)]
    parts += ["--scale", str(scale), "--degradation", args.degradation]
    if args.self_ensemble:
        parts.append("--self-ensemble")
    if args.tile != "auto":
        parts += ["--tile", str(args.tile or 0)]
    # prog is a command ("python evaluate.py"), not one word
    return " ".join([prog, *(shlex.quote(p) if p else "''" for p in parts)])


def cmd_eval(args: argparse.Namespace, prog: str = "bsr-hub eval") -> int:
    """Run the evaluation the flags describe; print the table; write JSON / card. Returns the exit status.

    `prog` starts the command line recorded in the card next to the numbers.
    """
    from ..core import MissingExtraError, check_launch, require

    try:  # every benchmark is read through datasets: say so now, in one line, not as a traceback later
        datasets = require("datasets", extra="train", what="evaluation")
        check_launch()  # `accelerate launch --cpu --num_machines 2`: each process would score every image alone
    except (MissingExtraError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.quiet:
        datasets.disable_progress_bars()
    if args.leaderboard:
        return eval_leaderboard(args, prog)
    if len(args.model) > 1:
        print(f"error: {len(args.model)} --model values: scoring several models needs --leaderboard DIR",
              file=sys.stderr)
        return 2
    if args.suite == "robustness":
        return eval_robustness(args, prog)
    from ..evaluation import BICUBIC, evaluate_benchmarks, launch_accelerator, load_model, markdown_table
    from ..models import check_card_target, update_card

    accelerator, device = launch_accelerator(args.device)
    is_main = accelerator is None or accelerator.is_main_process
    (name,) = args.model
    try:
        model = load_model(name, args.scale, device)
        if args.update_card:
            check_card_target(args.update_card, name, model)  # before hours of evaluation, not after
        scale = args.scale or model.scale
        benchmarks = _benchmarks(args)
        results = evaluate_benchmarks(
            model, benchmarks, scale, args.degradation, with_bicubic=args.update_card is not None and name != BICUBIC,
            self_ensemble=args.self_ensemble, tile=args.tile, save_dir=args.save_images, accelerator=accelerator,
            progress=not args.quiet,
        )
    except (OSError, ValueError, ImportError) as err:  # EvaluationError, RecordError: ValueErrors; a missing runtime
        print(f"error: {err}", file=sys.stderr)
        return 2

    if not is_main:
        return 0
    print(markdown_table(name, results))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(args.output, json.dumps({"model": name, "results": results}, indent=2) + "\n")
    status = _report_failures(results)
    if args.update_card:
        try:
            path = update_card(args.update_card, results, evaluation_command=eval_command_line(args, scale, prog))
            print(f"updated {path}", file=sys.stderr)
        except (OSError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    return status


def _benchmarks(args: argparse.Namespace) -> list:
    """The benchmarks the flags name: folders under --data-dir, or one Hub dataset (--dataset)."""
    from ..data import DEFAULT_BENCHMARKS, EvaluationError, load_benchmark

    if args.dataset:
        if args.benchmarks and len(args.benchmarks) > 1:
            raise EvaluationError("with --dataset give at most one --benchmarks name (the label of that dataset)")
        names = args.benchmarks or [args.dataset.rstrip("/").split("/")[-1]]
    else:
        names = args.benchmarks or list(DEFAULT_BENCHMARKS)
    return [load_benchmark(n, args.data_dir, dataset=args.dataset, split=args.split, image_column=args.image_column)
            for n in names]


def _report_failures(results: list[dict]) -> int:
    """Print each image that could not be scored; 1 if any, else 0."""
    status = 0
    for r in results:
        for f in r.get("failed", []):
            print(f"error: {r['benchmark']}: {f['error']}", file=sys.stderr)
            status = 1
    return status


def eval_leaderboard(args: argparse.Namespace, prog: str) -> int:
    """`--leaderboard DIR`: every --model scored and timed in this process; the table, the plot and the JSON."""
    import os
    import shlex
    import time

    import torch

    from ..core import launched_world_size
    from ..evaluation import resolve_device, run_leaderboard, timing_note, write_leaderboard

    refused = [flag for flag, used in (("--suite robustness", args.suite != "published"), ("--output", args.output),
                                       ("--update-card", args.update_card), ("--save-images", args.save_images))
               if used]
    if refused or launched_world_size() > 1:
        why = f"drop {', '.join(refused)}" if refused else "run it in one process (its times are one machine's)"
        print(f"error: --leaderboard writes its own table, plot and JSON: {why}", file=sys.stderr)
        return 2
    started, load_before = time.time(), os.getloadavg()[0]
    try:
        benchmarks = _benchmarks(args)
        entries = run_leaderboard(args.model, benchmarks, args.scale, device=resolve_device(args.device),
                                  degradation=args.degradation, self_ensemble=args.self_ensemble, tile=args.tile,
                                  progress=not args.quiet)
    except (OSError, ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    note = timing_note(torch.get_num_threads(), (load_before, os.getloadavg()[0]), started)
    words = ["--model", *args.model, "--benchmarks", *(b.name for b in benchmarks)]
    words += ["--dataset", args.dataset] if args.dataset else ["--data-dir", str(args.data_dir)]
    words += [*(["--scale", str(args.scale)] if args.scale else []), "--degradation", args.degradation,
              *(["--self-ensemble"] if args.self_ensemble else []),
              *(["--tile", str(args.tile or 0)] if args.tile != "auto" else []), "--leaderboard", args.leaderboard]
    paths = write_leaderboard(entries, args.leaderboard, note, " ".join([prog, *map(shlex.quote, words)]))
    print(paths[0].read_text())
    print("wrote " + ", ".join(map(str, paths)), file=sys.stderr)
    return max((_report_failures(e.results) for e in entries), default=0)


def eval_robustness(args: argparse.Namespace, prog: str) -> int:
    """`--suite robustness`: score, print, and write the JSON / the card's Limitations table (one process)."""
    import shlex
    import time

    from ..data import EvaluationError, load_benchmark
    from ..evaluation import (
        DEFAULT_SUITE_BENCHMARKS,
        FAMILIES,
        InputDegradation,
        evaluate_robustness,
        load_model,
        merge_documents,
        resolve_device,
        results_document,
        robustness_suite,
    )
    from ..models import RecordError, check_card_target, read_robustness, robustness_table, update_card

    if args.self_ensemble or args.degradation != "BI" or args.dataset:
        print("error: --suite robustness makes its own LR (no --degradation, --self-ensemble or --dataset)",
              file=sys.stderr)
        return 2
    families = args.families or list(FAMILIES)
    (name,) = args.model
    try:
        model = load_model(name, args.scale, resolve_device(args.device))
        if args.update_card:
            check_card_target(args.update_card, name, model)
        scale = args.scale or model.scale
        names = args.benchmarks or list(DEFAULT_SUITE_BENCHMARKS)
        benchmarks = [load_benchmark(n, args.data_dir) for n in names]
        suite, skipped = robustness_suite(families=families)
        if args.update_card and set(families) != set(FAMILIES) and "resize" not in families:
            suite.insert(0, InputDegradation("matlab-bicubic"))  # the row that ties the stored ones to these weights
        started = time.perf_counter()
        skipped_images: list[dict[str, str]] = []
        rows = evaluate_robustness(model, benchmarks, scale, suite, tile=args.tile, progress=not args.quiet,
                                   skipped_images=skipped_images)
    except (EvaluationError, RecordError, OSError, ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    words = ["--suite", "robustness", "--model", name, "--benchmarks", *names, "--data-dir", str(args.data_dir),
             "--scale", str(scale), *(["--families", *families] if args.families else [])]
    command = " ".join([prog, *map(shlex.quote, words)])
    document = results_document(name, scale, rows, skipped, command, skipped_images)
    document["wall_time_s"] = round(time.perf_counter() - started, 1)
    print(robustness_table(document))
    for resizer, why in skipped.items():
        print(f"skipped {resizer}: {why}", file=sys.stderr)
    for image in skipped_images:
        print(f"skipped {image['benchmark']}/{image['name']}: {image['error']}", file=sys.stderr)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(args.output, json.dumps(document, indent=2) + "\n")
    if args.update_card:
        try:
            stored = read_robustness(args.update_card)
            if args.families and stored is not None:
                document = merge_documents(stored, document)
            path = update_card(args.update_card, [], robustness=document)
            print(f"updated {path}", file=sys.stderr)
        except (RecordError, OSError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    worse = [r for r in rows if r.gain < 0]
    if worse:
        print(f"note: below bicubic on {len(worse)} of {len(rows)} rows (see the table)", file=sys.stderr)
    return 0


def eval_main(argv: Sequence[str] | None = None) -> int:
    """`python evaluate.py ...` (and `accelerate launch evaluate.py ...`): the flags of `bsr-hub eval`."""
    parser = add_eval_arguments(
        argparse.ArgumentParser(prog="evaluate.py", description="Score a model on SR benchmarks (PSNR/SSIM on Y).")
    )
    args = parser.parse_args(argv)
    with sigterm_as_exit():
        return cmd_eval(args, prog="python evaluate.py")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """`bsr-hub eval` and its flags."""
    p = subparsers.add_parser("eval", help="PSNR/SSIM on benchmarks under the published protocol (needs bsr-hub[train])")
    add_eval_arguments(p)
    p.set_defaults(func=cmd_eval)
