"""What `train.py` reuses: the typed training config, EMA, checkpoints written atomically, the schedule.

train.py stays a flat script in Accelerate's canonical order; everything here is testable on its own.
Config precedence: dataclass defaults, then a YAML recipe (`--config`), then command-line flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shutil
import signal
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

SAMPLERS = ("rfs-indexed", "rfs-literal", "uniform")
MIXED_PRECISION = ("no", "fp16", "bf16")
CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")


@dataclass
class TrainConfig:
    """Every setting of a training run. The defaults are the no-argument demonstration: bsr-lite x2 on the
    photos bundled with the package, about five minutes on a 2-core CPU. Recipes in configs/ are the real runs."""

    # -- model
    preset: str = "bsr-lite"
    scale: int = 2
    model_overrides: dict[str, Any] = field(default_factory=dict)
    """BSRConfig fields on top of the preset, e.g. {use_attention: false} for an ablation."""
    init_from: str | None = None
    """Start from these weights (bundled name, folder, Hub id); layers whose shape differs (the upsampler, when
    going from x2 to x4) keep their fresh initialisation, and are listed."""

    # -- data
    train_dir: str | None = None
    """A folder of HR images (read with datasets' imagefolder). None with no dataset_name: the bundled photos."""
    dataset_name: str | None = None
    """A Hub dataset id with an image column (instead of train_dir)."""
    dataset_split: str = "train"
    image_column: str | None = None
    lr_column: str | None = None
    """A paired LR column (real-world pairs); None makes LR from HR with `degradation`."""
    streaming: bool = False
    degradation: str = "BI"
    sampler: str = "rfs-indexed"
    """rfs-indexed (fast RFS), rfs-literal (the paper's rejection algorithm) or uniform (the "without RFS" baseline)."""
    patch_size: int = 48
    """LR patch side [paper: 48 at x2, 60 at x4]."""
    batch_size: int = 16
    """Patches per batch and per process [ours: 16, EDSR's]."""
    rfs_tau: float = 0.0
    """Quota temper: 0 = balanced over the PIC intervals, 1 = the natural distribution."""
    rfs_num_intervals: int = 16
    rfs_candidates: int = 16
    """M, candidate images per batch (literal mode)."""
    num_workers: int = 1
    """DataLoader processes drawing batches; the batch stream is the same for any number (exact resume)."""

    # -- validation and final evaluation
    validation_dir: str | None = None
    """A folder of HR images scored every `validation_steps` (e.g. ../shared/data/benchmarks/Set5). None with the
    bundled photos: one of them held out of training."""
    validation_steps: int = 100
    eval_dirs: list[str] = field(default_factory=list)
    """Benchmark folders evaluated at the end and written into the card; empty = the validation set."""

    # -- loss [paper: L2 + a L1 + b Lp]
    l1_weight: float = 0.05
    lp_weight: float = 0.01
    lp_p: float = 0.5
    lp_eps: float = 1e-3

    # -- optimisation
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
    seed: int = 0

    # -- outputs
    output_dir: str = "outputs/bsr-demo"
    checkpointing_steps: int = 100
    checkpoints_total_limit: int | None = 3
    resume: str | None = None
    """"latest" or a checkpoint folder (OUTPUT/checkpoints/step_N)."""
    logging_steps: int = 10
    report_to: str = "none"
    """Accelerate trackers: none, tensorboard, trackio, wandb, ... (their packages are optional)."""
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_private: bool = False

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.train_dir is not None and self.dataset_name is not None:
            raise ValueError("give train_dir or dataset_name, not both")
        for name in ("max_steps", "batch_size", "patch_size", "checkpointing_steps", "validation_steps",
                     "logging_steps", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not all(0 < f < 1 for f in self.lr_decay_at):
            raise ValueError(f"lr_decay_at are fractions of max_steps in (0, 1), got {self.lr_decay_at}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1) or None, got {self.ema_decay}")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub needs hub_model_id (e.g. me/bsr-lite-x2)")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise ValueError("checkpoints_total_limit must be >= 1 or None")

    @property
    def uses_bundled_photos(self) -> bool:
        return self.train_dir is None and self.dataset_name is None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------- config parsing


def _field_type(f: dataclasses.Field) -> tuple[Any, bool]:
    """(base type, optional) of a TrainConfig field, from its annotation string."""
    hint = typing.get_type_hints(TrainConfig)[f.name]
    args = typing.get_args(hint)
    optional = type(None) in args
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in args if a is not type(None))
    return hint, optional


def _none_or(kind: type):
    def parse(text: str):
        return None if text.lower() in ("none", "null") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def build_parser() -> argparse.ArgumentParser:
    """One flag per TrainConfig field; only flags actually given override the recipe (default SUPPRESS)."""
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train a BSR model (single process, or several with `accelerate launch`).",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", help="a YAML recipe (configs/*.yaml); flags given here override it")
    for f in dataclasses.fields(TrainConfig):
        kind, optional = _field_type(f)
        flag = "--" + f.name
        origin = typing.get_origin(kind)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction)
        elif origin is list:
            (item,) = typing.get_args(kind)
            parser.add_argument(flag, nargs="*", type=item)
        elif origin is dict:
            parser.add_argument(flag, type=json.loads, help="JSON object, e.g. '{\"use_attention\": false}'")
        else:
            parser.add_argument(flag, type=_none_or(kind) if optional else kind)
    return parser


def load_config(argv: list[str] | None = None) -> tuple[TrainConfig, str | None]:
    """Defaults, then the YAML recipe, then flags. Returns the config and the recipe path."""
    args = vars(build_parser().parse_args(argv))
    recipe = args.pop("config", None)
    values: dict[str, Any] = {}
    if recipe is not None:
        import yaml

        try:
            loaded = yaml.safe_load(Path(recipe).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"cannot read the recipe {recipe}: {err}") from err
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise ValueError(f"{recipe}: unknown setting(s) {', '.join(unknown)}; see `python train.py --help`")
        values.update(loaded)
    values.update(args)
    return TrainConfig(**values), recipe


def config_to_yaml(config: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False)


# ---------------------------------------------------------------------------------------------- model pieces


def load_matching_weights(model: nn.Module, source: str) -> list[str]:
    """Copy every weight of checkpoint `source` whose name and shape match; the names left as initialised."""
    from .modeling import BSRModel

    donor = BSRModel.from_pretrained(source).state_dict()
    own = model.state_dict()
    matching = {k: v for k, v in donor.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matching, strict=False)
    return sorted(set(own) - set(matching))


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


def rotate_checkpoints(output_dir: str | Path, limit: int | None) -> list[Path]:
    """Delete the oldest checkpoints beyond `limit`; returns what was deleted."""
    if limit is None:
        return []
    found = list_checkpoints(output_dir)
    doomed = [p for _, p in found[: max(0, len(found) - limit)]]
    for p in doomed:
        shutil.rmtree(p)
    return doomed


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
    return f"{n} CPU process(es) on {platform.machine()}, {torch.get_num_threads()} threads each, {os.cpu_count()} cores"


def format_duration(seconds: float) -> str:
    h, rem = divmod(int(round(seconds)), 3600)
    m, s = divmod(rem, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"


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
    fig.savefig(target)
    plt.close(fig)


class StopRequest:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, writes a checkpoint and exits cleanly."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some test runners): no signal handling there
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
