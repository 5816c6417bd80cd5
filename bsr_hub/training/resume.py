"""Where a run starts: its output folder claimed (`claim_output`: the lock, another run's files refused or deleted),
the checkpoint it resumes from read (`read_resume_point`), and the resume guard: the settings a resume may not
change without saying so (`RESUME_GUARDED`), since they shape the batches or the schedule, and the check that
names each change (`check_resume`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..data import RFSConfig
from ..models import Stage
from .checkpoints import (
    OutputLock,
    checkpoints_dir,
    clear_previous_run,
    list_checkpoints,
    previous_run,
    remove_partial_checkpoints,
    resolve_resume,
)
from .config import RUN_WIDE, SECTIONS, TrainConfig, nest
from .distill import DistillConfig
from .losses import LossConfig

RESUME_GUARDED = (
    # the model
    "scale", "model.preset", "model.overrides", "model.init_from",
    # the batch stream
    "seed", "data.train_dir", "data.dataset_name", "data.split", "data.image_column", "data.lr_column",
    "data.streaming", "data.degradation", "data.degradation_mix", "data.transparent",
    *(f"rfs.{f.name}" for f in dataclasses.fields(RFSConfig) if f.name not in RUN_WIDE["rfs"]),
    # the objective and the schedule
    *(f"loss.{f.name}" for f in dataclasses.fields(LossConfig)),
    *(f"distill.{f.name}" for f in dataclasses.fields(DistillConfig)),
    "optim.learning_rate", "optim.adam_beta2", "optim.lr_decay_at", "optim.lr_decay_factor", "optim.warmup_steps",
    "optim.max_steps", "optim.gradient_accumulation_steps", "optim.max_grad_norm", "optim.ema_decay",
)
"""Settings whose change at a resume would silently make a different run than the checkpoint's."""


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)  # 5e-4 in YAML and 0.0005 from a flag are one value
    return value


def resume_changes(saved: dict[str, Any], current: TrainConfig) -> list[tuple[str, Any, Any]]:
    """(setting, checkpoint's value, this run's value) for every guarded setting that differs. `saved` is the
    config a checkpoint recorded: nested, or flat as bsr_hub 0.1 wrote it."""
    nested, _ = nest(saved, "the checkpoint's config")
    then = {f"{k}.{n}": v for k, part in nested.items() if k in SECTIONS for n, v in part.items()}
    then.update({k: v for k, v in nested.items() if k not in SECTIONS})
    now = current.flat()
    return [(k, then[k], now[k]) for k in RESUME_GUARDED if k in then and _plain(then[k]) != _plain(now[k])]


class ResumeChangedError(ValueError):
    """A resume would change settings that shape the batches or the schedule."""


def check_resume(saved: dict[str, Any], current: TrainConfig, checkpoint: Path) -> list[tuple[str, Any, Any]]:
    """The guarded changes, allowed only with resume_allow_changes; otherwise an error naming each one."""
    changes = resume_changes(saved, current)
    if changes and not current.resume_allow_changes:
        listed = "\n".join(f"  {k}: {old!r} in the checkpoint, {new!r} now" for k, old, new in changes)
        raise ResumeChangedError(
            f"resuming from {checkpoint} with settings that change the batches or the schedule:\n{listed}\n"
            "Resume with the checkpoint's values, start a new run (another --output.dir, --model.init_from the "
            "checkpoint's model/), or pass --resume_allow_changes to continue anyway (the changes are recorded)."
        )
    return changes


def claim_output(cfg: TrainConfig, output: Path, lock: OutputLock, say: Callable[[str], None]) -> None:
    """Claim a run's output folder, by each copy's writer (the main process, and with save_on_each_node one
    process per machine's disk): take the folder's `lock`, clear interrupted checkpoint writes, and refuse (or,
    with --output.overwrite, delete) what another run left there, so that rotation, history and records only
    ever see one run. `say` prints a note."""
    note = lock.acquire()
    if note:
        say(note)
    for stale in remove_partial_checkpoints(output):
        say(f"removed an interrupted checkpoint write: {stale}")
    if continues_this_folder(cfg, output):
        if cfg.output.overwrite:
            say("--output.overwrite has no effect with --resume: the folder's run goes on")
        return
    left = previous_run(output)
    if not left:
        return
    if not cfg.output.overwrite:
        if cfg.resume == "latest":  # nothing to resume, and starting over would replace what is there
            raise ValueError(
                f"--resume latest: no checkpoint in {checkpoints_dir(output)} to resume, and {output} "
                f"holds another run: {'; '.join(left)}. Starting from step 0 would replace it. Start over in "
                "this folder (--output.overwrite deletes those files first) or choose another --output.dir."
            )
        raise ValueError(
            f"{output} holds another run: {'; '.join(left)}. Resume it (--resume latest), start over in this "
            "folder (--output.overwrite deletes those files first), or choose another --output.dir."
        )
    kept = clear_previous_run(output)
    say(f"--output.overwrite: deleted the previous run's {'; '.join(left)} in {output}")
    if kept:
        say(f"kept what no run wrote there: {', '.join(str(p) for p in kept)}")


def continues_this_folder(cfg: TrainConfig, output: Path) -> bool:
    """Whether --resume continues the run in the output folder (not a fresh run, nor one from elsewhere)."""
    if cfg.resume is None:
        return False
    if cfg.resume == "latest":
        # With no checkpoint the run starts from step 0, which must not replace a finished model (a run killed
        # before its first checkpoint, which left only its history, just starts again).
        return bool(list_checkpoints(output)) or not (output / "model").exists()
    return checkpoints_dir(output).resolve() in Path(cfg.resume).resolve().parents


def read_resume_point(cfg: TrainConfig, output: Path) -> dict[str, Any]:
    """What the main process reads of the checkpoint --resume names (none: {}), for every process: where,
    the step, the run, the guarded changes and the lineage."""
    checkpoint = resolve_resume(cfg.resume, output)
    if checkpoint is None:
        return {}
    trainer = json.loads((checkpoint / "trainer.json").read_text())
    step = trainer["step"]
    new = [{"step": step, "field": k, "old": old, "new": now}
           for k, old, now in check_resume(trainer["config"], cfg, checkpoint)]
    parent = trainer.get("parent_lineage")
    return {
        "checkpoint": str(checkpoint), "step": step, "wall_time_s": trainer["wall_time_s"],
        "run_id": trainer.get("run_id"),
        "changes": trainer.get("resume_changes", []) + new, "new_changes": new,
        "hardware": trainer.get("hardware", []),
        "parent_lineage": None if parent is None else [Stage.from_dict(s) for s in parent],
    }
