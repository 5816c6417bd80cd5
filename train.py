"""Train a BSR model with Accelerate: one CPU, one GPU, or many GPUs and machines, unchanged.

    accelerate launch train.py                                   # a 5-minute demonstration on bundled photos
    accelerate launch train.py --config configs/lite_x2.yaml     # a recipe; any flag overrides it
    accelerate launch train.py --config configs/lite_x2.yaml --resume latest

The order is Accelerate's canonical one: accelerator, model, optimizer, data, scheduler, prepare, resume,
loop (accumulate, clip, step, EMA), checkpoint, validate, save, evaluate, push. The run's life (resume point,
resume guard, history, EMA, checkpoints, the training.json record with its lineage) is bsr_hub.training's
TrainingRun (training/run.py), its end the final evaluation and card (training/finish.py); the flags are
bsr_hub.commands.train's (`load_train_config`). docs/ARCHITECTURE.md maps the rest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import shlex
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bsr_hub import BSRModel
from bsr_hub.commands.train import load_train_config
from bsr_hub.core.cpu import describe_cpu, native_bf16
from bsr_hub.core.launch import check_launch, launched_world_size
from bsr_hub.training import (
    HybridLoss,
    LossMeter,
    StopRequest,
    Teacher,
    TrainConfig,
    TrainingRun,
    check_train_dir,
    choose_kernels,
    describe_training_data,
    end_data_workers_at_exit,
    final_evaluation,
    fp32_forward,
    ignore_stop_signals,
    launched_by_a_launcher,
    non_finite_message,
    publish,
    step_decay,
)
from bsr_hub.training.precision import AUTO, settle_mixed_precision

HELD_OUT_PHOTO = "astronaut"  # the bundled photo kept out of the demonstration's training, to validate on


def training_data(cfg: TrainConfig):
    """The training source and the validation benchmark (or None)."""
    import datasets

    from bsr_hub.core.examples import example_images
    from bsr_hub.data.benchmarks import Benchmark, ImageRecord, load_benchmark

    if cfg.data.uses_bundled_photos:
        photos = example_images()
        train = [str(p) for p in photos if p.stem != HELD_OUT_PHOTO]
        source = datasets.Dataset.from_dict({"image": train}).cast_column("image", datasets.Image())
        held = [ImageRecord(name=p.stem, path=str(p)) for p in photos if p.stem == HELD_OUT_PHOTO]
        validation = Benchmark(name=f"{HELD_OUT_PHOTO} (bundled, held out)", images=held)
    else:
        source = cfg.data.train_dir or cfg.data.dataset_name  # several folders: the sampler draws from their union
        validation = None
    if cfg.validation.dir is not None:
        folder = Path(cfg.validation.dir)
        validation = load_benchmark(folder.name, folder.parent)
    return source, validation


def validation_notice(cfg: TrainConfig) -> str | None:
    """What goes unmeasured when the user's own data comes without a validation folder, and how to add one; said at
    the start, not discovered in a card that reads "Not evaluated yet" at the end. None when nothing is missing."""
    if cfg.data.uses_bundled_photos or cfg.validation.dir is not None:
        return None
    data = (f"--data.train_dir {' '.join(cfg.data.train_dirs)}" if cfg.data.train_dir
            else f"--data.dataset_name {cfg.data.dataset_name}")
    if cfg.validation.eval_dirs:
        missing = ("nothing is validated while it trains (the evaluation at the end, on --validation.eval_dirs, "
                   "still runs)")
    else:
        missing = ("nothing is validated while it trains and nothing is evaluated at the end: its card will say "
                   "\"Not evaluated yet\" and show no results next to bicubic")
    return (
        f"warning: {data} with no --validation.dir: {missing}. To validate, add --validation.dir FOLDER, a folder of "
        "HR images that are not in the training data: a benchmark (e.g. ../shared/data/benchmarks/Set5), or a few of "
        "your own images moved out of the training folder into one of their own (the demonstration run holds out "
        f"the bundled {HELD_OUT_PHOTO} photo so); --validation.eval_dirs FOLDER ... evaluates on benchmarks at the end."
    )


def build_sampler(cfg: TrainConfig, source, accelerator, start_batch: int):
    from bsr_hub.data.sampling import RFSSampler

    return RFSSampler(source, cfg.rfs, cfg.data, rank=accelerator.process_index,
                      world_size=accelerator.num_processes, start_batch=start_batch)


def check_hub_access(cfg: TrainConfig) -> None:
    """Fail at start-up, not after hours of training, when the model cannot be pushed."""
    from huggingface_hub import HfApi

    try:
        HfApi().create_repo(cfg.output.hub_model_id, private=cfg.output.hub_private, exist_ok=True)
    except Exception as err:  # offline, no token, no permission: all stop the run here
        raise SystemExit(
            f"error: --output.push_to_hub: cannot create or reach {cfg.output.hub_model_id} on the Hugging Face Hub "
            f"({type(err).__name__}: {' '.join(str(err).split())}). Log in with `hf auth login` (or set HF_TOKEN), "
            "check the network, or train without --output.push_to_hub and push the saved folder later."
        ) from None


def validate(model, benchmark, cfg: TrainConfig, accelerator) -> tuple[float, float]:
    from bsr_hub.evaluation.protocol import evaluate_benchmark

    result = evaluate_benchmark(model, benchmark, cfg.scale, cfg.data.degradation, accelerator=accelerator, progress=False)
    return result.psnr, result.ssim


def main(argv: list[str] | None = None) -> int:
    cfg, command = read_settings(argv)

    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    cfg = settle_precision(cfg)
    choose_kernels(cfg.optim, cuda=torch.cuda.is_available())  # cuDNN autotuned, as bench/gpu.py times it, or fixed
    try:  # `accelerate launch --cpu --num_machines 2` starts unsynchronised processes that would each train alone
        check_launch()
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),  # two CPU processes only synchronise (gloo) with cpu=True
        mixed_precision=cfg.optim.mixed_precision,
        gradient_accumulation_steps=cfg.optim.gradient_accumulation_steps,
        log_with=None if cfg.output.report_to == "none" else cfg.output.report_to,
        # Node-local disks: a copy of each checkpoint on every machine (TrainingRun picks one writer per disk).
        project_config=ProjectConfiguration(project_dir=cfg.output.dir, save_on_each_node=cfg.output.save_on_each_node),
    )
    if launched_world_size() != accelerator.num_processes:
        raise SystemExit(f"error: launched {launched_world_size()} processes but Accelerate sees {accelerator.num_processes}")
    notice = validation_notice(cfg)
    if notice:
        accelerator.print(notice)
    if cfg.output.push_to_hub and accelerator.is_main_process:
        check_hub_access(cfg)
    try:  # a teacher that cannot teach stops the run before its output folder is made
        teacher = Teacher.load(cfg.distill, cfg.scale, accelerator, cfg.optim.channels_last)  # None: no teacher
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    set_seed(cfg.seed)
    # The output folder (locked, another run's files refused), and the resume point decided on the main process
    # (the sampler starts at its step).
    run = TrainingRun(cfg, accelerator, command)
    try:
        status = train(cfg, accelerator, run, command, teacher)
    finally:
        run.close()  # the folder's lock goes however the run ends: finished, stopped, or failed
    leave(accelerator, run)
    return status


def read_settings(argv: list[str] | None) -> tuple[TrainConfig, str]:
    """The run's settings, and the command line that repeats it (for its record and the resume hint). A missing
    extra, a bad setting, or an empty or mistyped training folder stops here with one line naming it."""
    from bsr_hub.core.extras import MissingExtraError, require

    try:  # everything the run will need, checked now rather than first at the end (matplotlib draws the curve)
        require("accelerate", "datasets", "yaml", "matplotlib", extra="train", what="train.py")
    except MissingExtraError as err:
        raise SystemExit(f"error: {err}") from None
    try:  # a bad setting, or an empty or mistyped folder: one line naming it, not a traceback
        cfg, _ = load_train_config(argv)
        for folder in cfg.data.train_dirs:
            check_train_dir(folder)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    args = sys.argv[1:] if argv is None else argv
    return cfg, " ".join(["accelerate launch train.py", *map(shlex.quote, args)])


def settle_precision(cfg: TrainConfig) -> TrainConfig:
    """`optim.mixed_precision` settled for this device (training/precision.py): fp16 without a GPU stops the run,
    `auto` becomes bf16 or no, and bf16 on a CPU without native bf16 runs with a warning that fp32 is faster."""
    cuda = torch.cuda.is_available()
    native = native_bf16("cuda" if cuda else "cpu")
    try:
        chosen = settle_mixed_precision(cfg.optim.mixed_precision, cuda=cuda, native_bf16=native)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    device = torch.cuda.get_device_name() if cuda else f"this CPU ({describe_cpu()})"
    said_here = os.environ.get("LOCAL_RANK", "0") == "0"  # once per machine: machines may differ, their processes not
    if said_here and cfg.optim.mixed_precision == AUTO:
        print(f"optim.mixed_precision auto: {'bf16 autocast' if chosen == 'bf16' else 'fp32'} on {device}",
              file=sys.stderr)
    elif said_here and chosen == "bf16" and not native and not cuda:
        print(f"warning: {device} has no native bf16 (avx512_bf16 or AMX): bf16 autocast runs 10 to 200 times "
              "slower than fp32 on such CPUs (`python bench/train_speed.py` measures yours); "
              "--optim.mixed_precision no (or auto) is faster here", file=sys.stderr)
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, mixed_precision=chosen))


def train(cfg: TrainConfig, accelerator, run: TrainingRun, command: str, teacher: Teacher | None) -> int:
    """The run itself: model, optimizer, data, schedule, prepare, resume, the loop, and its end."""
    from accelerate.utils import gather_object

    # -- model
    model = BSRModel(cfg.model_config())
    run.init_weights(model)
    if cfg.optim.channels_last:
        model = model.to(memory_format=torch.channels_last)

    # -- optimizer and loss
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.learning_rate, betas=(0.9, cfg.optim.adam_beta2))
    criterion = HybridLoss(cfg.loss)

    # -- data: every process draws its own batches; the stream is not passed through prepare()
    source, validation = training_data(cfg)
    sampler = build_sampler(cfg, source, accelerator, start_batch=run.step * cfg.optim.gradient_accumulation_steps)
    loader = data_loader(cfg, sampler, accelerator)

    # -- schedule: stepped once per optimizer step, whatever the number of processes (so not prepared)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, step_decay(cfg.optim.max_steps, cfg.optim.lr_decay_at, cfg.optim.lr_decay_factor, cfg.optim.warmup_steps)
    )

    # -- prepare; then what is derived from the placed model (the EMA); then the resume
    model, optimizer = accelerator.prepare(model, optimizer)
    run.attach(model, scheduler, sampler)
    run.resume(optimizer)
    if cfg.output.report_to != "none":
        accelerator.init_trackers("bsr", config={k: str(v) for k, v in cfg.flat().items()})

    # -- the loop
    progress = Progress(cfg, accelerator, run)
    model.train()
    try:
        with StopRequest(watch_parent=launched_by_a_launcher()) as stop:  # the launcher's end stops the run too
            saved, stopped = loop(cfg, accelerator, run, model, optimizer, scheduler, criterion, teacher, loader,
                                  validation, stop, progress)
    finally:
        progress.bar.close()  # before any message: an error line must not continue the bar's line

    # -- the processes must have trained one model
    checksum = run.check_same_weights()
    fingerprints = gather_object([progress.fingerprint.hexdigest()])

    if stopped:
        accelerator.print(f"stopping: {stop.reason()}")
        accelerator.print(
            f"stopped at step {run.step}; checkpoint written to {saved}.\n"
            f"resume with: {command}" + ("" if cfg.resume else " --resume latest")
        )
        return 0

    # -- the shippable model, its record, evaluation and card (main process writes; all evaluate)
    processes = [{"rank": r, "batches_sha256": fingerprints[r]} for r in range(accelerator.num_processes)]
    model_dir = run.finish(describe_training_data(cfg, source), processes, checksum)

    results = final_evaluation(cfg, validation, accelerator)
    if accelerator.is_main_process:
        publish(cfg, accelerator, run, model_dir, results, command)
    return 0


def data_loader(cfg: TrainConfig, sampler, accelerator) -> DataLoader:
    """The sampler's batches, made by `data.num_workers` worker processes (none: in the trainer itself)."""
    on_gpu = accelerator.device.type == "cuda"
    if cfg.data.num_workers > 0:
        end_data_workers_at_exit()  # they ignore SIGTERM, which is how multiprocessing ends them at exit
    return DataLoader(sampler, batch_size=None, num_workers=cfg.data.num_workers, persistent_workers=cfg.data.num_workers > 0,
                      worker_init_fn=ignore_stop_signals,  # the trainer alone answers Ctrl-C and SIGTERM
                      pin_memory=on_gpu)  # pinned pages make the loop's non_blocking copies asynchronous


def loop(cfg: TrainConfig, accelerator, run: TrainingRun, model, optimizer, scheduler, criterion, teacher: Teacher | None,
         loader, validation, stop: StopRequest, progress: Progress) -> tuple[Path | None, bool]:
    """Accelerate's loop: forward, loss (the teacher's output a second target, if any), backward, clip, optimizer
    step and zero_grad under `accumulate`; then, once per optimizer step, the scheduler, the EMA, logging,
    validation and checkpoints. Returns the last checkpoint written (None: none yet) and whether a stop request
    ended the loop."""
    saved = None
    batches = iter(loader)
    while run.step < cfg.optim.max_steps:
        try:
            batch = next(batches)
        except Exception:
            if not stop.requested:
                raise
            # Ctrl-C reaches the data workers too; the last finished step is still worth saving.
            return run.save_checkpoint(), True
        progress.fingerprint.update(batch["pic"].numpy().tobytes())
        lr = batch["lr"].to(accelerator.device, non_blocking=True)  # (N, 3, P, P)
        hr = batch["hr"].to(accelerator.device, non_blocking=True)  # (N, 3, sP, sP)
        if cfg.optim.channels_last:
            lr = lr.contiguous(memory_format=torch.channels_last)
        with accelerator.accumulate(model):
            sr = model(lr)  # (N, 3, sP, sP)
            loss, terms = criterion(sr, hr) if teacher is None else teacher.loss(criterion, sr, hr, lr)
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.optim.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        progress.meter.add(loss, terms, run.step + 1)  # detached, on the device: no host sync here
        if not accelerator.sync_gradients:
            continue
        scheduler.step()
        run.update_ema()
        run.step += 1
        progress.bar.update(1)

        at_log = run.step % cfg.output.logging_steps == 0 or run.step == cfg.optim.max_steps
        at_checkpoint = run.step % cfg.output.checkpointing_steps == 0 or run.step == cfg.optim.max_steps
        if at_log or at_checkpoint or (accelerator.num_processes == 1 and stop.requested):
            # The sync points (the same steps on every process): a loss that is no longer a number is never
            # logged as one, and its weights are never saved over the last good checkpoint.
            progress.check_finite(saved or run.resumed_from)
        if at_log:
            progress.log(scheduler.get_last_lr()[0])
        if validation is not None and (run.step % cfg.validation.steps == 0 or run.step == cfg.optim.max_steps):
            with fp32_forward(run.shippable()) as shippable:
                progress.val_psnr, val_ssim = validate(shippable, validation, cfg, accelerator)
            run.record({"step": run.step, "val_psnr": progress.val_psnr, "val_ssim": val_ssim})
            model.train()
        # One process alone reads its flag for free; several agree at the logging interval and checkpoints.
        requested = stop.requested
        if accelerator.num_processes > 1:
            requested = run.stop_agreed(stop.requested) if (at_log or at_checkpoint) else False
        if at_checkpoint or requested:
            saved = run.save_checkpoint()
        if requested:
            return saved, True
    return saved, False


class Progress:
    """The loop's progress, shown and logged: the bar, the loss summed on the device (`LossMeter`), the samples
    per second between logs, the last validation PSNR, and a fingerprint of this process's batches."""

    def __init__(self, cfg: TrainConfig, accelerator, run: TrainingRun):
        from tqdm.auto import tqdm

        self.cfg, self.accelerator, self.run = cfg, accelerator, run
        self.per_step = cfg.rfs.batch_size * cfg.optim.gradient_accumulation_steps * accelerator.num_processes
        self.bar = tqdm(total=cfg.optim.max_steps, initial=run.step, desc="training",
                        disable=not accelerator.is_local_main_process)
        self.fingerprint = hashlib.sha256()  # of this process's batches: shows that processes draw different ones
        self.meter = LossMeter()
        self.val_psnr = math.nan
        self.last_log, self.last_step = time.perf_counter(), run.step

    def check_finite(self, checkpoint: Path | None) -> None:
        """Stop the run, naming the first step whose loss was inf or nan on any process, and `checkpoint`, the last
        good one (a host sync: every process calls it at the same steps)."""
        bad = self.meter.first_non_finite(self.accelerator)
        if bad is not None:
            raise SystemExit(f"error: {non_finite_message(self.cfg, bad, checkpoint)}")

    def log(self, lr: float) -> None:
        """The interval's entry in the history (mean loss terms, learning rate, samples per second), and on the bar."""
        run = self.run
        losses = self.meter.mean()  # the sync point of the interval
        now = time.perf_counter()
        rate = self.per_step * (run.step - self.last_step) / (now - self.last_log)
        entry = {"step": run.step, **losses, "lr": lr, "samples_per_s": rate}
        run.record(entry)
        shown = dict(loss=f"{entry['loss']:.4g}", lr=f"{entry['lr']:.2g}", samples_s=f"{rate:.1f}")
        if not math.isnan(self.val_psnr):  # nothing to show before the first validation
            shown["val_psnr"] = f"{self.val_psnr:.2f}"
        self.bar.set_postfix(**shown)
        self.last_log, self.last_step = now, run.step


def leave(accelerator, run: TrainingRun) -> None:
    """End a finished or stopped run's distributed life in order, so that every rank exits 0.

    The prepared (DDP) model's reducer holds the gloo process group and its worker threads; still alive when the
    interpreter shuts down, they can abort a rank whose work is done ("terminate called without an active
    exception", a two-process test failed so once in CI). So: drop every reference to the prepared model and
    optimizer (free_memory also collects cycles), let every rank get here, then destroy the group.
    """
    run.release()
    accelerator.free_memory()
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    sys.exit(main())
