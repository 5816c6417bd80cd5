"""The life of one training run in its output folder (`TrainingRun`): where it resumes, its history, EMA and
checkpoints, the weights check, and the final record (`TrainingRecord`, `training.json`, `models.records`'s).

train.py stays a flat script in Accelerate's canonical order and calls it at each step; everything here is
testable on its own.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core import append_text, write_text_atomically
from ..models import TRAINING_INFO_NAME, DatasetInfo, Stage, TrainingRecord, lineage_of
from .checkpoints import (
    CheckpointStateError,
    OutputBusyError,
    OutputLock,
    checkpoints_dir,
    finalize_checkpoint,
    list_checkpoints,
    load_training_state,
    rotate_checkpoints,
    save_run_state,
)
from .config import TrainConfig, config_to_yaml
from .nodes import DiskLayout, agree, find_disks, missing_to_resume, resume_hint, where
from .optim import EMA, load_matching_weights
from .reporting import hardware_description, plot_curves
from .resume import claim_output, read_resume_point


class TrainingRun:
    """The life of one run in its output folder: where it resumes (decided once, on the main process), its
    history, EMA, checkpoints (written atomically), the weights check and the final record.

    train.py calls it in Accelerate's order: `TrainingRun(cfg, accelerator, command)` before the model (the
    resume step decides where the sampler starts), `attach()` after `prepare()` (the EMA is built from the placed
    model), `resume()`, then `save_checkpoint()` / `record()` in the loop and `finish()` at the end.
    """

    def __init__(self, cfg: TrainConfig, accelerator: Any, command: str):
        self.cfg, self.accelerator, self.command = cfg, accelerator, command
        self.output = Path(cfg.output.dir)
        self.step = 0
        self.wall_before = 0.0
        self.resumed_from: Path | None = None
        self.changes: list[dict[str, Any]] = []
        self.hardware: list[str] = []
        self.parent_lineage: list[Stage] | None = None
        self.history: list[dict[str, Any]] = []
        self.ema: EMA | None = None
        self.model: Any = None
        self.scheduler: Any = None
        self.sampler: Any = None
        self.run_id: str | None = None
        """Written into each checkpoint: rotation deletes this run's checkpoints only. Kept across resumes."""
        self._start = time.perf_counter()
        self._lock: OutputLock | None = None
        self.layout = DiskLayout.single(accelerator, cfg.output.save_on_each_node)
        """Which disks keep a copy of each checkpoint and who writes it (several machines: `_decide_resume`)."""
        try:
            self._decide_resume()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Let go of the output folder (its lock); train.py calls it however the run ends."""
        if self._lock is not None:
            self._lock.release()

    def release(self) -> None:
        """Drop the run's references to the prepared model, its scheduler and the sampler (the end of the run)."""
        self.model = self.scheduler = self.sampler = None

    # -- start

    def _decide_resume(self) -> None:
        """Find which machines share the output folder; each disk's writer claims its copy of the folder (the
        main process's always), the main process resolves --resume and checks the guard, and every process gets
        the answer, or any process's error, by one gather. A machine whose own disk lacks that checkpoint stops
        every process, naming it, before anything is loaded."""
        import uuid

        from accelerate.utils import broadcast_object_list, gather_object

        accelerator, rank, several = self.accelerator, self.accelerator.process_index, self.accelerator.num_processes > 1
        nonce = broadcast_object_list([uuid.uuid4().hex])[0] if several else ""
        self.layout = find_disks(accelerator, self.output, nonce, self.cfg.output.save_on_each_node)
        # Accelerate's save_state writes the model and optimizer on the main process, and, with save_on_each_node,
        # on every local main process: set per process, so that each copy has exactly one writer.
        accelerator.project_configuration.save_on_each_node = self.layout.writes_copy(rank) and rank != 0
        apart = self.layout.apart()
        if apart and not self.cfg.output.save_on_each_node and accelerator.is_main_process:
            print(f"warning: {', '.join(apart)} cannot see the main process's output folder {self.output} (a disk of "
                  "its own): checkpoints are written into the main process's folder only, and a resume needs them on "
                  "every machine; --output.save_on_each_node keeps a copy on each", file=sys.stderr)
        payload: dict[str, Any] = {}
        if self.layout.writes_copy(rank):
            try:
                self.output.mkdir(parents=True, exist_ok=True)
                self._lock = OutputLock(self.output)
                claim_output(self.cfg, self.output, self._lock, accelerator.print)
                if accelerator.is_main_process:
                    payload = read_resume_point(self.cfg, self.output) or {"run_id": uuid.uuid4().hex}
            except (ValueError, OSError, KeyError, OutputBusyError) as err:
                payload = {"error": f"{where(accelerator)}: {err}" if rank else str(err)}
        payloads = gather_object([payload]) if several else [payload]
        agree_now = [p["error"] for p in payloads if "error" in p]  # every process holds them: all stop together
        if agree_now:
            raise SystemExit("error: " + "; ".join(agree_now))
        payload = payloads[0]
        self.run_id = payload["run_id"]
        if "checkpoint" not in payload:
            if self.cfg.resume == "latest":
                accelerator.print(f"--resume latest: no checkpoint in {checkpoints_dir(self.output)} yet, "
                                  "starting from step 0")
            return
        if several:
            missing = missing_to_resume(Path(payload["checkpoint"]), self.run_id, payload["step"], rank)
            agree(accelerator, missing and f"cannot resume from {payload['checkpoint']}: {where(accelerator)} "
                                           f"{missing}; {resume_hint()}")
        self.resumed_from = Path(payload["checkpoint"])
        self.step, self.wall_before = payload["step"], payload["wall_time_s"]
        self.changes, self.hardware = payload["changes"], payload["hardware"]
        self.parent_lineage = payload["parent_lineage"]
        for c in payload["new_changes"]:
            accelerator.print(f"resume at step {self.step} with a changed setting (allowed): "
                              f"{c['field']} {c['old']!r} -> {c['new']!r}")

    def init_weights(self, model: nn.Module) -> None:
        """Load --init_from into a fresh model (not on a resume: the checkpoint's weights replace them)."""
        if self.resumed_from is not None or not self.cfg.model.init_from:
            return
        from ..models import CheckpointError

        try:
            fresh = load_matching_weights(model, self.cfg.model.init_from)
        except CheckpointError as err:  # a folder without safetensors weights, a damaged file, an unknown name
            raise SystemExit(f"error: --model.init_from {self.cfg.model.init_from}: {err}") from None
        self.accelerator.print(f"initialised from {self.cfg.model.init_from}; not loaded (shape differs, kept fresh): "
                               f"{fresh or 'none'}")

    def attach(self, model: Any, scheduler: Any, sampler: Any) -> None:
        """After `prepare`: build the EMA from the placed model (same device, dtype and memory format). The EMA and
        the scheduler are checkpointed by `save_checkpoint` itself (safetensors and JSON), not registered with
        Accelerate, whose load_state would unpickle them in full."""
        self.model, self.scheduler, self.sampler = model, scheduler, sampler
        if self.cfg.optim.ema_decay:
            self.ema = EMA(self.accelerator.unwrap_model(model), self.cfg.optim.ema_decay)

    def resume(self, optimizer: Any) -> None:
        """Load the checkpoint's state (every process its own RNG) and drop history written after it."""
        if self.resumed_from is not None:
            error = None
            try:
                load_training_state(self.resumed_from / "state", self.accelerator, self.model, optimizer,
                                    self.scheduler, self.ema)
            except CheckpointStateError as err:  # on one machine, maybe: every process stops, none waits for it
                place = f"{where(self.accelerator)}: " if self.accelerator.num_processes > 1 else ""
                error = f"cannot resume from {self.resumed_from}: {place}{err}"
            agree(self.accelerator, error)
            if any(c["field"] in ("optim.learning_rate", "optim.adam_beta2") for c in self.changes if c["step"] == self.step):
                self._apply_changed_optimizer_settings(optimizer)
            self.accelerator.print(f"resumed from {self.resumed_from} at step {self.step}")
        history_file = self.output / "history.jsonl"
        if self.accelerator.is_main_process and history_file.is_file():
            self.history = self._read_history(history_file)
            write_text_atomically(history_file, "".join(json.dumps(h) + "\n" for h in self.history))
        if self.parent_lineage is None and self.accelerator.is_main_process:
            self.parent_lineage = lineage_of(self.cfg.model.init_from)

    def _read_history(self, history_file: Path) -> list[dict[str, Any]]:
        """The history up to the resume step. A line that is not a whole entry (the last one, cut short when the
        process was killed while appending it) is dropped with a warning; the file is then rewritten without it."""
        kept = []
        for number, line in enumerate(history_file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                step = entry["step"]
            except (ValueError, TypeError, KeyError):
                self.accelerator.print(f"warning: {history_file}, line {number}: dropped {line[:60]!r}, not a whole "
                                       "entry (cut short by a kill while it was written?)")
                continue
            if step <= self.step:
                kept.append(entry)
        return kept

    def _apply_changed_optimizer_settings(self, optimizer: Any) -> None:
        # load_state restored the checkpoint's base learning rate and betas; an allowed change must take effect.
        self.scheduler.base_lrs = [self.cfg.optim.learning_rate for _ in self.scheduler.base_lrs]
        for group, fn in zip(optimizer.param_groups, self.scheduler.lr_lambdas):
            group["initial_lr"] = self.cfg.optim.learning_rate
            group["lr"] = self.cfg.optim.learning_rate * fn(self.scheduler.last_epoch)
            group["betas"] = (group["betas"][0], self.cfg.optim.adam_beta2)

    # -- during the loop

    def shippable(self) -> nn.Module:
        """The weights to save and evaluate: the EMA's if there is one."""
        return self.ema.model if self.ema is not None else self.accelerator.unwrap_model(self.model)

    def update_ema(self) -> None:
        if self.ema is not None:
            self.ema.update(self.accelerator.unwrap_model(self.model))

    def wall_time(self) -> float:
        return self.wall_before + time.perf_counter() - self._start

    def record(self, entry: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            self.history.append(entry)
            append_text(self.output / "history.jsonl", json.dumps(entry) + "\n")
        if self.cfg.output.report_to != "none":
            self.accelerator.log({k: v for k, v in entry.items() if k != "step"}, step=entry["step"])

    def stop_agreed(self, requested_here: bool) -> bool:
        """Every process must agree to stop, or one would wait for the others at the next collective. The
        reduction is a host sync: call it at the logging interval, not every step."""
        if self.accelerator.num_processes == 1:
            return requested_here
        flag = torch.tensor([float(requested_here)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item())

    def _hardware_now(self) -> list[str]:
        here = hardware_description(self.accelerator)
        return self.hardware if self.hardware and self.hardware[-1] == here else [*self.hardware, here]

    def save_checkpoint(self) -> Path:
        """checkpoints/step_N/{state/, model/, trainer.json}, named step_N only once whole, on every disk that keeps
        a copy (`nodes.DiskLayout`: the main process's, or every machine's with --output.save_on_each_node).

        A write that fails (a full disk, a quota, a folder gone read-only) on any machine ends the run on every
        process with one line naming the step, the machine, the reason and the last complete checkpoint, which is
        kept; the half-written one is removed so that its space comes back before the resume.
        """
        final = checkpoints_dir(self.output) / f"step_{self.step}"
        tmp = checkpoints_dir(self.output) / f".tmp-step_{self.step}"
        rank = self.accelerator.process_index
        # Accelerate's state: the model and optimizer by each copy's writer, the random states by every process
        # into its own disk's copy; a process whose disk keeps none writes nothing. The agreement that follows is
        # the barrier that lets every process finish before the rename.
        state = functools.partial(self.accelerator.save_state, str(tmp / "state"))
        self._agree_on_write(tmp, self._attempt(tmp, state) if self.layout.keeps_copy(rank) else None)
        trainer = self._trainer_state()
        rest = functools.partial(self._complete_copy, tmp, final, trainer)
        self._agree_on_write(tmp, self._attempt(tmp, rest) if self.layout.writes_copy(rank) else None)
        return final

    def _trainer_state(self) -> dict[str, Any] | None:
        """trainer.json, made by the main process (it alone holds the lineage) and, when several disks keep a
        copy, sent to each copy's writer: every machine's copy says the same."""
        trainer = None
        if self.accelerator.is_main_process:
            trainer = {
                "step": self.step, "run_id": self.run_id, "wall_time_s": self.wall_time(), "config": self.cfg.to_dict(),
                "sampler": self.sampler.to_dict(), "resume_changes": self.changes, "hardware": self._hardware_now(),
                "parent_lineage": [dataclasses.asdict(s) for s in self.parent_lineage or []],
            }
        if self.layout.copies > 1:
            from accelerate.utils import broadcast_object_list

            trainer = broadcast_object_list([trainer])[0]
        return trainer

    def _complete_copy(self, tmp: Path, final: Path, trainer: dict[str, Any]) -> None:
        """A copy's writer: the shippable model, the run state and trainer.json beside Accelerate's state, then the
        rename ("latest" is never half-written) and the rotation of this run's checkpoints on this disk."""
        self.shippable().save_pretrained(tmp / "model")
        save_run_state(tmp / "state", self.ema, self.scheduler)
        (tmp / "trainer.json").write_text(json.dumps(trainer, indent=2))
        finalize_checkpoint(tmp, final)
        rotate_checkpoints(self.output, self.cfg.output.checkpoints_total_limit, self.run_id, self.step)

    def _attempt(self, tmp: Path, write: Any) -> str | None:
        """Run `write`; the reason it could not write (a full disk, ...), or None. Any other error is raised."""
        try:
            write()
        except (OSError, RuntimeError) as err:
            # torch.save reports a full disk as a RuntimeError from its C++ stream ("iostream error"), with no
            # errno: such an error is a write failure only when the disk has no room for a checkpoint left.
            reason = err.strerror if isinstance(err, OSError) else self._no_room(tmp.parent)
            if not reason:
                raise
            return reason
        return None

    def _agree_on_write(self, tmp: Path, reason: str | None) -> None:
        """Every process stops when a write failed on any; each copy's writer first removes its copy's partial
        files (this step's only)."""
        try:
            agree(self.accelerator, reason and self._unwritable_checkpoint(reason))
        except SystemExit:
            if self.layout.writes_copy(self.accelerator.process_index):
                shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _no_room(self, folder: Path) -> str | None:
        """"No space left on device" when `folder`'s disk has less room than the last checkpoint took (1 MiB
        without one), else None."""
        kept = list_checkpoints(self.output)
        needed = sum(f.stat().st_size for f in kept[-1][1].rglob("*") if f.is_file()) if kept else 1 << 20
        free = shutil.disk_usage(folder).free
        return f"No space left on device: {free:,} bytes free, a checkpoint takes about {needed:,}" if free < needed else None

    def _unwritable_checkpoint(self, reason: str) -> str:
        """What a failed checkpoint write says: the step, the reason, what is kept, and how to go on."""
        kept = list_checkpoints(self.output)
        last = f"the last complete checkpoint, {kept[-1][1]}, is kept" if kept else "no earlier checkpoint exists"
        resume = self.command + ("" if self.cfg.resume else " --resume latest")
        place = f" on {where(self.accelerator)}" if self.accelerator.num_processes > 1 else ""
        return (f"could not write the checkpoint of step {self.step} in {checkpoints_dir(self.output)}{place} "
                f"({reason}); {last}. Free some space (or fix the folder), then resume with: {resume}")

    # -- the end

    def check_same_weights(self) -> list[float] | None:
        """Fail if the processes ended with different weights (a broken synchronisation trains N models).

        Under DDP every process holds the whole model, so checksums of the weights must be equal. Under FSDP
        or DeepSpeed each holds its own shard: there is nothing to compare, and the check is skipped, saying so.
        Returns the checksum (sum, sum of absolute values), or None when skipped.
        """
        from accelerate.utils import DistributedType

        accelerator = self.accelerator
        if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            accelerator.print(f"weights check skipped: under {accelerator.distributed_type.value} each process "
                              "holds a shard, there is no full copy to compare")
            return None
        params = [p.detach().flatten() for p in accelerator.unwrap_model(self.model).parameters()]
        weights = torch.cat(params).double()
        sums = accelerator.gather(torch.stack([weights.sum(), weights.abs().sum()])[None])  # (processes, 2)
        if not bool((sums == sums[0]).all()):
            raise RuntimeError(f"the {accelerator.num_processes} processes ended with different weights: "
                               f"{sums.tolist()}")
        return sums[0].tolist()

    def finish(self, data: list[DatasetInfo], processes: list[dict[str, Any]],
               checksum: list[float] | None) -> Path:
        """Write the shippable model with its records into OUTPUT/model (main process) and return that folder."""
        model_dir = self.output / "model"
        if self.accelerator.is_main_process:
            self.shippable().save_pretrained(model_dir)
            plot_curves(self.history, model_dir / "training_curve.png")
            # training.json, and the recipe beside it as training_config.yaml
            self.make_record(data, processes, checksum).save(model_dir / TRAINING_INFO_NAME)
        self.accelerator.wait_for_everyone()
        return model_dir

    def make_record(self, data: list[DatasetInfo], processes: list[dict[str, Any]],
                    checksum: list[float] | None) -> TrainingRecord:
        from datetime import datetime, timezone

        cfg = self.cfg
        wall = self.wall_time()
        hardware = " then ".join(self._hardware_now())
        described = ", ".join(d.describe() for d in data)
        batch = cfg.rfs.batch_size * cfg.optim.gradient_accumulation_steps * self.accelerator.num_processes
        stage = Stage(model=cfg.model_name, init_from=cfg.model.init_from, steps=self.step, batch=batch,
                      wall_time_s=round(wall, 1), hardware=hardware, command=self.command, data=described,
                      finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      teacher=cfg.distill.describe_teacher())
        return TrainingRecord(
            data=described, datasets=data, degradation=cfg.data.degradation,
            sampler=cfg.sampler_name,
            steps=self.step, wall_time_s=round(wall, 1), hardware=hardware, command=self.command,
            recipe=config_to_yaml(cfg), sampler_state=self.sampler.to_dict(), curve="training_curve.png",
            processes=processes, weights_checksum=checksum, resume_changes=self.changes,
            lineage=[*(self.parent_lineage or []), stage],
        )
