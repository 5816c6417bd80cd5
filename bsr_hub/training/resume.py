"""The resume guard: the settings a resume may not change without saying so (`RESUME_GUARDED`), since they shape
the batches or the schedule, and the check that names each change (`check_resume`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..data import RFSConfig
from .config import RUN_WIDE, SECTIONS, TrainConfig, nest
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
