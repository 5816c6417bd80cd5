"""The typed training config and its recipes: every setting of a run, where each comes from, and the recipe
it is written back as.

`TrainConfig` composes one typed section per concern: `model`, `data` (`data.DataConfig`), `rfs`
(`sampling.RFSConfig`), `loss` (`losses.LossConfig`), `distill` (`distill.DistillConfig`), `optim`, `validation`,
`output`; the sampler and the loss take theirs as they are. Precedence: dataclass defaults, then a YAML recipe
(`--config`; a mapping per section), then flags (`--optim.max_steps`). The flat names of bsr_hub 0.1 map onto the sections (`FLAT_NAMES`).
Its command line is the commands layer's (`load_train_config`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core import from_mapping
from ..data import DataConfig, DegradationMix, RFSConfig
from ..models import BSRConfig
from .distill import DistillConfig
from .losses import LossConfig

MIXED_PRECISION = ("no", "fp16", "bf16", "auto")


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
    """no, fp16 (GPU only), bf16 (autocast; on a CPU only where it has avx512_bf16 or AMX: 10-200x slower
    elsewhere), or auto: bf16 where the device computes it natively, no elsewhere (training/precision.py)."""
    channels_last: bool = True
    deterministic: bool = False
    """Deterministic cuDNN/cuBLAS kernels (slower): a GPU run resumed from a checkpoint then equals an
    uninterrupted one bit for bit, as a CPU run always does."""
    cudnn_benchmark: bool = True
    """On a GPU, cuDNN times its convolution kernels on the first batch of each shape and keeps the fastest
    (training batches have one shape); bench/gpu.py's throughput grid, which sizes GPU runs, times the step with
    the same choice. Off under `deterministic`, whose kernels are fixed; nothing on a CPU."""

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
    save_on_each_node: bool = False
    """Machines with disks of their own (node-local output folders): every machine keeps a whole copy of each
    checkpoint in its own output folder, so that a resume finds one on every machine (Accelerate's
    `save_on_each_node`). Off: checkpoints are written once, into the main process's folder, which the other
    machines must share for a resume. The model, its card and the history are written once either way, by the
    main process. Nothing changes where the folder is shared: one copy is written."""
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
    "model": ModelSection, "data": DataConfig, "rfs": RFSConfig, "loss": LossConfig, "distill": DistillConfig,
    "optim": OptimSection, "validation": ValidationSection, "output": OutputSection,
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
    distill: DistillConfig = field(default_factory=DistillConfig)
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
        from ..core import require

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
