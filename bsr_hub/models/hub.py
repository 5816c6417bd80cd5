"""Where checkpoints come from (bundled, local folder, Hub) and strict loading of their weights."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .configuration import BSRConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

# Checkpoints shipped inside the package: bsr_hub/checkpoints/<name>/{config.json, model.safetensors, README.md}.
BUNDLED_DIR = Path(__file__).resolve().parents[1] / "checkpoints"  # bsr_hub/checkpoints


class CheckpointError(ValueError):
    """A checkpoint that cannot be found, read, or loaded exactly into the model."""


class PushError(OSError):
    """A push to the Hugging Face Hub that did not complete (the connection lost mid-upload, a write refused)."""


# The HTTP packages under huggingface_hub (httpx2 from 1.x on, requests before): their errors are not OSErrors.
_HTTP_PACKAGES = ("httpx", "httpx2", "httpcore", "httpcore2", "requests", "urllib3")


def is_transfer_failure(err: BaseException) -> bool:
    """Whether `err`, or an error it wraps, is the transfer failing (a connection lost, refused or timed out; the
    disk), not the Hub answering or a bug. Told by its package, since which HTTP package raises it depends on the
    version of huggingface_hub."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, OSError) or type(cause).__module__.split(".")[0] in _HTTP_PACKAGES:
            return True
        cause = cause.__cause__
    return False


def push_failure(repo_id: str, err: BaseException) -> str:
    """One line: why pushing to `repo_id` failed. huggingface_hub wraps a failed LFS upload in a RuntimeError that
    names the file but not why, and its HTTP errors span several lines: the chain of causes is followed down to
    the first OSError (the OS's or the Hub's answer; below it the same is said again), repeats dropped and line
    breaks folded."""
    causes: list[str] = []
    cause: BaseException | None = err
    while cause is not None and len(causes) < 3:
        text = " ".join(str(cause).split()).rstrip(".")
        if not any(c.endswith(f": {text}") for c in causes):
            causes.append(f"{type(cause).__name__}: {text}")
        if isinstance(cause, OSError):
            break
        cause = cause.__cause__
    return f"pushing to {repo_id} on the Hugging Face Hub failed: {' <- '.join(causes)}"


PULLED_RECORDS = ("training.json", "eval_results.json", "robustness_results.json", "training_config.yaml")
"""The records (`models.records`) a pull from the Hub fetches beside the weights, when the repo has them."""


def bundled_checkpoints() -> dict[str, Path]:
    """Names of the checkpoints shipped with the package, and their folders."""
    if not BUNDLED_DIR.is_dir():
        return {}
    return {
        p.name: p
        for p in sorted(BUNDLED_DIR.iterdir())
        if (p / CONFIG_NAME).is_file() and (p / WEIGHTS_NAME).is_file()
    }


def list_checkpoints(scale: int | None = None) -> list[str]:
    """Names of the bundled checkpoints (all of them, or those of one scale), for `from_pretrained`."""
    found = bundled_checkpoints()
    if scale is None:
        return list(found)
    return [name for name, folder in found.items() if _bundled_scale(folder) == scale]


INPUT_KINDS = ("photos", "benchmark")
"""What a default is chosen for: "photos", images of unknown origin (a user's files, the demo, the Space), or
"benchmark", LR made by MATLAB's bicubic as in the papers (what `evaluate.py` reports)."""

# The checkpoints a scale gets when the user names none. For photos, the robust bsr-lite (trained on many resizers,
# noise and JPEG): the benchmark models, trained on MATLAB bicubic alone, score about 3 dB *below* plain bicubic
# on LR from OpenCV's INTER_CUBIC (their cards' robustness tables). bsr-tiny is the fast choice, asked for by name.
DEFAULT_CHECKPOINTS = {
    "photos": {2: "bsr-lite-x2-robust", 3: "bsr-lite-x3-robust", 4: "bsr-lite-x4-robust"},
    "benchmark": {2: "bsr-lite-x2", 3: "bsr-lite-x3", 4: "bsr-lite-x4"},
}
DEFAULT_REASONS = {
    "photos": "trained on many resizers, noise and JPEG, for images of unknown origin",
    "benchmark": "trained on MATLAB-bicubic LR, the papers' protocol",
}


def default_checkpoint(scale: int, inputs: str = "photos") -> str:
    """The bundled checkpoint used for `scale` when no model is named: for "photos" (`bsr-hub upscale`, the demo,
    the Space) the robust model of that scale, for "benchmark" the benchmark-protocol one."""
    if inputs not in DEFAULT_CHECKPOINTS:
        raise ValueError(f"inputs must be one of {', '.join(INPUT_KINDS)}, got {inputs!r}")
    name = DEFAULT_CHECKPOINTS[inputs].get(scale)
    if name is None or name not in bundled_checkpoints():
        offered = ", ".join(f"{n} (x{_bundled_scale(f)})" for n, f in bundled_checkpoints().items()) or "none"
        raise CheckpointError(f"no bundled checkpoint for x{scale} {inputs}; bundled: {offered}")
    return name


def default_for(name: str) -> str | None:
    """The input kind a bundled checkpoint is the default for ("photos" or "benchmark"), or None."""
    return next((kind for kind, names in DEFAULT_CHECKPOINTS.items() if name in names.values()), None)


def _bundled_scale(folder: Path) -> int | None:
    try:
        return int(json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))["scale"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _check_folder(folder: Path) -> Path:
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(
            f"{folder} is not a BSR checkpoint: missing {' and '.join(missing)} "
            "(a checkpoint folder is what BSRModel.save_pretrained writes)"
        )
    return folder


def _looks_like_path(name: str) -> bool:
    # A Hub repo id is "name" or "namespace/name"; anything else the user typed was meant as a path.
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def resolve_checkpoint(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Path:
    """The local folder holding `config.json` and `model.safetensors` for a name, a path or a Hub repo id.

    Order: an existing local folder, then a bundled checkpoint name, then the Hub (which honours
    HF_HUB_OFFLINE and the local cache).
    """
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    bundled = bundled_checkpoints()
    if path.is_dir():
        if name in bundled and not (path / CONFIG_NAME).is_file():
            raise CheckpointError(
                f"a folder named {name!r} in {Path.cwd()} shadows the bundled checkpoint {name!r} and is not a "
                "checkpoint itself: rename or move that folder, or run from another directory"
            )
        return _check_folder(path)
    if path.exists():
        raise CheckpointError(f"{path} is a file; pass the checkpoint folder that contains {CONFIG_NAME}")
    if name in bundled:
        return _check_folder(bundled[name])
    if isinstance(name_or_path, Path) or _looks_like_path(name):
        raise CheckpointError(f"no such checkpoint folder: {path}")

    from huggingface_hub import snapshot_download

    bundled_list = ", ".join(bundled) or "none in this version"
    try:
        folder = snapshot_download(
            repo_id=name,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
            # The records too (small): training.json says what the model is for (`records.trained_for`: the demo's
            # default and label), and a pulled model saved again keeps its results and lineage.
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, "README.md", *PULLED_RECORDS],
        )
    except Exception as err:  # offline, unknown repo, invalid id, auth: all end the same way for the user
        raise CheckpointError(
            f"{name!r} is not a local folder or a bundled checkpoint (bundled: {bundled_list}), "
            f"and the Hugging Face Hub could not provide it: {type(err).__name__}: {err}"
        ) from err
    # A repo that holds something else (a dataset pushed by mistake, a folder without weights): named by its id,
    # not by the cache folder the files went to.
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (Path(folder) / n).is_file()]
    if missing:
        raise CheckpointError(
            f"the Hub repo {name!r} (revision {revision or 'main'}) has no {' and no '.join(missing)}, so it is not "
            f"a BSR checkpoint: name another repo or revision, or push a model there with model.push_to_hub({name!r})"
        )
    return Path(folder)


def _summarise(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" ... and {len(keys) - limit} more" if len(keys) > limit else "")


def _mismatch_report(expected: dict[str, tuple], found: dict[str, tuple]) -> list[str]:
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    mismatched = sorted(
        f"{k} (checkpoint {found[k]}, model {expected[k]})" for k in expected.keys() & found.keys() if found[k] != expected[k]
    )
    problems = []
    if missing:
        problems.append(f"missing weights: {_summarise(missing)}")
    if unexpected:
        problems.append(f"unexpected weights: {_summarise(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_summarise(mismatched)}")
    return problems


def check_weights_header(config_file: Path, weights_file: Path, expected: dict[str, tuple]) -> None:
    """Compare the tensor shapes in a safetensors header with the ones a config describes, reading no weights.

    Run before the model is built, so a config.json that describes a huge network next to small weights fails
    here instead of allocating the huge network first.
    """
    from safetensors import SafetensorError, safe_open

    if not weights_file.is_file():
        raise CheckpointError(f"missing weights file {weights_file}")
    try:
        with safe_open(weights_file, framework="pt") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"cannot read {weights_file} (corrupt or not a safetensors file): {err}") from err
    problems = _mismatch_report(expected, found)
    if problems:
        raise CheckpointError(f"{weights_file} does not match the architecture in {config_file.name}; " + "; ".join(problems))


def load_weights_strict(model: nn.Module, weights_file: Path, map_location: str | torch.device = "cpu") -> None:
    """Load a safetensors file into `model`, or raise CheckpointError naming every key that does not fit."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not weights_file.is_file():
        raise CheckpointError(f"missing weights file {weights_file}")
    device = torch.device(map_location)
    try:
        # safetensors accepts "cpu" but not "cpu:0", which is what a multi-process CPU run's device prints as.
        state = load_file(weights_file, device="cpu" if device.type == "cpu" else str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"cannot read {weights_file} (corrupt or not a safetensors file): {err}") from err

    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = _mismatch_report(expected, {k: tuple(v.shape) for k, v in state.items()})
    if problems:
        raise CheckpointError(
            f"{weights_file} does not match the architecture in its config.json; "
            + "; ".join(problems)
        )
    # NaN or infinite weights load fine and then turn every image black: refuse them by name.
    broken = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if broken:
        raise CheckpointError(f"{weights_file} holds NaN or infinite values in {_summarise(broken)}; "
                              "the checkpoint is damaged (or training diverged before it was saved)")
    model.load_state_dict(state, strict=True)


def load_pretrained(
    cls: Callable[[BSRConfig], nn.Module], name_or_path: str | os.PathLike, *,
    map_location: str | torch.device = "cpu", **download: Any,
) -> tuple[nn.Module, Path]:
    """`cls(config)` with the checkpoint's weights loaded strictly, and the folder they came from.

    `cls` is the network class to build (`BSRModel`, or `network.BSRNetwork` where the Hub mixin is not needed);
    `download` goes to `resolve_checkpoint` (revision, cache_dir, force_download, local_files_only, token). The
    header is checked against the config's shapes before anything is allocated, so a wrong or hostile checkpoint
    fails fast and by name.
    """
    folder = resolve_checkpoint(name_or_path, **download)
    config = BSRConfig.from_json_file(folder / CONFIG_NAME)
    with torch.device("meta"):  # the config's shapes, with no memory allocated
        expected = {k: tuple(v.shape) for k, v in cls(config).state_dict().items()}
    check_weights_header(folder / CONFIG_NAME, folder / WEIGHTS_NAME, expected)
    model = cls(config)
    load_weights_strict(model, folder / WEIGHTS_NAME, map_location=map_location)
    return model, folder
