"""What `train.py` reuses: the typed training config, the run's life (`TrainingRun`: resume, history,
checkpoints, EMA, the final record), the schedule. The record it writes (`TrainingRecord`, `training.json`) is
`records.py`'s; its command line is `cli.py`'s (`load_train_config`).

`TrainConfig` composes one typed section per concern: `model`, `data` (`data.DataConfig`), `rfs`
(`sampling.RFSConfig`), `loss` (`losses.LossConfig`), `optim`, `validation`, `output`; the sampler and the loss
take theirs as they are. Precedence: dataclass defaults, then a YAML recipe (`--config`; a mapping per
section), then flags (`--optim.max_steps`). The flat names of bsr_hub 0.1 map onto the sections (`FLAT_NAMES`).
train.py stays a flat script in Accelerate's canonical order; everything here is testable on its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import time
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoints import (
    CheckpointStateError,
    OutputBusyError,
    OutputLock,
    load_training_state,
    save_run_state,
)
from ..core.typed import from_mapping
from ..models.configuration import BSRConfig
from ..core.cpu import describe_cpu
from ..data.sources import DataConfig
from ..core.files import append_text, write_atomically, write_text_atomically
from ..models.hub import CONFIG_NAME, WEIGHTS_NAME
from .losses import LossConfig
from ..models.records import (
    CARD_NAME,
    CARRIED_RECORDS,
    TRAINING_INFO_NAME,
    DatasetInfo,
    Stage,
    TrainingRecord,
    lineage_of,
)
from ..data.resizers import DegradationMix
from ..data.sampling import RFSConfig

MIXED_PRECISION = ("no", "fp16", "bf16")
CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")


@dataclass
class ModelSection:
    """Which network is trained, and from which weights."""

    preset: str = "bsr-lite"
    """A BSRConfig preset (`bsr-hub info PRESET`): bsr-tiny, bsr-lite, bsr-base."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """BSRConfig fields on top of the preset, e.g. {use_attention: false} for an ablation."""
    init_from: str | None = None
    """Start from these weights (bundled name, folder, Hub id); layers whose shape differs (the upsampler, when
    going from x2 to x4) keep their fresh initialisation, and are listed."""


@dataclass
class OptimSection:
    """The optimiser, its schedule and how a step is computed."""

    learning_rate: float = 5e-4
    """Adam [paper: 2e-4, kept by the bsr-base recipes; ours: 5e-4 after a warm-up for the small bsr-lite, which
    gets there sooner with it]."""
    adam_beta2: float = 0.999
    lr_decay_at: list[float] = field(default_factory=lambda: [0.5, 0.75])
    """Fractions of max_steps where the learning rate is multiplied by lr_decay_factor [ours; paper: every 100
    epochs of its 1000-iteration epochs]."""
    lr_decay_factor: float = 0.5
    warmup_steps: int = 50
    max_steps: int = 300
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = None
    """Clip the gradient norm to this; None = no clipping."""
    ema_decay: float | None = 0.999
    """Exponential moving average of the weights; the EMA weights are the ones saved and evaluated. None = off."""
    mixed_precision: str = "no"
    """no, fp16 or bf16 (GPU only: both are unsupported or 10-200x slower on a CPU)."""
    channels_last: bool = True
    deterministic: bool = False
    """Deterministic cuDNN/cuBLAS kernels (slower): a GPU run resumed from a checkpoint then equals an
    uninterrupted one bit for bit, as a CPU run always does."""

    def __post_init__(self) -> None:
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"optim.mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        for name in ("max_steps", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"optim.{name} must be >= 1, got {getattr(self, name)}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be an integer >= 0, got {self.warmup_steps!r} (a negative "
                             "warm-up gives a negative learning rate)")
        for name, low, high, closed in (("learning_rate", 0, 1, True), ("adam_beta2", 0, 1, False),
                                        ("lr_decay_factor", 0, 1, True)):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and low < value
                    and (value <= high if closed else value < high)):
                raise ValueError(f"optim.{name} must be in ({low}, {high}{']' if closed else ')'}, got {value!r}")
        if self.max_grad_norm is not None and not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ValueError(f"optim.max_grad_norm must be > 0 (or none: no clipping), got {self.max_grad_norm!r}; "
                             "a negative norm flips the gradient's sign")
        if not all(0 < f < 1 for f in self.lr_decay_at):
            raise ValueError(f"optim.lr_decay_at are fractions of max_steps in (0, 1), got {self.lr_decay_at}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"optim.ema_decay must be in (0, 1) or None, got {self.ema_decay}")


@dataclass
class ValidationSection:
    """What the run is scored on while it trains, and at the end (into the card)."""

    dir: str | None = None
    """A folder of HR images scored every `steps` (e.g. ../shared/data/benchmarks/Set5). None with the bundled
    photos: one of them held out of training."""
    steps: int = 100
    eval_dirs: list[str] = field(default_factory=list)
    """Benchmark folders evaluated at the end and written into the card; empty = the validation set."""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"validation.steps must be >= 1, got {self.steps}")


@dataclass
class OutputSection:
    """What the run writes, where, and how often: the folder, checkpoints, logs, the Hub."""

    dir: str = "outputs/bsr-demo"
    overwrite: bool = False
    """Start over in an output folder that holds another run: its checkpoints, history and model are deleted first.
    Without it such a folder is refused (unless resumed), so that two runs never mix their records. Has no effect
    with --resume, which continues the folder's run."""
    checkpointing_steps: int = 100
    checkpoints_total_limit: int | None = 3
    logging_steps: int = 10
    report_to: str = "none"
    """Accelerate trackers: none, tensorboard, trackio, wandb, ... (their packages are optional)."""
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_private: bool = False

    def __post_init__(self) -> None:
        if not str(self.dir).strip():
            raise ValueError('output.dir must name a folder (an empty one means the current folder: write "." '
                             "if that is meant)")
        for name in ("checkpointing_steps", "logging_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"output.{name} must be >= 1, got {getattr(self, name)}")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("output.push_to_hub needs output.hub_model_id (e.g. me/bsr-lite-x2)")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise ValueError("output.checkpoints_total_limit must be >= 1 or None")


# The sections of a run, by their name in a recipe (`data:`) and a flag (`--data.train_dir`). `data`, `rfs` and
# `loss` are the very objects the sampler and the loss take (bsr_hub.data.sources, bsr_hub.data.sampling, bsr_hub.training.losses).
SECTIONS: dict[str, type] = {
    "model": ModelSection, "data": DataConfig, "rfs": RFSConfig, "loss": LossConfig, "optim": OptimSection,
    "validation": ValidationSection, "output": OutputSection,
}
RUN_WIDE = {"data": ("scale",), "rfs": ("scale", "seed")}
"""Section fields that are the run's own `scale` and `seed`: set once at the top of a recipe and handed down."""


@dataclass
class TrainConfig:
    """Every setting of a training run: a few run-wide values, then one typed section per concern. The defaults
    are the no-argument demonstration: bsr-lite x2 on the photos bundled with the package, about five minutes on
    a 2-core CPU. Recipes in configs/ are the real runs; `python train.py --help` lists every setting."""

    scale: int = 2
    """The upscaling factor: the model's, the data's and the sampler's."""
    seed: int = 0
    """Seeds the weights' initialisation and the batch stream."""
    resume: str | None = None
    """"latest" or a checkpoint folder (OUTPUT/checkpoints/step_N)."""
    resume_allow_changes: bool = False
    """Resume even where a setting that shapes the batches or the schedule (RESUME_GUARDED) differs from the
    checkpoint's; the changes and their step are then written into the run's record and card."""
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    rfs: RFSConfig = field(default_factory=RFSConfig)
    """The sampler: mode indexed (fast RFS), literal (the paper's rejection algorithm) or uniform (the "without
    RFS" baseline); patch_size [paper: 48 at x2, 60 at x4]; batch_size per process [ours: 16, EDSR's]; tau (0 =
    balanced over the PIC intervals, 1 = the natural distribution); and the rest of `sampling.RFSConfig`."""
    loss: LossConfig = field(default_factory=LossConfig)
    """[paper: L2 + a L1 + b Lp]"""
    optim: OptimSection = field(default_factory=OptimSection)
    validation: ValidationSection = field(default_factory=ValidationSection)
    output: OutputSection = field(default_factory=OutputSection)

    def __post_init__(self) -> None:
        for name, kind in SECTIONS.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                value = section_from_mapping(name, value, self)
            elif not isinstance(value, kind):
                raise ValueError(f"{name} must be a mapping of its settings, got {value!r}")
            # The run-wide values win; section_from_mapping has refused a recipe that set them differently.
            handed = {f: getattr(self, f) for f in RUN_WIDE.get(name, ())}
            if any(getattr(value, f) != v for f, v in handed.items()):
                value = dataclasses.replace(value, **handed)
            setattr(self, name, value)
        # The network this run would build: an unknown preset, a bad override or scale fails here, naming itself.
        self.model_config()

    def model_config(self) -> BSRConfig:
        """The architecture of the trained network: the preset at the run's scale, with the overrides."""
        if not isinstance(self.model.overrides, dict):
            raise ValueError(f"model.overrides must be a mapping of BSRConfig fields, got {self.model.overrides!r}")
        return BSRConfig.from_preset(self.model.preset, scale=self.scale, **self.model.overrides)

    @property
    def model_name(self) -> str:
        """What the trained model is called in its card, `eval_results.json` and lineage: its Hub id, else the output
        folder's name; never the preset's, which names a bundled checkpoint (`bsr-lite-x2`) trained on other data."""
        return self.output.hub_model_id or Path(self.output.dir).resolve().name

    @property
    def sampler_name(self) -> str:
        """How the record names the sampler: rfs-indexed (tau=0.0), rfs-literal (tau=0.5) or uniform."""
        mode = self.rfs.mode
        return "uniform" if mode == "uniform" else f"rfs-{mode} (tau={self.rfs.tau})"

    def to_dict(self) -> dict[str, Any]:
        """Nested and JSON-plain, without the sections' copies of the run-wide values: a recipe's shape."""
        d = dataclasses.asdict(self)
        for name, fields in RUN_WIDE.items():
            for f in fields:
                d[name].pop(f)
        return d

    def flat(self) -> dict[str, Any]:
        """{"scale": 2, ..., "optim.learning_rate": 5e-4, ...}: every setting under its flag's name."""
        out: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            if key in SECTIONS:
                out.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        return out


def _unique_keys_loader(yaml: Any) -> type:
    """yaml.SafeLoader that refuses a key repeated in one mapping (two `optim:` sections): plain YAML keeps the
    last one silently, and the settings of the first are lost."""

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"{key!r} is given twice in one mapping (the second would replace the first)",
                        key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def section_from_mapping(name: str, values: dict[str, Any], run: TrainConfig) -> Any:
    """One recipe section as its typed object; a run-wide value set inside it must agree with the top's."""
    for f in RUN_WIDE.get(name, ()):
        if f in values and values[f] != getattr(run, f):
            raise ValueError(f"{name}.{f}: {f} is set once, at the top of a recipe (`{f}: {values[f]}`), "
                             f"not in the {name} section")
    values = {**values, **{f: getattr(run, f) for f in RUN_WIDE.get(name, ())}}
    return from_mapping(SECTIONS[name], values, f"{name} (see `python train.py --help`)")


# ---------------------------------------------------------------------------------------------- config parsing

# Before the sections, a recipe was one flat mapping. Every old name and where it lives now: old recipes, old
# flags (kept as aliases) and old checkpoints' records keep working.
FLAT_NAMES = {
    "preset": "model.preset", "model_overrides": "model.overrides", "init_from": "model.init_from",
    "train_dir": "data.train_dir", "dataset_name": "data.dataset_name", "dataset_split": "data.split",
    "image_column": "data.image_column", "lr_column": "data.lr_column", "streaming": "data.streaming",
    "degradation": "data.degradation", "degradation_mix": "data.degradation_mix", "num_workers": "data.num_workers",
    "sampler": "rfs.mode", "patch_size": "rfs.patch_size", "batch_size": "rfs.batch_size", "rfs_tau": "rfs.tau",
    "rfs_num_intervals": "rfs.num_intervals", "rfs_candidates": "rfs.num_candidates",
    "validation_dir": "validation.dir", "validation_steps": "validation.steps", "eval_dirs": "validation.eval_dirs",
    "l1_weight": "loss.l1_weight", "lp_weight": "loss.lp_weight", "lp_p": "loss.lp_p", "lp_eps": "loss.lp_eps",
    **{name: f"optim.{name}" for name in (
        "learning_rate", "adam_beta2", "lr_decay_at", "lr_decay_factor", "warmup_steps", "max_steps",
        "gradient_accumulation_steps", "max_grad_norm", "ema_decay", "mixed_precision", "channels_last",
        "deterministic")},
    "output_dir": "output.dir", "overwrite_output_dir": "output.overwrite",
    **{name: f"output.{name}" for name in (
        "checkpointing_steps", "checkpoints_total_limit", "logging_steps", "report_to", "push_to_hub",
        "hub_model_id", "hub_private")},
}
OLD_SAMPLER_NAMES = {"rfs-indexed": "indexed", "rfs-literal": "literal", "uniform": "uniform"}
"""The flat `sampler` setting's values, as rfs.mode's."""


def nest(values: dict[str, Any], where: str) -> tuple[dict[str, Any], list[str]]:
    """A recipe or flags as the nested mapping TrainConfig takes: dotted keys ("optim.max_steps") and old flat
    names ("max_steps") go into their section. Returns it, and the old names met spelled anew ("max_steps ->
    optim.max_steps") for a note.

    Raises:
        ValueError: a section given as something else than a mapping, or one setting given twice.
    """
    nested: dict[str, Any] = {}
    renamed = []
    for key, value in values.items():
        if key in SECTIONS:
            value = {} if value is None else value  # a section whose settings are all commented out
            if not isinstance(value, dict):
                raise ValueError(f"{where}: {key} is a section, a mapping of its settings; got {value!r}")
            for k, v in value.items():
                _put(nested, key, k, v, where)
            continue
        if key in FLAT_NAMES:
            renamed.append(f"{key} -> {FLAT_NAMES[key]}")
            if key == "sampler":
                if value not in OLD_SAMPLER_NAMES:
                    raise ValueError(f"{where}: sampler must be one of {tuple(OLD_SAMPLER_NAMES)}, got {value!r} "
                                     "(its new spelling is rfs.mode: indexed, literal or uniform)")
                value = OLD_SAMPLER_NAMES[value]
            key = FLAT_NAMES[key]
        section, _, name = key.partition(".")
        if name and section in SECTIONS:
            _put(nested, section, name, value, where)
        else:
            nested[key] = value  # a run-wide value, or an unknown name for from_mapping to refuse
    return nested, renamed


def _put(nested: dict[str, Any], section: str, name: str, value: Any, where: str) -> None:
    part = nested.setdefault(section, {})
    if name in part:
        raise ValueError(f"{where}: {section}.{name} is given twice (an old flat name and its new spelling?)")
    part[name] = value


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`, section by section: a flag replaces one setting of a section, not the section."""
    out = {k: dict(v) if k in SECTIONS else v for k, v in base.items()}
    for key, value in top.items():
        if key in SECTIONS:
            out.setdefault(key, {}).update(value)
        else:
            out[key] = value
    return out


def config_from_dict(values: dict[str, Any], where: str = "training config") -> TrainConfig:
    """A TrainConfig from a nested mapping (a recipe, a checkpoint's record); old flat names are accepted."""
    nested, _ = nest(values, where)
    return from_mapping(TrainConfig, nested, f"{where} (see `python train.py --help`)")


def resolve_config(recipe: str | os.PathLike | None, flags: dict[str, Any]) -> TrainConfig:
    """Config precedence: dataclass defaults, then the YAML recipe (if any), then `flags` (those given, by their
    dotted names). A recipe in the old flat spelling still works, with a note giving each new name.

    Raises:
        ValueError: the recipe cannot be read, or names a setting TrainConfig does not have.
    """
    values: dict[str, Any] = {}
    where = str(recipe or "train.py")
    if recipe is not None:
        from ..core.extras import require

        yaml = require("yaml", extra="train", what="a YAML recipe (--config)")
        try:
            loaded = yaml.load(Path(recipe).read_text(), Loader=_unique_keys_loader(yaml)) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"cannot read the recipe {recipe}: {err}") from err
        if not isinstance(loaded, dict):
            raise ValueError(f"the recipe {recipe} must be a mapping of settings, got {type(loaded).__name__}")
        values, renamed = nest(loaded, where)
        if renamed:
            import warnings

            warnings.warn(f"{recipe} uses the flat names of bsr_hub 0.1; they still work, but the sections are the "
                          f"spelling to keep: {', '.join(renamed)}", FutureWarning, stacklevel=3)
    values = merge(values, nest(flags, "the flags")[0])
    return from_mapping(TrainConfig, values, f"{where} (see `python train.py --help`)")


def config_to_yaml(config: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def field_type(cls: type, name: str) -> tuple[Any, bool]:
    """(base type, optional) of a config dataclass field, from its annotation: what a command-line flag parses."""
    hint = typing.get_type_hints(cls, localns={"DegradationMix": DegradationMix})[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in args if a is not type(None))
    return hint, optional


# ---------------------------------------------------------------------------------------------- model pieces


def load_matching_weights(model: nn.Module, source: str) -> list[str]:
    """Copy every weight of checkpoint `source` whose name and shape match; the names left as initialised."""
    from ..models.modeling import BSRModel

    donor = BSRModel.from_pretrained(source).state_dict()
    own = model.state_dict()
    matching = {k: v for k, v in donor.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matching, strict=False)
    return sorted(set(own) - set(matching))


def _drop_autocast_forward(model: nn.Module) -> Any:
    """Remove Accelerate's mixed-precision wrapper (an instance attribute over the class's `forward`); returns it."""
    model.__dict__.pop("_original_forward", None)
    return model.__dict__.pop("forward", None)


@contextlib.contextmanager
def fp32_forward(model: nn.Module) -> Iterator[nn.Module]:
    """The live model with its class's fp32 `forward` for a while, its mixed-precision wrapper back afterwards.

    Under `mixed_precision`, Accelerate wraps the prepared model's forward in autocast. Validation measures the
    network that will be shipped (fp32 weights, run in fp32), and the graph backends of `upscale` cannot trace
    the wrapper's casts (ONNX has no bf16 convolution). Accelerate's own `unwrap_model(keep_fp32_wrapper=False)`
    removes the wrapper for good, which would end mixed precision for the rest of the run.
    """
    saved = {k: model.__dict__[k] for k in ("forward", "_original_forward") if k in model.__dict__}
    _drop_autocast_forward(model)
    try:
        yield model
    finally:
        model.__dict__.update(saved)


class EMA:
    """Exponential moving average of a model's weights (checkpointed with the run's state).

    The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so that a short run is not judged on
    weights that are still mostly the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float):
        import copy

        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        _drop_autocast_forward(self.model)  # the average is shipped and evaluated in fp32


    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        ema = list(self.model.parameters())
        live = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema, live, 1.0 - decay)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "weights": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay, self.updates = state["decay"], state["updates"]
        self.model.load_state_dict(state["weights"])


def step_decay(max_steps: int, decay_at: list[float], factor: float, warmup_steps: int = 0):
    """LambdaLR multiplier: linear warm-up, then x factor at each fraction of max_steps in decay_at."""
    milestones = sorted(int(round(f * max_steps)) for f in decay_at)

    def multiplier(step: int) -> float:
        warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
        return warm * factor ** sum(step >= m for m in milestones)

    return multiplier


# ---------------------------------------------------------------------------------------------- checkpoints


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first. A checkpoint folder only gets its `step_N` name once it is whole."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = CHECKPOINT_PATTERN.match(p.name)
        if m and p.is_dir() and (p / "trainer.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint folder to resume from, or None. `latest` with no checkpoint starts fresh, with a note."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1][1] if found else None
    path = Path(resume)
    if not (path / "trainer.json").is_file() or not (path / "state").is_dir():
        raise ValueError(f"{path} is not a complete checkpoint (expected trainer.json and state/ inside)")
    return path


def remove_partial_checkpoints(output_dir: str | Path) -> list[Path]:
    """Leftovers of a save that was interrupted (a crash or a kill during the write)."""
    root = checkpoints_dir(output_dir)
    stale = [p for p in root.glob(".tmp-step_*")] if root.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def checkpoint_run_id(checkpoint: Path) -> str | None:
    """The id of the run that wrote a checkpoint (None: written before runs had ids, or unreadable)."""
    try:
        return json.loads((checkpoint / "trainer.json").read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def rotate_checkpoints(output_dir: str | Path, limit: int | None, run_id: str | None, step: int) -> list[Path]:
    """Delete this run's oldest checkpoints beyond `limit`; returns what was deleted.

    Only checkpoints of run `run_id` up to `step` (the one just written) count: a checkpoint another run left, or
    one ahead of a resume from an earlier step, is never the reason the newest one of this run is deleted.
    """
    if limit is None:
        return []
    found = [p for s, p in list_checkpoints(output_dir) if s <= step and checkpoint_run_id(p) == run_id]
    doomed = found[: max(0, len(found) - limit)]
    for p in doomed:
        shutil.rmtree(p)
    return doomed


def previous_run(output_dir: str | Path) -> list[str]:
    """What an earlier run left in an output folder (its checkpoints, history, model), in words; [] if nothing."""
    output = Path(output_dir)
    root = checkpoints_dir(output)
    left = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    found = [f"checkpoints/ ({', '.join(left)})"] if left else []
    found += [name for name in ("history.jsonl", "model/") if (output / name.rstrip("/")).exists()]
    return found


def _written_by_a_run(name: str) -> bool:
    """A file a run (and a later evaluation or robustness run) writes into OUTPUT/model/: the checkpoint's own
    files and the records `records.CARRIED_RECORDS` names."""
    import fnmatch

    return name in (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME) or any(fnmatch.fnmatch(name, p) for p in CARRIED_RECORDS)


def clear_previous_run(output_dir: str | Path) -> list[Path]:
    """Delete what a run wrote there, as `previous_run` finds it: an explicit --output.overwrite starts the folder
    over. Only the run's own files go (checkpoint folders step_N, model/'s own files, history.jsonl): a file
    of the user's in model/ or checkpoints/ stays, with its folder. Returns what was kept."""
    output = Path(output_dir)
    kept = []
    root = checkpoints_dir(output)
    if root.is_dir():
        for entry in root.iterdir():
            if entry.is_dir() and not entry.is_symlink() and (CHECKPOINT_PATTERN.match(entry.name)
                                                               or entry.name.startswith(".tmp-step_")):
                shutil.rmtree(entry)
            else:
                kept.append(entry)
    model = output / "model"
    if model.is_dir():
        for entry in model.iterdir():
            if _written_by_a_run(entry.name) and (entry.is_file() or entry.is_symlink()):
                entry.unlink()
            else:
                kept.append(entry)
    for folder in (root, model):
        with contextlib.suppress(OSError):  # left in place when something of the user's is in it
            folder.rmdir()
    (output / "history.jsonl").unlink(missing_ok=True)
    return kept


def finalize_checkpoint(tmp: Path, final: Path) -> None:
    """Give a fully written checkpoint its real name, in one rename (atomic on a POSIX filesystem)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


# ---------------------------------------------------------------------------------------------- the run's record


def hardware_description(accelerator: Any) -> str:
    n = accelerator.num_processes
    if accelerator.device.type == "cuda":
        name = torch.cuda.get_device_name(accelerator.device)
        return f"{n} x {name}" + (f", {accelerator.mixed_precision} mixed precision" if accelerator.mixed_precision != "no" else "")
    precision = f", {accelerator.mixed_precision} autocast" if accelerator.mixed_precision != "no" else ", fp32"
    return (f"{n} CPU process(es) on {describe_cpu()}, {torch.get_num_threads()} threads each, {os.cpu_count()} "
            f"cores{precision}")


def plot_curves(history: list[dict[str, Any]], target: Path) -> None:
    """Training loss and validation PSNR against the step, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = [(h["step"], h["loss"]) for h in history if "loss" in h]
    psnrs = [(h["step"], h["val_psnr"]) for h in history if "val_psnr" in h]
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    if losses:
        ax.plot(*zip(*losses), color="tab:blue", lw=1, label="training loss")
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (L2 + a L1 + b Lp)", color="tab:blue")
    if psnrs:
        ax2 = ax.twinx()
        ax2.plot(*zip(*psnrs), color="tab:red", marker="o", ms=3, lw=1, label="validation PSNR")
        ax2.set_ylabel("validation PSNR, Y (dB)", color="tab:red")
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(target, lambda tmp: fig.savefig(tmp, format="png"))  # a new file, never through a link
    plt.close(fig)


def launched_by_a_launcher() -> bool:
    """Whether `accelerate launch` or torchrun started this process (they set these variables for their children)."""
    return "ACCELERATE_MIXED_PRECISION" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ


class StopRequest:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, writes a checkpoint and exits cleanly.

    A job scheduler sends SIGTERM to the process it started, here `accelerate launch`, and what reaches train.py
    depends on the launcher's version. Up to accelerate 1.15 its single-process launcher does not pass the signal
    on but dies of it, leaving the trainer running with nobody to stop it (and a restart would then train beside
    it): with `watch_parent`, the end of the process that started this one counts as a stop request too (its
    children are re-parented when it dies, which a step notices for the price of one system call). From 1.16 the
    launcher sends SIGTERM to its whole process tree and SIGKILLs what is left 5 s later: the step in progress
    and the checkpoint must fit in those 5 s, or the last periodic checkpoint is what remains.
    """

    def __init__(self, watch_parent: bool = False) -> None:
        self.signal: signal.Signals | None = None  # the first signal received, for the message
        self._parent = os.getppid() if watch_parent else None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None or self.parent_gone

    @property
    def parent_gone(self) -> bool:
        return self._parent is not None and os.getppid() != self._parent

    def reason(self) -> str:
        if self.signal is not None:
            return f"{self.signal.name} received"
        return "the process that launched this one has ended (a signal to `accelerate launch`?)"

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some test runners): no signal handling there
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A DataLoader `worker_init_fn`: the trainer alone answers SIGINT and SIGTERM.

    Ctrl-C reaches the whole process group and accelerate 1.16's launcher signals the whole process tree. A data
    worker that died of the signal would make PyTorch raise "DataLoader worker exited unexpectedly" in the
    trainer mid-step, before it could write its stop checkpoint. The trainer ends its workers itself at exit
    (`end_data_workers_at_exit`, which the trainer must register).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def end_data_workers_at_exit() -> None:
    """In the trainer, once its DataLoader exists: at interpreter exit, kill the daemonic child processes still
    running (the data workers, when their iterator was not collected first).

    multiprocessing's own exit hook ends daemonic children with SIGTERM and then joins them; the workers ignore
    SIGTERM (`ignore_stop_signals`), so that join waited forever: a finished run printed "saved ..." and never
    exited. atexit runs hooks last-registered first, so this one runs before multiprocessing's."""
    import atexit
    import multiprocessing

    def end() -> None:
        for child in multiprocessing.active_children():
            if child.daemon:
                child.kill()

    atexit.register(end)


# ---------------------------------------------------------------------------------------------- the training data

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
# Folder names of ../shared/data/train and what the literature calls them (../shared/data/README.md).
KNOWN_DATASETS = {
    "T91": "T91",
    "BSD200": "BSD200 = BSDS500 train",
    "BSDS500_test200": "BSDS500 test",
}


def _count_images(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def check_train_dir(folder: str | os.PathLike) -> None:
    """Raise ValueError, naming the folder, when a --data.train_dir has no image to train on (in it or below)."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"--data.train_dir {folder}: no such folder")
    if not _count_images(root):
        raise ValueError(f"--data.train_dir {folder}: no images in it or its subfolders (looked for "
                         f"{', '.join(sorted(IMAGE_SUFFIXES))} files)")


PHOTO_SET_MANIFEST = "manifest.csv"
"""The manifest of a set made by bench/make_photo_set.py: a row per source image with its package and licence, and
whether it was kept."""


def describe_training_data(cfg: TrainConfig, source: Any = None) -> list[DatasetInfo]:
    """The training data as named datasets with image counts, not a local path; several train_dirs one after the
    other.

    A train_dir's subfolders are its datasets (../shared/data/train: T91/, BSD200/, BSDS500_test200/); images
    directly in it count as one dataset named after the folder. A folder with a photo-set manifest
    (`PHOTO_SET_MANIFEST`) is one dataset named by its packages, with the licences of its kept images. A Hub
    dataset is named by its id and split.
    """
    if cfg.data.uses_bundled_photos:
        count = len(source) if source is not None and hasattr(source, "__len__") else None
        return [DatasetInfo("the photos bundled with bsr_hub (CC0/public domain), astronaut held out", count)]
    if cfg.data.dataset_name is not None:
        count = len(source) if source is not None and hasattr(source, "__len__") else None
        return [DatasetInfo(f"{cfg.data.dataset_name} (Hugging Face Hub, split {cfg.data.split})", count)]
    return [info for folder in cfg.data.train_dirs for info in _describe_folder(Path(folder))]


def _describe_photo_set(root: Path) -> DatasetInfo:
    """A folder made by bench/make_photo_set.py: its packages and licences, from the kept rows of its manifest."""
    import csv

    with (root / PHOTO_SET_MANIFEST).open(newline="") as f:
        kept = [row for row in csv.DictReader(f) if row.get("status") == "kept"]
    packages = sorted({row["package"] for row in kept if row.get("package")})
    licences = sorted({row["licence"] for row in kept if row.get("licence")})
    # "Not flat", not "photographs": the rule also keeps renders with noisy gradients (bench/results/photo_set.md).
    name = f"{root.name}: Debian wallpapers, not flat by a PIC rule, from {', '.join(packages) or '(none listed)'}"
    return DatasetInfo(name, _count_images(root), ", ".join(licences) or "not stated")


def _describe_folder(root: Path) -> list[DatasetInfo]:
    if (root / PHOTO_SET_MANIFEST).is_file():
        return [_describe_photo_set(root)]
    found = []
    loose = sum(1 for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if loose:
        found.append(DatasetInfo(KNOWN_DATASETS.get(root.name, root.name), loose))
    known = list(KNOWN_DATASETS)
    subfolders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    # The known sets in the order the literature lists them (T91 first), then any others by name.
    for sub in sorted(subfolders, key=lambda p: (known.index(p.name) if p.name in known else len(known), p.name)):
        n = _count_images(sub)
        if n:
            found.append(DatasetInfo(KNOWN_DATASETS.get(sub.name, sub.name), n))
    return found


# ---------------------------------------------------------------------------------------------- resume guard

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


# ---------------------------------------------------------------------------------------------- the run's life


def non_finite_message(cfg: TrainConfig, step: int, checkpoint: Path | None) -> str:
    """What to say when the loss stops being a number: where it happened, what was kept, what to change."""
    kept = (f"the last good checkpoint, {checkpoint}, is kept" if checkpoint is not None
            else "no checkpoint was written before it")
    clipping = "" if cfg.optim.max_grad_norm else ", or set optim.max_grad_norm (clipping is off)"
    return (f"the loss became inf or nan at step {step}; training stopped without saving the weights, which are "
            f"no longer finite ({kept}). The usual cause is a learning rate too high for this model and batch: "
            f"lower optim.learning_rate (now {cfg.optim.learning_rate:g}){clipping}, and resume from the checkpoint "
            "with --resume_allow_changes, or start over")


class LossMeter:
    """Loss terms summed as detached tensors on the device, so that a step makes no host sync; `mean()` is the
    one sync per logging interval."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._sum: torch.Tensor | None = None
        self.count = 0
        self._first_bad: torch.Tensor | None = None  # () int64 on the device: the first non-finite step, or -1

    def add(self, total: torch.Tensor, terms: dict[str, torch.Tensor], step: int) -> None:
        """`step`: the optimiser step this loss belongs to (1-based), named if the loss is not finite."""
        self.names = ["loss", *terms]
        values = torch.stack([total.detach().float(), *(t.detach().float() for t in terms.values())])  # (1 + T,)
        self._sum = values if self._sum is None else self._sum + values
        self.count += 1
        bad = ~torch.isfinite(values[0])  # on the device, no sync
        first = self._first_bad if self._first_bad is not None else torch.full((), -1, device=values.device)
        self._first_bad = torch.where(bad & (first < 0), torch.full_like(first, step), first)

    def first_non_finite(self, accelerator: Any = None) -> int | None:
        """The first step whose loss was inf or nan on any process, or None: a host sync (and, with several
        processes, a gather that every process must reach at the same step)."""
        if self._first_bad is None:
            return None
        flags = self._first_bad[None]  # (1,)
        if accelerator is not None and accelerator.num_processes > 1:
            flags = accelerator.gather(flags)  # (processes,)
        bad = [int(v) for v in flags.tolist() if v >= 0]
        return min(bad) if bad else None

    def mean(self) -> dict[str, float]:
        if self._sum is None:
            return {}
        values = (self._sum / self.count).tolist()  # host sync point
        self._sum, self.count = None, 0
        return dict(zip(self.names, values))


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
        self._lock = OutputLock(self.output) if accelerator.is_main_process else None
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
        """The main process claims the output folder, resolves --resume (node-local disks may disagree) and checks
        the guard; every process gets its answer, or its error, by broadcast."""
        import uuid

        from accelerate.utils import broadcast_object_list

        payload: dict[str, Any] = {}
        if self.accelerator.is_main_process:
            try:
                self._claim_output()
                payload = self._read_resume_point() or {"run_id": uuid.uuid4().hex}
            except (ValueError, OSError, KeyError, OutputBusyError) as err:
                payload = {"error": str(err)}
        payload = broadcast_object_list([payload])[0]
        if "error" in payload:
            raise SystemExit(f"error: {payload['error']}")
        self.run_id = payload["run_id"]
        if "checkpoint" not in payload:
            if self.cfg.resume == "latest":
                self.accelerator.print(f"--resume latest: no checkpoint in {checkpoints_dir(self.output)} yet, "
                                       "starting from step 0")
            return
        self.resumed_from = Path(payload["checkpoint"])
        self.step, self.wall_before = payload["step"], payload["wall_time_s"]
        self.changes, self.hardware = payload["changes"], payload["hardware"]
        self.parent_lineage = payload["parent_lineage"]
        for c in payload["new_changes"]:
            self.accelerator.print(f"resume at step {self.step} with a changed setting (allowed): "
                                   f"{c['field']} {c['old']!r} -> {c['new']!r}")

    def _claim_output(self) -> None:
        """Main process: take the folder's lock, clear interrupted checkpoint writes, and refuse (or, with
        --overwrite_output_dir, delete) what another run left there, so that rotation, history and records only
        ever see one run."""
        self.output.mkdir(parents=True, exist_ok=True)
        note = self._lock.acquire()
        if note:
            self.accelerator.print(note)
        for stale in remove_partial_checkpoints(self.output):
            self.accelerator.print(f"removed an interrupted checkpoint write: {stale}")
        if self._continues_this_folder():
            if self.cfg.output.overwrite:
                self.accelerator.print("--output.overwrite has no effect with --resume: the folder's run goes on")
            return
        left = previous_run(self.output)
        if not left:
            return
        if not self.cfg.output.overwrite:
            if self.cfg.resume == "latest":  # nothing to resume, and starting over would replace what is there
                raise ValueError(
                    f"--resume latest: no checkpoint in {checkpoints_dir(self.output)} to resume, and {self.output} "
                    f"holds another run: {'; '.join(left)}. Starting from step 0 would replace it. Start over in "
                    "this folder (--output.overwrite deletes those files first) or choose another --output.dir."
                )
            raise ValueError(
                f"{self.output} holds another run: {'; '.join(left)}. Resume it (--resume latest), start over in this "
                "folder (--output.overwrite deletes those files first), or choose another --output.dir."
            )
        kept = clear_previous_run(self.output)
        self.accelerator.print(f"--output.overwrite: deleted the previous run's {'; '.join(left)} in {self.output}")
        if kept:
            self.accelerator.print(f"kept what no run wrote there: {', '.join(str(p) for p in kept)}")

    def _continues_this_folder(self) -> bool:
        """Whether --resume continues the run in the output folder (not a fresh run, nor one from elsewhere)."""
        if self.cfg.resume is None:
            return False
        if self.cfg.resume == "latest":
            # With no checkpoint the run starts from step 0, which must not replace a finished model (a run killed
            # before its first checkpoint, which left only its history, just starts again).
            return bool(list_checkpoints(self.output)) or not (self.output / "model").exists()
        return checkpoints_dir(self.output).resolve() in Path(self.cfg.resume).resolve().parents

    def _read_resume_point(self) -> dict[str, Any]:
        checkpoint = resolve_resume(self.cfg.resume, self.output)
        if checkpoint is None:
            return {}
        trainer = json.loads((checkpoint / "trainer.json").read_text())
        step = trainer["step"]
        new = [{"step": step, "field": k, "old": old, "new": now}
               for k, old, now in check_resume(trainer["config"], self.cfg, checkpoint)]
        parent = trainer.get("parent_lineage")
        return {
            "checkpoint": str(checkpoint), "step": step, "wall_time_s": trainer["wall_time_s"],
            "run_id": trainer.get("run_id"),
            "changes": trainer.get("resume_changes", []) + new, "new_changes": new,
            "hardware": trainer.get("hardware", []),
            "parent_lineage": None if parent is None else [Stage.from_dict(s) for s in parent],
        }

    def init_weights(self, model: nn.Module) -> None:
        """Load --init_from into a fresh model (not on a resume: the checkpoint's weights replace them)."""
        if self.resumed_from is not None or not self.cfg.model.init_from:
            return
        from ..models.hub import CheckpointError

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
            try:
                load_training_state(self.resumed_from / "state", self.accelerator, self.model, optimizer,
                                    self.scheduler, self.ema)
            except CheckpointStateError as err:
                raise SystemExit(f"error: cannot resume from {self.resumed_from}: {err}") from None
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
        """checkpoints/step_N/{state/, model/, trainer.json}, named step_N only once whole."""
        accelerator = self.accelerator
        final = checkpoints_dir(self.output) / f"step_{self.step}"
        tmp = checkpoints_dir(self.output) / f".tmp-step_{self.step}"
        accelerator.save_state(str(tmp / "state"))  # every process writes its own RNG state
        accelerator.wait_for_everyone()  # save_state has no barrier: let every rank finish before the rename
        if accelerator.is_main_process:
            self.shippable().save_pretrained(tmp / "model")
            trainer = {
                "step": self.step, "run_id": self.run_id, "wall_time_s": self.wall_time(), "config": self.cfg.to_dict(),
                "sampler": self.sampler.to_dict(), "resume_changes": self.changes, "hardware": self._hardware_now(),
                "parent_lineage": [dataclasses.asdict(s) for s in self.parent_lineage or []],
            }
            save_run_state(tmp / "state", self.ema, self.scheduler)
            (tmp / "trainer.json").write_text(json.dumps(trainer, indent=2))
            finalize_checkpoint(tmp, final)  # "latest" is never half-written
            rotate_checkpoints(self.output, self.cfg.output.checkpoints_total_limit, self.run_id, self.step)
        accelerator.wait_for_everyone()
        return final

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
                      finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        return TrainingRecord(
            data=described, datasets=data, degradation=cfg.data.degradation,
            sampler=cfg.sampler_name,
            steps=self.step, wall_time_s=round(wall, 1), hardware=hardware, command=self.command,
            recipe=config_to_yaml(cfg), sampler_state=self.sampler.to_dict(), curve="training_curve.png",
            processes=processes, weights_checksum=checksum, resume_changes=self.changes,
            lineage=[*(self.parent_lineage or []), stage],
        )
