"""`bsr-hub upscale`: super-resolve image files and folders, in batches, optionally over several processes
(`accelerate launch`), with its flags (`add_parser`) and their value types (`parse_tile_arg`, shared with
`bsr-hub eval`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ..core import check_launch, describe_process, launched_world_size, plan_jobs, save_image_atomic

OUTPUT_FORMATS = {"png": "PNG", "tiff": "TIFF", "webp": "WEBP", "jpg": "JPEG"}


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


def _load_model(name: str, device: str, dtype: str):
    import torch

    from ..models import BSRModel

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ValueError(f"--device {device}: not a device name (use auto, cpu, cuda, cuda:1, mps, ...)") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(kind, False):
        raise ValueError(f"--device {device}: no {kind.upper()} device is available here (use --device cpu or auto)")
    from ..core.cpu import describe_cpu, has_native_bf16

    if kind == "cpu" and dtype != "float32" and not (dtype == "bfloat16" and has_native_bf16()):
        # Said in flags: check_precision's advice (model.float()) is for Python callers. Checked before loading.
        bf16 = f"; bf16 runs on a CPU with avx512_bf16, which this one ({describe_cpu()}) lacks" if dtype == "bfloat16" else ""
        raise ValueError(f"--dtype {dtype} needs a GPU (--device cuda); on the CPU keep --dtype float32 "
                         f"(half precision is unsupported or 10-200x slower there{bf16})")
    model = BSRModel.from_pretrained(name, map_location=device)
    return model.to(dtype=getattr(torch, dtype))


def _open_image(src: Path):
    """The decoded image, or the reason it cannot be read. A PNG with 16 bits per colour sample comes as a uint16
    array (Pillow would narrow it to 8 bits), upscaled and written at full depth."""
    from ..core import ImageReadError, open_image, read_png_16bit

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
    from ..inference import upscale_many

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
    check_launch()  # `accelerate launch --cpu --num_machines 2`: each process would upscale every file alone
    if launched_world_size() <= 1:
        return None
    import torch

    from ..core import require

    PartialState = require("accelerate", extra="train", what="upscaling over several processes").PartialState

    # Without cpu=True, PartialState on a machine without CUDA sets up no process group at all, and every process
    # would upscale every file alone (racing for the same outputs): ENVIRONMENT.md, "Accelerate on a CPU".
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
    state = PartialState(cpu=use_cpu)
    world = launched_world_size()
    if state.num_processes != world:
        raise ValueError(f"launched as {world} processes, but accelerate set up {state.num_processes}")
    return state


def _report(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)  # above the progress bar, not through it


def _prepare_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """The distributed state (None in one process) and the model the flags ask for, checked against them: a bad
    --model, --scale, --device, --dtype or --backend fails here (ValueError, OSError, ImportError), before any
    file is read. Over several processes they all fail together, naming the machine where it failed (a --model
    folder on one machine's own disk only): none is left waiting for the others."""
    state = _distributed_state()  # before the model: under accelerate launch each process has its own device
    try:
        model, error = _checked_model(args, state), None
    except (ValueError, OSError, ImportError) as err:
        if state is None:
            raise
        model, error = None, str(err)
    if state is not None:
        from accelerate.utils import gather_object

        failed = [(e, place) for e, place in gather_object([(error, describe_process(state))]) if e]
        if failed:
            state.wait_for_everyone()
            state.destroy_process_group()
            if len(failed) == state.num_processes and len({e for e, _ in failed}) == 1:
                raise ValueError(failed[0][0])  # the same on every machine: the flags, not a machine
            raise ValueError("; ".join(f"on {place}: {e}" for e, place in failed))
    return state, model


def _checked_model(args: argparse.Namespace, state: Any) -> Any:
    from ..inference import check_precision, resolve_backend
    from ..models import DEFAULT_REASONS, default_checkpoint, list_checkpoints

    device = str(state.device) if state is not None and args.device == "auto" else args.device
    name = args.model or default_checkpoint(args.scale or 2, "photos")
    if not args.model and (state is None or state.is_main_process):
        benchmark = default_checkpoint(args.scale or 2, "benchmark")
        _report(f"model: {name}, the default when none is named ({DEFAULT_REASONS['photos']}; "
                f"for MATLAB-bicubic benchmark LR: --model {benchmark})")
    model = _load_model(name, device, args.dtype)
    if args.scale is not None and model.scale != args.scale:
        raise ValueError(f"--scale {args.scale} asks for x{args.scale}, but {name} is a x{model.scale} model "
                         f"(bundled x{args.scale}: {', '.join(list_checkpoints(args.scale)) or 'none'})")
    check_precision(model)  # fp16 on a CPU fails here, once, not on every image
    resolve_backend(model, args.backend)  # onnxruntime on a GPU fails here too
    return model


def _plan_upscale_jobs(args: argparse.Namespace, out_dir: Path) -> list | None:
    """Every input file with its target under out_dir (or why it is skipped / fails); None, after printing why,
    when there is nothing sensible to do."""
    same = [i for i in args.inputs if Path(i).is_dir() and Path(i).resolve() == out_dir.resolve()]
    if same:  # its images would be skipped as outputs; said as what it is, not as "no input files"
        print(f"error: the output folder is the input folder ({same[0]}): give another -o, so that the results "
              "neither mix with nor replace the originals", file=sys.stderr)
        return None
    jobs = plan_jobs(args.inputs, out_dir, "." + args.format, args.overwrite)
    if not jobs:
        print("error: no input files", file=sys.stderr)
        return None
    return jobs


def _runnable_group(share: list, i: int, batch_size: int) -> list:
    """share[i] and the runnable files right after it: up to --batch-size runnable files in a row (upscale_many
    batches those of one size)."""
    group = [share[i]]
    while len(group) < batch_size and i + len(group) < len(share):
        following = share[i + len(group)]
        if following.skip is not None or following.failure is not None:
            break
        group.append(following)
    return group


def _upscale_share(model, share: list, args: argparse.Namespace, progress: Any) -> tuple[int, int, int]:
    """Upscale this process's files, reporting each skip and failure: (done, skipped, failed)."""
    failed = skipped = done = 0
    i = 0
    while i < len(share):
        job = share[i]
        if job.skip is not None or job.failure is not None:
            if job.skip is not None:
                _report(f"skipped {job.source}: {job.skip}")
                skipped += 1
            else:
                _report(f"failed {job.source}: {job.failure}")
                failed += 1
            progress.update(1)
            i += 1
            continue
        group = _runnable_group(share, i, args.batch_size)
        for member, reason in zip(group, _upscale_files(model, group, args)):
            if reason is not None:
                _report(f"failed {member.source}: {reason}")
                failed += 1
            else:
                done += 1
        progress.update(len(group))
        i += len(group)
    return done, skipped, failed


def _agree_on_jobs(state: Any, jobs: list | None) -> list | None:
    """The planned files when every process planned the same ones (the shares are cut from that list: each file in
    exactly one share); else None on every process, after the main process has said which saw what. Machines
    that see different inputs (disks of their own with different copies), or one with nothing to do, would
    otherwise upscale some files twice and others never, or leave the rest waiting for it."""
    import hashlib

    from accelerate.utils import gather_object

    names = None if jobs is None else "\n".join(str(job.source) for job in jobs)
    digest = None if names is None else hashlib.sha256(names.encode()).hexdigest()
    plans = gather_object([(digest, len(jobs or []), describe_process(state))])
    if plans[0][0] is not None and all(p[0] == plans[0][0] for p in plans):
        return jobs
    if state.is_main_process and any(p[0] is not None for p in plans):
        seen = "; ".join(f"{place}: {'nothing to do' if d is None else f'{n} files'}" for d, n, place in plans)
        print(f"error: the processes did not plan the same files ({seen}): every machine must see the same inputs "
              "(one shared folder, or the same copy on each)", file=sys.stderr)
    state.wait_for_everyone()
    state.destroy_process_group()  # as at a normal end: gloo's threads must not outlive the work
    return None


def _gather_counts(state: Any, counts: tuple[int, int, int]) -> tuple[int, int, int]:
    """(done, skipped, failed) summed over every process, on every process; the process group is torn down."""
    from accelerate.utils import gather_object

    gathered = gather_object([counts])  # every process's counts, on every process
    done, skipped, failed = (sum(c[k] for c in gathered) for k in range(3))
    state.wait_for_everyone()
    # Tear the process group down before exit: left to the interpreter's shutdown, gloo's threads sometimes
    # abort the process ("terminate called without an active exception") after all the work is done.
    state.destroy_process_group()
    return done, skipped, failed


def _print_summary(done: int, skipped: int, failed: int, out_dir: Path, world: int) -> None:
    summary = f"{done} upscaled into {out_dir}" + (f" by {world} processes" if world > 1 else "")
    if skipped:
        summary += f", {skipped} skipped (already there)"
    if failed:
        summary += f", {failed} failed"
    print(summary, file=sys.stderr)
    if failed and world > 1:
        # Every process exits 1 so that the launch's status says so; torchrun then prints a "FAILED" table of
        # exit codes (with a Python traceback too unless `accelerate launch --quiet`): name it before it comes.
        print(f"exit status 1 on every process ({failed} file(s) failed, listed above): the launcher's FAILED report "
              "below is that status, not a crash", file=sys.stderr)


def cmd_upscale(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    try:
        state, model = _prepare_model(args)
    except (ValueError, OSError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out_dir = Path(args.output)
    jobs = _plan_upscale_jobs(args, out_dir)
    if state is not None:
        # Nobody writes before all have planned (the gather is a barrier): otherwise a slow process would see a
        # fast one's fresh outputs and skip them as "already there".
        jobs = _agree_on_jobs(state, jobs)
    if jobs is None:
        return 2
    rank, world = (state.process_index, state.num_processes) if state is not None else (0, 1)
    share = jobs[rank::world]  # round robin: every file in exactly one share
    desc = f"upscaling x{model.scale}" + (f" (process 1 of {world}, {len(jobs)} files in all)" if world > 1 else "")
    progress = tqdm(total=len(share), desc=desc, unit="image", disable=args.quiet or rank != 0)
    done, skipped, failed = _upscale_share(model, share, args, progress)
    progress.close()
    if state is not None:
        done, skipped, failed = _gather_counts(state, (done, skipped, failed))
    if rank == 0:
        _print_summary(done, skipped, failed, out_dir, world)
    return 1 if failed else 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """`bsr-hub upscale` and its flags."""
    from ..inference import BACKENDS

    p = subparsers.add_parser("upscale", help="super-resolve image files or folders (recursively)")
    p.add_argument("inputs", nargs="+", help="image files and/or folders")
    p.add_argument("-o", "--output", required=True, help="output folder (folder structure is kept)")
    p.add_argument("--model", default=None,
                   help="bundled name (see `bsr-hub list`), local folder or Hub repo id (default: "
                        "bsr-lite-x<scale>-robust, trained on many resizers, noise and JPEG for photos of unknown "
                        "origin; bsr-lite-x<scale> is for MATLAB-bicubic LR as in the papers' benchmarks, and does "
                        "worse than bicubic on LR from OpenCV's INTER_CUBIC or INTER_LINEAR)")
    p.add_argument("--scale", type=int, default=None, choices=[2, 3, 4],
                   help="upscaling factor; without --model it picks bsr-lite-x<scale>-robust (default 2)")
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
