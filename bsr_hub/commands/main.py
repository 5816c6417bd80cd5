"""Every command line of the package: argument parsing and a call into the library, one function per command.

`bsr-hub` (upscale, list, info, demo, degrade, eval, pic-stats, export, space export), and the flags of the two
scripts at the top of the checkout: `python evaluate.py` (`eval_main`, the flags of `bsr-hub eval`) and
`accelerate launch train.py` (`load_train_config`, one flag per `training.TrainConfig` field). No other module
parses arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..core.files import plan_jobs, save_image_atomic, write_text_atomically

OUTPUT_FORMATS = {"png": "PNG", "tiff": "TIFF", "webp": "WEBP", "jpg": "JPEG"}


def _load_model(name: str, device: str, dtype: str):
    import torch

    from ..models.modeling import BSRModel

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ValueError(f"--device {device}: not a device name (use auto, cpu, cuda, cuda:1, mps, ...)") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(kind, False):
        raise ValueError(f"--device {device}: no {kind.upper()} device is available here (use --device cpu or auto)")
    if kind == "cpu" and dtype != "float32":
        # Said in flags: check_precision's advice (model.float()) is for Python callers. Checked before loading.
        raise ValueError(f"--dtype {dtype} needs a GPU (--device cuda); on the CPU keep --dtype float32 "
                         "(half precision is unsupported or 10-200x slower there)")
    model = BSRModel.from_pretrained(name, map_location=device)
    return model.to(dtype=getattr(torch, dtype))


def _open_image(src: Path):
    """The decoded image, or the reason it cannot be read. A PNG with 16 bits per colour sample comes as a uint16
    array (Pillow would narrow it to 8 bits), upscaled and written at full depth."""
    from ..core.images import ImageReadError, open_image, read_png_16bit

    try:
        deep = read_png_16bit(src)
    except Exception:  # a file Pillow cannot read: open_image below says why, in its own words
        deep = None
    if deep is not None:
        return deep, None
    try:
        return open_image(src), None
    except ImageReadError as err:
        return None, str(err)


def _upscale_files(model, jobs: list, args: argparse.Namespace) -> list[str | None]:
    """Upscale a group of files (one network batch where they share a size) into their targets; per file, the
    reason it failed, or None."""
    from ..inference.api import upscale_many

    opened = [_open_image(job.source) for job in jobs]
    reasons: list[str | None] = [reason for _, reason in opened]
    ready = [i for i, (img, _) in enumerate(opened) if img is not None]
    options = dict(tile=args.tile, self_ensemble=args.self_ensemble, backend=args.backend)
    try:
        results = upscale_many(model, [opened[i][0] for i in ready], batch_size=args.batch_size, **options)
    except (ValueError, RuntimeError):  # one bad image spoils a batch: redo them one by one to blame the right one
        results = []
        for i in ready:
            try:
                results.append(upscale_many(model, [opened[i][0]], **options)[0])
            except ValueError as err:
                results.append(None)
                reasons[i] = str(err)
            except RuntimeError as err:  # e.g. out of memory even at the smallest tile: this file fails, the rest go on
                results.append(None)
                reasons[i] = f"{type(err).__name__}: {err}"
    for i, result in zip(ready, results):
        if result is None:
            continue
        try:
            save_image_atomic(result, jobs[i].target, OUTPUT_FORMATS[args.format])
        except OSError as err:
            reasons[i] = f"cannot write {jobs[i].target}: {err}"
        except ValueError as err:  # a 16-bit colour image asked for in a format that cannot hold it
            reasons[i] = str(err)
    return reasons


def _distributed_state():
    """Accelerate's PartialState when launched as several processes (`accelerate launch`, torchrun), else None.
    Imported only then: plain `bsr-hub upscale` needs no accelerate."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch

    from ..core.extras import require

    PartialState = require("accelerate", extra="train", what="upscaling over several processes").PartialState

    # Without cpu=True, PartialState on a machine without CUDA sets up no process group at all, and every process
    # would upscale every file alone (racing for the same outputs): ENVIRONMENT.md, "Accelerate on a CPU".
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
    state = PartialState(cpu=use_cpu)
    world = int(os.environ["WORLD_SIZE"])
    if state.num_processes != world:
        raise ValueError(f"launched as {world} processes, but accelerate set up {state.num_processes}")
    return state


def cmd_upscale(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..models.hub import default_checkpoint, list_checkpoints
    from ..inference.api import check_precision, resolve_backend

    def report(message: str) -> None:
        tqdm.write(message, file=sys.stderr)  # above the progress bar, not through it

    try:
        state = _distributed_state()  # before the model: under accelerate launch each process has its own device
        device = str(state.device) if state is not None and args.device == "auto" else args.device
        name = args.model or default_checkpoint(args.scale or 2)
        model = _load_model(name, device, args.dtype)
        if args.scale is not None and model.scale != args.scale:
            raise ValueError(f"--scale {args.scale} asks for x{args.scale}, but {name} is a x{model.scale} model "
                             f"(bundled x{args.scale}: {', '.join(list_checkpoints(args.scale)) or 'none'})")
        check_precision(model)  # fp16 on a CPU fails here, once, not on every image
        resolve_backend(model, args.backend)  # onnxruntime on a GPU fails here too
    except (ValueError, OSError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out_dir = Path(args.output)
    same = [i for i in args.inputs if Path(i).is_dir() and Path(i).resolve() == out_dir.resolve()]
    if same:  # its images would be skipped as outputs; said as what it is, not as "no input files"
        print(f"error: the output folder is the input folder ({same[0]}): give another -o, so that the results "
              "neither mix with nor replace the originals", file=sys.stderr)
        return 2
    jobs = plan_jobs(args.inputs, out_dir, "." + args.format, args.overwrite)
    if not jobs:
        print("error: no input files", file=sys.stderr)
        return 2
    rank, world = (state.process_index, state.num_processes) if state is not None else (0, 1)
    if state is not None:
        # Every process plans the same list (sorted), and nobody writes before all have planned: otherwise a slow
        # process would see a fast one's fresh outputs and skip them as "already there".
        state.wait_for_everyone()
    share = jobs[rank::world]  # round robin: every file in exactly one share
    failed = skipped = done = 0
    desc = f"upscaling x{model.scale}" + (f" (process 1 of {world}, {len(jobs)} files in all)" if world > 1 else "")
    progress = tqdm(total=len(share), desc=desc, unit="image", disable=args.quiet or rank != 0)
    i = 0
    while i < len(share):
        job = share[i]
        if job.skip is not None or job.failure is not None:
            if job.skip is not None:
                report(f"skipped {job.source}: {job.skip}")
                skipped += 1
            else:
                report(f"failed {job.source}: {job.failure}")
                failed += 1
            progress.update(1)
            i += 1
            continue
        group = [job]  # up to --batch-size runnable files in a row; upscale_many batches those of one size
        while len(group) < args.batch_size and i + len(group) < len(share):
            following = share[i + len(group)]
            if following.skip is not None or following.failure is not None:
                break
            group.append(following)
        for member, reason in zip(group, _upscale_files(model, group, args)):
            if reason is not None:
                report(f"failed {member.source}: {reason}")
                failed += 1
            else:
                done += 1
        progress.update(len(group))
        i += len(group)
    progress.close()
    if state is not None:
        from accelerate.utils import gather_object

        counts = gather_object([(done, skipped, failed)])  # every process's counts, on every process
        done, skipped, failed = (sum(c[k] for c in counts) for k in range(3))
        state.wait_for_everyone()
        # Tear the process group down before exit: left to the interpreter's shutdown, gloo's threads sometimes
        # abort the process ("terminate called without an active exception") after all the work is done.
        state.destroy_process_group()
    if rank == 0:
        summary = f"{done} upscaled into {out_dir}" + (f" by {world} processes" if world > 1 else "")
        if skipped:
            summary += f", {skipped} skipped (already there)"
        if failed:
            summary += f", {failed} failed"
        print(summary, file=sys.stderr)
    return 1 if failed else 0


def model_info(model) -> dict:
    """What `bsr-hub info` prints: enough to tell which network a checkpoint holds."""
    return {
        "preset": model.config.preset,
        "scale": model.scale,
        "parameters": model.num_parameters(),
        "conv_layers": model.num_conv_layers(),
        "config": model.config.to_dict(),
    }


def cmd_info(args: argparse.Namespace) -> int:
    from ..models.configuration import list_presets
    from ..models.modeling import BSRModel

    try:
        if args.model in list_presets():
            model = BSRModel.from_preset(args.model, scale=args.scale)
        else:
            model = BSRModel.from_pretrained(args.model)
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
    from ..models.hub import bundled_checkpoints
    from ..models.modeling import BSRModel
    from ..models.records import EvalResults, trained_for

    rows = []
    for name, folder in bundled_checkpoints().items():
        model = BSRModel.from_pretrained(folder)
        results = EvalResults.load(folder).results
        psnr = {r["benchmark"]: round(r["psnr"], 2) for r in results
                if r["scale"] == model.scale and r["degradation"] == "BI" and not r["self_ensemble"]}
        rows.append({"name": name, "preset": model.config.preset, "scale": model.scale,
                     "parameters": model.num_parameters(), "psnr": psnr, "trained_for": trained_for(folder)})
    return rows


def cmd_list(args: argparse.Namespace) -> int:
    rows = zoo_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from ..models.records import TRAINED_FOR

    benchmarks = ("Set5", "Set14", "BSD100")
    print(f"{'name':20} {'scale':>5} {'parameters':>11}  {'Y-PSNR ' + ' / '.join(benchmarks):30}  for")
    for r in rows:
        scores = " / ".join(f"{r['psnr'][b]:.2f}" if b in r["psnr"] else "-" for b in benchmarks)
        print(f"{r['name']:20} {'x' + str(r['scale']):>5} {r['parameters']:>11,}  {scores:30}  {r['trained_for']}")
    print("\nfor: " + "; ".join(f"{k} = {v}" for k, v in TRAINED_FOR.items()))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo.app import DemoSettings, build_demo, serve

    try:
        settings = DemoSettings.from_env(
            models=args.model or None, max_megapixels=args.max_megapixels, concurrency=args.concurrency
        )
        demo = build_demo(settings)
    except (ValueError, OSError, ImportError) as err:  # a bad --model, a bad setting, gradio not installed
        print(f"error: {err}", file=sys.stderr)
        return 2
    serve(demo, server_name=args.host, server_port=args.port)  # blocks until Ctrl-C
    return 0


def cmd_degrade(args: argparse.Namespace) -> int:
    from ..data.degradations import degrade_files

    done, problems = degrade_files(args.inputs, args.output, args.scale, args.degradation, args.overwrite)
    for line in problems:
        print(line, file=sys.stderr)
    print(f"{done} LR images (x{args.scale}, {args.degradation}) written into {args.output}", file=sys.stderr)
    nothing_to_do = not done and not any(p.startswith("skipped") for p in problems)
    return 1 if any(p.startswith("failed") for p in problems) or nothing_to_do else 0  # skipped-only is success


# ---------------------------------------------------------------------------------------------- eval


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The evaluation flags, shared by `evaluate.py` and `bsr-hub eval`."""
    from ..data.benchmarks import DEFAULT_BENCHMARKS
    from ..data.degradations import DEGRADATIONS

    parser.add_argument("--model", required=True, help="bundled name, local folder, Hub repo id, or 'bicubic'")
    parser.add_argument(
        "--suite", default="published", choices=["published", "robustness"],
        help="published (default): the papers' protocol, LR by MATLAB bicubic. robustness: LR by other resizers "
             "(PIL, OpenCV, F.interpolate) alone and with JPEG 90/75, each next to bicubic upscaling of the same LR "
             "(default benchmarks Set5 Set14; --update-card writes the table under the card's Limitations)",
    )
    parser.add_argument(
        "--benchmarks", nargs="+", default=None,
        help=f"folders under --data-dir (default: {' '.join(DEFAULT_BENCHMARKS)}); with --dataset, its label",
    )
    parser.add_argument("--data-dir", default=None, help="folder of benchmark folders of HR images")
    parser.add_argument("--dataset", default=None, help="a Hub dataset id with an image column, instead of --data-dir")
    parser.add_argument("--split", default="test", help="split of --dataset (default test)")
    parser.add_argument("--image-column", default="image", help="image column of --dataset (default image)")
    parser.add_argument("--scale", type=int, default=None, help="scale (default: the model's; required for bicubic)")
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

    from ..data.benchmarks import DEFAULT_BENCHMARKS

    parts = ["--model", args.model]
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
    from ..data.benchmarks import DEFAULT_BENCHMARKS, EvaluationError, load_benchmark
    from ..core.extras import MissingExtraError, require

    try:  # every benchmark is read through datasets: say so now, in one line, not as a traceback later
        datasets = require("datasets", extra="train", what="evaluation")
    except MissingExtraError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.quiet:
        datasets.disable_progress_bars()
    if args.suite == "robustness":
        return eval_robustness(args, prog)
    from ..evaluation.protocol import BICUBIC, evaluate_benchmarks, launch_accelerator, load_model, markdown_table
    from ..models.records import check_card_target, update_card

    accelerator, device = launch_accelerator(args.device)
    is_main = accelerator is None or accelerator.is_main_process
    try:
        model = load_model(args.model, args.scale, device)
        if args.update_card:
            check_card_target(args.update_card, args.model, model)  # before hours of evaluation, not after
        scale = args.scale or model.scale
        if args.dataset:
            if args.benchmarks and len(args.benchmarks) > 1:
                raise EvaluationError("with --dataset give at most one --benchmarks name (the label of that dataset)")
            names = args.benchmarks or [args.dataset.rstrip("/").split("/")[-1]]
        else:
            names = args.benchmarks or list(DEFAULT_BENCHMARKS)
        benchmarks = [
            load_benchmark(n, args.data_dir, dataset=args.dataset, split=args.split, image_column=args.image_column)
            for n in names
        ]
        results = evaluate_benchmarks(
            model, benchmarks, scale, args.degradation, with_bicubic=args.update_card is not None and args.model != BICUBIC,
            self_ensemble=args.self_ensemble, tile=args.tile, save_dir=args.save_images, accelerator=accelerator,
            progress=not args.quiet,
        )
    except (OSError, ValueError) as err:  # EvaluationError and RecordError are ValueErrors
        print(f"error: {err}", file=sys.stderr)
        return 2

    if not is_main:
        return 0
    print(markdown_table(args.model, results))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(args.output, json.dumps({"model": args.model, "results": results}, indent=2) + "\n")
    status = 0
    for r in results:
        for f in r.get("failed", []):
            print(f"error: {r['benchmark']}: {f['error']}", file=sys.stderr)
            status = 1
    if args.update_card:
        try:
            path = update_card(args.update_card, results, evaluation_command=eval_command_line(args, scale, prog))
            print(f"updated {path}", file=sys.stderr)
        except (OSError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    return status


def eval_robustness(args: argparse.Namespace, prog: str) -> int:
    """`--suite robustness`: score, print, and write the JSON / the card's Limitations table (one process)."""
    import shlex
    import time

    from ..data.benchmarks import EvaluationError, load_benchmark
    from ..evaluation.protocol import load_model, resolve_device
    from ..models.records import RecordError, check_card_target, update_card
    from ..evaluation.robustness import (
        DEFAULT_SUITE_BENCHMARKS,
        evaluate_robustness,
        markdown_table,
        results_document,
        robustness_suite,
    )

    if args.self_ensemble or args.degradation != "BI" or args.dataset:
        print("error: --suite robustness makes its own LR (no --degradation, --self-ensemble or --dataset)",
              file=sys.stderr)
        return 2
    try:
        model = load_model(args.model, args.scale, resolve_device(args.device))
        if args.update_card:
            check_card_target(args.update_card, args.model, model)
        scale = args.scale or model.scale
        names = args.benchmarks or list(DEFAULT_SUITE_BENCHMARKS)
        benchmarks = [load_benchmark(n, args.data_dir) for n in names]
        suite, skipped = robustness_suite()
        started = time.perf_counter()
        skipped_images: list[dict[str, str]] = []
        rows = evaluate_robustness(model, benchmarks, scale, suite, tile=args.tile, progress=not args.quiet,
                                   skipped_images=skipped_images)
    except (EvaluationError, RecordError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    words = ["--suite", "robustness", "--model", args.model, "--benchmarks", *names, "--data-dir", str(args.data_dir),
             "--scale", str(scale)]
    command = " ".join([prog, *map(shlex.quote, words)])
    document = results_document(args.model, scale, rows, skipped, command, skipped_images)
    document["wall_time_s"] = round(time.perf_counter() - started, 1)
    print(markdown_table(document))
    for resizer, why in skipped.items():
        print(f"skipped {resizer}: {why}", file=sys.stderr)
    for image in skipped_images:
        print(f"skipped {image['benchmark']}/{image['name']}: {image['error']}", file=sys.stderr)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(args.output, json.dumps(document, indent=2) + "\n")
    if args.update_card:
        try:
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


# ---------------------------------------------------------------------------------------------- pic-stats


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
    from ..core.extras import MissingExtraError, require
    from ..data.pic_stats import compute_pic_stats, plot_pic_stats

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


def cmd_export(args: argparse.Namespace) -> int:
    from ..models.modeling import BSRModel

    try:
        from ..models.export import export_onnx
        from ..core.extras import require

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
    from ..demo.space import export_space

    try:
        done = export_space(args.output, args.model or (), wheel=args.wheel, overwrite=args.overwrite)
    except (ValueError, OSError, ImportError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    served = ", ".join(f"{m.name} (x{m.scale})" for m in done.models)
    print(f"wrote a Space serving {served} into {done.folder} (wheel {done.wheel.name}); "
          f"try it: cd {done.folder} && pip install -r requirements.txt && python app.py", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------- train.py


def _none_or(kind: Any) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null") else kind(text)

    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


def train_parser() -> argparse.ArgumentParser:
    """`train.py`'s flags: `--scale`, `--seed`, `--resume`, and one `--section.setting` per setting of each typed
    section (`--optim.max_steps 400`), each with its bsr_hub 0.1 flat spelling as an alias (`--max_steps 400`).
    Only flags actually given override the recipe (default SUPPRESS); each arrives under its dotted name."""
    import dataclasses

    from ..training.run import FLAT_NAMES, OLD_SAMPLER_NAMES, RUN_WIDE, SECTIONS, TrainConfig

    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train a BSR model (single process, or several with `accelerate launch`). Settings come from "
                    "the dataclass defaults, then a YAML recipe (--config; one mapping per section, e.g. "
                    "`optim: {max_steps: 400}`), then these flags.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", help="a YAML recipe (configs/*.yaml); flags given here override it")
    old_names = {new: old for old, new in FLAT_NAMES.items() if old != "sampler"}
    run, docs = parser.add_argument_group("the run"), field_docs(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name not in SECTIONS:
            _add_setting(run, TrainConfig, f.name, f.name, (), docs.get(f.name))
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"{section}: {_first_line(cls.__doc__)}")
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            if f.name in RUN_WIDE.get(section, ()):
                continue  # the run's own --scale and --seed
            dotted = f"{section}.{f.name}"
            aliases = (old_names[dotted],) if dotted in old_names else ()
            _add_setting(group, cls, f.name, dotted, aliases, docs.get(f.name))
    parser.add_argument("--sampler", choices=tuple(OLD_SAMPLER_NAMES), dest="sampler",
                        help="the bsr_hub 0.1 spelling of --rfs.mode (rfs-indexed = indexed, ...)")
    return parser


def _first_line(doc: str | None) -> str:
    """A section's title: its docstring up to the first full stop or colon."""
    return re.split(r"[.:]", " ".join((doc or "").split()), maxsplit=1)[0]


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a config dataclass (the attribute docstrings its source holds), for
    --help: one place says what a setting means, the code."""
    import ast
    import inspect
    import textwrap

    try:
        body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    except (OSError, TypeError, IndexError, AttributeError):
        return {}
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split()).replace("%", "%%")
    return docs


def _add_setting(group: Any, cls: type, name: str, dotted: str, aliases: tuple[str, ...], doc: str | None) -> None:
    """One flag per setting, parsed by its annotation: bool -> --x/--no-x, list -> several values (a repeated
    flag adds to them), a mapping or a nested section (degradation_mix) -> JSON, `| None` -> also accepts "none".
    A union is parsed as its first type (`list[str] | str`: a list, which the section may turn back into one
    string)."""
    import dataclasses
    import typing

    from ..training.run import field_type

    kind, optional = field_type(cls, name)
    flags = [f"--{dotted}", *(f"--{a}" for a in aliases)]
    origin = typing.get_origin(kind)
    if kind is bool:
        group.add_argument(*flags, dest=dotted, action=argparse.BooleanOptionalAction, help=doc)
    elif origin in (list, tuple):
        item = typing.get_args(kind)[0]
        group.add_argument(*flags, dest=dotted, nargs="*", action="extend", type=item, metavar=item.__name__.upper(),
                           help=doc)
    elif origin is dict or dataclasses.is_dataclass(kind):
        group.add_argument(*flags, dest=dotted, type=_none_or(json.loads) if optional else json.loads,
                           metavar="JSON", help=f"(a JSON object) {doc or ''}")
    elif origin is typing.Literal:
        group.add_argument(*flags, dest=dotted, choices=typing.get_args(kind), help=doc)
    else:
        group.add_argument(*flags, dest=dotted, type=_none_or(kind) if optional else kind,
                           metavar=kind.__name__.upper(), help=doc)


def load_train_config(argv: Sequence[str] | None = None) -> tuple[Any, str | None]:
    """`train.py`'s command line -> (TrainConfig, recipe path): defaults, then the YAML recipe, then flags."""
    from ..training.run import resolve_config

    args = vars(train_parser().parse_args(argv))
    recipe = args.pop("config", None)
    return resolve_config(recipe, args), recipe


def parse_tile_arg(text: str) -> int | str | None:
    """argparse type for --tile: "auto", 0 (one pass) or a positive number of LR pixels."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto', 0 (one pass) or a tile size in LR pixels, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a tile size cannot be negative, got {value}")
    return value or None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from ..inference.api import BACKENDS

    parser = argparse.ArgumentParser(prog="bsr-hub", description="BSR super-resolution models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("upscale", help="super-resolve image files or folders (recursively)")
    p.add_argument("inputs", nargs="+", help="image files and/or folders")
    p.add_argument("-o", "--output", required=True, help="output folder (folder structure is kept)")
    p.add_argument("--model", default=None,
                   help="bundled name (see `bsr-hub list`), local folder or Hub repo id (default: bsr-lite-x<scale>, "
                        "made for benchmark-style inputs; for photos of unknown origin use bsr-lite-x2-robust)")
    p.add_argument("--scale", type=int, default=None, choices=[2, 3, 4],
                   help="upscaling factor; without --model it picks the bundled bsr-lite of that scale (default 2)")
    p.add_argument("--tile", type=parse_tile_arg, default="auto",
                   help="auto (default: whole image or cache-sized tiles, chosen per image and device), "
                        "0 (one pass over the whole image), or a tile size in input pixels "
                        "(bounds the network's memory)")
    p.add_argument("--backend", default="auto", choices=["auto", *BACKENDS],
                   help="how the network runs (default auto: the fastest measured on a CPU, eager elsewhere)")
    p.add_argument("--batch-size", type=_positive_int, default=1,
                   help="images of equal size run through the network together (default 1: on a 2-core CPU "
                        "batches of 4 and 8 measured no faster, bench/results/batching.md; try more on a GPU)")
    p.add_argument("--self-ensemble", action="store_true", help="average the 8 flips/rotations (8x slower)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps, ... (under accelerate launch: its device)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--format", default="png", choices=sorted(OUTPUT_FORMATS), help="output format (default png)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_upscale)

    p = sub.add_parser("list", help="the bundled checkpoints: scale, parameters and measured Y-PSNR")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="describe a model: preset, scale, parameters, conv layers")
    p.add_argument("model", help="bundled name, local folder, Hub repo id, or a preset name")
    p.add_argument("--scale", type=int, default=2, help="scale, when MODEL is a preset name")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="serve the Gradio demo on localhost (needs bsr-hub[demo])")
    p.add_argument("--model", action="append", help="checkpoint to offer (repeatable; default: every bundled one)")
    p.add_argument("--host", default=None, help="address to bind (default GRADIO_SERVER_NAME, else 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default GRADIO_SERVER_PORT, else 7860 or the next free)")
    p.add_argument("--max-megapixels", type=float, default=None, help="largest input accepted (default 2)")
    p.add_argument("--concurrency", type=int, default=None, help="upscales running at once (default 1)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("degrade", help="make LR images (MATLAB-exact BI, or BD) from HR files or folders")
    p.add_argument("inputs", nargs="+", help="HR image files and/or folders")
    p.add_argument("-o", "--output", required=True, help="output folder (same names as PNG, structure kept)")
    p.add_argument("--scale", type=int, required=True, help="downscaling factor (2, 3, 4, ...)")
    p.add_argument("--degradation", default="BI", choices=["BI", "BD"], help="BI bicubic (default) or BD blur")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=cmd_degrade)

    p = sub.add_parser("eval", help="PSNR/SSIM on benchmarks under the published protocol (needs bsr-hub[train])")
    add_eval_arguments(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("pic-stats", help="PIC balance report: natural vs RFS-sampled patches (needs bsr-hub[train])")
    add_pic_stats_arguments(p)
    p.set_defaults(func=cmd_pic_stats)

    p = sub.add_parser("export", help="write a model as ONNX for ONNX Runtime / OpenCV (needs bsr-hub[export])")
    p.add_argument("model", help="bundled name, local folder or Hub repo id")
    p.add_argument("-o", "--output", required=True, help="the .onnx file; MODEL.json with the scale goes beside it")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check after writing")
    p.set_defaults(func=cmd_export)

    space = sub.add_parser("space", help="Hugging Face Space tools").add_subparsers(dest="space_command", required=True)
    p = space.add_parser("export", help="write a self-contained Space folder (app, README, wheel, checkpoints)")
    p.add_argument("output", help="the Space folder to write")
    p.add_argument("--model", action="append", help="checkpoint to serve (repeatable; default: every bundled one)")
    p.add_argument("--wheel", default=None, help="a bsr_hub wheel to ship (default: built from this checkout)")
    p.add_argument("--overwrite", action="store_true", help="replace the Space files in a non-empty folder")
    p.set_defaults(func=cmd_space_export)

    return parser


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """SIGTERM (kill, a job scheduler, a container stopping) ends a command through its `finally` blocks, as
    Ctrl-C does, instead of killing it where it stands: a file being written is then removed, not left behind as
    a hidden .NAME.xxxx.tmp. Exit status 143, as a process ended by SIGTERM reports."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with sigterm_as_exit():
        return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
