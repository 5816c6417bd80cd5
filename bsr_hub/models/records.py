"""A checkpoint folder's records: what was measured (`eval_results.json`), how it was trained (`training.json`)
and the model card (`README.md`) rendered from both. Every read and write of them goes through here.

    folder/
      config.json, model.safetensors    the model (`modeling.py`, `network.py`)
      eval_results.json                 `EvalResults`: every result measured for it, merged run after run
      training.json                     `TrainingRecord`: data, recipe, cost and lineage, written by training
      training_config.yaml              that recipe as a file `train.py --config` takes
      robustness_results.json           the robustness suite (`evaluation/robustness.py`): inputs not made by MATLAB
      README.md                         the card, re-rendered (`card.py`) whenever a record changes

Writes are atomic (`files.write_atomically`): a reader never sees half a record. `BSRModel.save_pretrained` of a
loaded model carries these records into the new folder while its weights are still the loaded ones
(`card.carry_records`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core import write_text_atomically
from .hub import CheckpointError, load_pretrained, resolve_checkpoint
from .network import BSRNetwork

if TYPE_CHECKING:
    import torch

EVAL_RESULTS_NAME = "eval_results.json"
"""Beside a checkpoint: every result measured for it, merged run after run; the card is rendered from it."""
TRAINING_INFO_NAME = "training.json"
"""Beside a checkpoint, written by training: the `training` dict of the card, kept when the card is re-rendered."""
ROBUSTNESS_RESULTS_NAME = "robustness_results.json"
"""Beside a checkpoint: the last robustness-suite run (`bsr_hub.evaluation.robustness`), shown under the card's Limitations."""
TRAINING_CONFIG_NAME = "training_config.yaml"
"""Beside a trained checkpoint: the run's resolved recipe (`TrainingRecord.recipe`), a file `train.py --config`
takes to train it again."""
CARD_NAME = "README.md"
CARRIED_RECORDS = (EVAL_RESULTS_NAME, TRAINING_INFO_NAME, TRAINING_CONFIG_NAME, ROBUSTNESS_RESULTS_NAME,
                   "training_curve*.png", "training_history*.jsonl")
"""What `carry_records` copies (names and patterns): the records, and the curves and histories of the lineage."""


class RecordError(ValueError):
    """Results that must not go into a checkpoint's records: unreadable images, another scale, another model."""


# ---------------------------------------------------------------------------------------------------------
# eval_results.json
# ---------------------------------------------------------------------------------------------------------


@dataclass
class EvalResults:
    """`eval_results.json`: the model's name and one entry per (benchmark, scale, degradation, self-ensemble),
    as `evaluation.BenchmarkResult.to_dict` writes it (plus `command`, and `bicubic_psnr` / `bicubic_ssim`)."""

    model: str | None = None
    results: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> EvalResults:
        """The folder's results; empty when it has none."""
        store = Path(folder) / EVAL_RESULTS_NAME
        if not store.is_file():
            return cls()
        data = json.loads(store.read_text())
        return cls(model=data.get("model"), results=list(data.get("results", [])))

    def to_text(self) -> str:
        return json.dumps({"model": self.model, "results": self.results}, indent=2) + "\n"

    def save(self, folder: str | os.PathLike) -> Path:
        return write_text_atomically(Path(folder) / EVAL_RESULTS_NAME, self.to_text())


def _result_key(r: dict[str, Any]) -> tuple:
    return (r["benchmark"], int(r["scale"]), r["degradation"], bool(r.get("self_ensemble", False)))


def merge_results(old: Sequence[dict[str, Any]], new: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Old entries with the same (benchmark, scale, degradation, self_ensemble) as a new one are replaced."""
    merged = {_result_key(r): r for r in old}
    for r in new:
        merged[_result_key(r)] = r
    order = {"BI": 0, "BD": 1}
    return sorted(
        merged.values(), key=lambda r: (r["scale"], order.get(r["degradation"], 9), r["benchmark"], r.get("self_ensemble", False))
    )


# ---------------------------------------------------------------------------------------------------------
# training.json
# ---------------------------------------------------------------------------------------------------------


RECORD_FORMAT = 2


def format_duration(seconds: float) -> str:
    h, rem = divmod(int(round(seconds)), 3600)
    m, s = divmod(rem, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"


def parse_duration(text: str) -> float | None:
    """Seconds from format_duration's text ("1 h 23 min", "4 min 05 s"); None if it is not that format.
    Only old records need it (they kept the text alone), and "1 h 23 min" is exact to the minute only."""
    m = re.fullmatch(r"\s*(?:(\d+) h )?(\d+) min(?: (\d+) s)?\s*", text or "")
    if not m:
        return None
    h, mins, secs = (int(g) if g else 0 for g in m.groups())
    return float(3600 * h + 60 * mins + secs)


@dataclass
class DatasetInfo:
    """One named part of the training data and how many images it has (None: not counted, e.g. a stream)."""

    name: str
    images: int | None = None
    licence: str | None = None
    """The licence(s) of its images where a manifest states them (a set made by bench/make_photo_set.py)."""

    def describe(self) -> str:
        details = [f"{self.images} image{'' if self.images == 1 else 's'}"] if self.images is not None else []
        if self.licence:
            details.append(f"licence {self.licence}")
        return f"{self.name} ({'; '.join(details)})" if details else self.name


@dataclass
class Stage:
    """One training run in a model's history: what it started from and what it cost.

    A model's lineage is the list of its stages, oldest first: bsr-lite-x3 fine-tuned on a GPU from weights
    that were themselves trained on a CPU has two (or three, counting the x2 run it started from).
    """

    model: str
    """What this stage produced, e.g. bsr-lite-x2."""
    init_from: str | None
    """The weights it started from (bundled name, folder, Hub id); None = random initialisation."""
    steps: int
    """Optimizer steps of this stage alone."""
    batch: int | None
    """Samples per optimizer step (batch_size x gradient_accumulation_steps x processes)."""
    wall_time_s: float | None
    hardware: str
    command: str
    data: str | None = None
    finished: str | None = None
    """UTC date and time the stage ended (ISO 8601)."""
    teacher: str | None = None
    """The model whose output was a second target (distillation); None = none."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Stage:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _total_wall_time(lineage: list[Stage]) -> float | None:
    times = [s.wall_time_s for s in lineage]
    return None if any(t is None for t in times) else float(sum(times))


@dataclass
class TrainingRecord:
    """What `training.json` beside a trained model holds: the data, recipe and cost of how it was made.

    `steps`, `wall_time_s`, `hardware` and `command` describe this run (the last stage); `lineage` holds every
    stage up to and including it, so the total cost is `total_wall_time_s`. Files written before the lineage
    existed (format 1, e.g. the first bundled bsr-lite-x2) load as a record with one stage built from their
    fields; unknown keys are kept in `extra` and written back.
    """

    data: str
    """The training data in words, e.g. "T91 (91 images), BSD200 = BSDS500 train (200 images), ..."."""
    steps: int
    wall_time_s: float | None
    hardware: str
    command: str
    datasets: list[DatasetInfo] = field(default_factory=list)
    degradation: str | None = None
    sampler: str | None = None
    recipe: str | None = None
    """The resolved TrainConfig as YAML."""
    sampler_state: dict[str, Any] | None = None
    """PIC intervals and quotas in use: rerunning with them reproduces the batches."""
    curve: str | None = None
    processes: list[dict[str, Any]] = field(default_factory=list)
    weights_checksum: list[float] | None = None
    resume_changes: list[dict[str, Any]] = field(default_factory=list)
    """Settings changed at a resume with --resume_allow_changes: {step, field, old, new} each."""
    lineage: list[Stage] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total_wall_time_s(self) -> float | None:
        """Seconds of training over the whole lineage; None when a stage did not record its time."""
        return _total_wall_time(self.lineage)

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.lineage)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": RECORD_FORMAT}
        for f in dataclasses.fields(self):
            if f.name != "extra":
                out[f.name] = getattr(self, f.name)
        out["datasets"] = [dataclasses.asdict(d) for d in self.datasets]
        out["lineage"] = [dataclasses.asdict(s) for s in self.lineage]
        # Derived, for readers that render rather than compute (the model card).
        out["wall_time"] = format_duration(self.wall_time_s) if self.wall_time_s is not None else None
        total = self.total_wall_time_s
        out["total_wall_time_s"] = total
        out["total_wall_time"] = format_duration(total) if total is not None else None
        out["total_steps"] = self.total_steps
        return {**self.extra, **out}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainingRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        derived = {"format", "wall_time", "total_wall_time_s", "total_wall_time", "total_steps"}
        values = {k: v for k, v in d.items() if k in known and k not in ("extra", "datasets", "lineage")}
        values.setdefault("data", "not recorded")
        values.setdefault("steps", 0)
        values.setdefault("hardware", "not recorded")
        values.setdefault("command", "not recorded")
        if "wall_time_s" not in values:  # format 1 kept only the text
            values["wall_time_s"] = parse_duration(d.get("wall_time", ""))
        record = cls(
            **values,
            datasets=[DatasetInfo(**x) for x in d.get("datasets", [])],
            lineage=[Stage.from_dict(s) for s in d.get("lineage", [])],
            extra={k: v for k, v in d.items() if k not in known and k not in derived},
        )
        if "lineage" not in d:  # format 1: the file describes one stage
            recipe = _yaml_or_empty(record.recipe)
            batch = recipe.get("batch_size")
            if batch is not None:
                batch *= recipe.get("gradient_accumulation_steps", 1) * max(1, len(record.processes) or 1)
            name = f"{recipe['preset']}-x{recipe['scale']}" if "preset" in recipe and "scale" in recipe else "unknown"
            record.lineage = [Stage(model=name, init_from=recipe.get("init_from"), steps=record.steps, batch=batch,
                                    wall_time_s=record.wall_time_s, hardware=record.hardware,
                                    command=record.command, data=record.data)]
        return record

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainingRecord:
        """Read a training.json (any format this project has written)."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as err:
            raise ValueError(f"cannot read the training record {path}: {err}") from err

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (a reader never sees half a file), with the recipe beside it as TRAINING_CONFIG_NAME."""
        write_text_atomically(path, json.dumps(self.to_dict(), indent=2) + "\n")
        if self.recipe:
            write_text_atomically(Path(path).with_name(TRAINING_CONFIG_NAME), self.recipe)


def _yaml_or_empty(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    from ..core import require

    yaml = require("yaml", extra="train", what="reading a training record's recipe")
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def lineage_of(init_from: str | None) -> list[Stage]:
    """The stages behind the weights a run starts from: those of their training.json, or none when the
    checkpoint has no record (a Hub model, a `save_pretrained` folder) or starts from scratch."""
    if not init_from:
        return []
    try:
        folder = resolve_checkpoint(init_from, local_files_only=True)
    except CheckpointError:
        return []
    record = folder / TRAINING_INFO_NAME
    return TrainingRecord.load(record).lineage if record.is_file() else []


def read_training(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The folder's `training.json` as written (the card renders it), or None when training wrote none."""
    path = Path(folder) / TRAINING_INFO_NAME
    return json.loads(path.read_text()) if path.is_file() else None


TRAINED_FOR = {
    "benchmark": "benchmark-style LR (MATLAB bicubic, as the papers make it)",
    "real": "real images of unknown origin (other resizers, JPEG, noise)",
}
"""What kind of input a checkpoint suits, by what its training made the LR from: the CLI, the API and the demo
say it next to its name."""


def trained_for(folder: str | os.PathLike) -> str:
    """"real" when the folder's training used a degradation mix (`resizers.DegradationMix`), else "benchmark"."""
    try:
        return trained_for_record(read_training(folder))
    except (OSError, ValueError):
        return "benchmark"


def trained_for_record(training: dict[str, Any] | None) -> str:
    mix = ((training or {}).get("sampler_state") or {}).get("degradation_mix")
    return "real" if mix else "benchmark"


def read_robustness(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The folder's `robustness_results.json` (`robustness.results_document`), or None."""
    path = Path(folder) / ROBUSTNESS_RESULTS_NAME
    return json.loads(path.read_text()) if path.is_file() else None


# ---------------------------------------------------------------------------------------------------------
# The card
# ---------------------------------------------------------------------------------------------------------


def carried_source(model: torch.nn.Module) -> Path | None:
    """The folder `model` was loaded from (`BSRModel.loaded_from`) when that folder's records describe it: it has
    records, and `model` still holds its config and weights exactly. None otherwise (changed weights, no records)."""
    folder = getattr(model, "loaded_from", None)
    if folder is None or not any(any(Path(folder).glob(pattern)) for pattern in CARRIED_RECORDS):
        return None
    return Path(folder) if same_weights(model, folder) else None


def same_weights(model: torch.nn.Module, folder: str | os.PathLike) -> bool:
    """Whether `model` holds exactly the config and weights (dtype and values, wherever it lives) of the checkpoint in
    `folder`: the model its records describe."""
    import torch

    if not isinstance(model, BSRNetwork):
        return False
    target, _ = load_pretrained(BSRNetwork, folder)
    ours = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    theirs = target.state_dict()
    return target.config.to_dict() == model.config.to_dict() and ours.keys() == theirs.keys() and all(
        ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]) for k in theirs
    )


