"""The checkpoint folder of a training run: its layout, what guards it against other runs and other people's
files, and how a checkpoint's state is written and read.

- The layout: OUTPUT/checkpoints/step_N/{state/, model/, trainer.json}. A checkpoint is written as .tmp-step_N
  and gets its step_N name in one rename once whole (`finalize_checkpoint`), so "latest" is never half-written;
  `rotate_checkpoints` deletes a run's own oldest ones; `previous_run` / `clear_previous_run` find and delete what
  an earlier run left in the folder.
- `OutputLock`: one trainer per output folder. OUTPUT/.train.lock is held with `flock` (the kernel releases it
  when its holder dies, however it dies) and names the holder's pid and host for the message a second trainer
  gets. A lock file left by a trainer that is gone is taken over, saying whose it was.
- `save_run_state` / `load_training_state`: a checkpoint's `state/` is read with no full unpickler. Checkpoints
  travel (shared folders, the Hub), and unpickling a file runs whatever code it names. The EMA and the scheduler
  are written here as safetensors and JSON; the files Accelerate's `save_state` writes with pickle (optimizer, RNG
  states, gradient scaler) are read with `torch.load(weights_only=True)`, which builds tensors and plain
  containers only. Accelerate's own `load_state` is not used: it unpickles registered objects with
  `weights_only=False` and skips RNG states it cannot read with only a log line (a resume then silently differs).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import torch

from ..models import CARD_NAME, CARRIED_RECORDS, CONFIG_NAME, WEIGHTS_NAME

LOCK_NAME = ".train.lock"
CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")

EMA_WEIGHTS = "ema.safetensors"
RUN_STATE = "run_state.json"
"""Beside Accelerate's files in a checkpoint's state/: the EMA's weights, and the EMA's counters and the scheduler."""


# ---------------------------------------------------------------------------------------------- one trainer per folder


class OutputBusyError(RuntimeError):
    """Another trainer holds the output folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _read_holder(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        holder = json.loads(os.read(fd, 4096).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


class OutputLock:
    """The lock of one output folder, held by the main process from the start of a run to its end."""

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock, or raise OutputBusyError naming the trainer that holds it. Returns a note when the lock
        file of a trainer that is gone was taken over, else None."""
        import fcntl

        host = socket.gethostname()
        while True:
            try:  # O_NOFOLLOW: a symlink planted as the lock would have us write our JSON over its target
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except OSError as err:
                if not self.path.is_symlink():
                    raise
                raise OutputBusyError(
                    f"{self.path} is a symbolic link (to {os.readlink(self.path)}); a trainer's lock is a plain file "
                    "it makes itself, so it will not write through it. Delete the link, or use another --output.dir."
                ) from err
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise OutputBusyError(self._busy_message(holder)) from None
            try:  # the previous holder may have removed the file between our open and our lock: lock the new one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_holder(fd)
        pid = previous.get("pid")
        if (previous.get("host") == host and isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid)):
            # flock said free, yet the trainer named in the file runs on this host: a filesystem where flock does
            # not reach every client (some network filesystems). Trust the pid rather than share the folder.
            os.close(fd)
            raise OutputBusyError(self._busy_message(previous))
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": host,
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        self._fd = fd
        if pid is None or pid == os.getpid():
            return None
        return (f"took over {self.path} from trainer pid {pid} on {previous.get('host', 'an unknown host')} "
                f"(started {previous.get('started', '?')}), which is no longer running")

    def _busy_message(self, holder: dict[str, Any]) -> str:
        who = (f"pid {holder.get('pid', '?')} on {holder.get('host', 'an unknown host')}, started "
               f"{holder.get('started', '?')}")
        return (f"another trainer ({who}) is using {self.path.parent}: two trainers in one folder would overwrite "
                f"each other's checkpoints and history. Wait for it to finish, stop it (it writes a checkpoint on "
                f"SIGTERM), or use another --output.dir. If that process is gone, delete {self.path}.")

    def release(self) -> None:
        """Remove the lock file and let go; safe to call twice."""
        if self._fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None


# ---------------------------------------------------------------------------------------------- checkpoint state


class CheckpointStateError(ValueError):
    """A checkpoint's state that cannot be loaded, safely and whole."""


def save_run_state(state_dir: Path, ema: Any, scheduler: Any) -> None:
    """The EMA (weights as safetensors, counters as JSON) and the scheduler (JSON) into a checkpoint's state/,
    beside what `accelerator.save_state` wrote there. Main process only: every process holds the same ones."""
    from safetensors.torch import save_file

    state: dict[str, Any] = {"scheduler": scheduler.state_dict(), "ema": None}
    if ema is not None:
        weights = {k: v.detach().contiguous().cpu() for k, v in ema.model.state_dict().items()}
        save_file(weights, state_dir / EMA_WEIGHTS)
        state["ema"] = {"decay": ema.decay, "updates": ema.updates}
    (state_dir / RUN_STATE).write_text(json.dumps(state, indent=1))


def _numpy_globals() -> list[Any]:
    """What `torch.load(weights_only=True)` needs to rebuild the numpy RNG state Accelerate pickles: an array of
    uint32 (the reconstruct function, ndarray, dtype). Nothing that can call other code."""
    import numpy as np
    from numpy._core.multiarray import _reconstruct

    # numpy 1 pickled the function under its old module name; both names map to the one function.
    return [_reconstruct, (_reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype,
            type(np.dtype(np.uint32))]


def _load_weights_only(path: Path, extra_globals: list[Any] | None = None) -> Any:
    if not path.is_file():
        raise CheckpointStateError(f"{path} is missing; the checkpoint is incomplete")
    try:
        with torch.serialization.safe_globals(extra_globals or []):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for anything beyond tensors and plain containers, or a damaged file
        raise CheckpointStateError(
            f"cannot load {path}: it holds more than tensors and plain values, or is damaged ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Checkpoint files are never unpickled in full, since "
            "that could run code placed in them; resume from a checkpoint you trust, or start a new run."
        ) from None


def _load_json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointStateError(f"cannot read {path}: {err}") from None
    if not isinstance(loaded, dict):
        raise CheckpointStateError(f"{path} is not a JSON object")
    return loaded


def _restore_rng(states: dict[str, Any], path: Path) -> None:
    import random

    import numpy as np

    try:
        random.setstate(states["random_state"])
        np.random.set_state(states["numpy_random_seed"])
        torch.set_rng_state(states["torch_manual_seed"])
        if torch.cuda.is_available() and "torch_cuda_manual_seed" in states:
            torch.cuda.set_rng_state_all(states["torch_cuda_manual_seed"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointStateError(f"{path} does not hold the random states a resume needs ({err})") from None


def load_training_state(state_dir: str | os.PathLike, accelerator: Any, model: Any, optimizer: Any, scheduler: Any,
                        ema: Any) -> None:
    """Load a checkpoint's state/ (model, optimizer, this process's RNG states, gradient scaler, EMA, scheduler)
    into the prepared objects, with no full unpickler. Checkpoints from before `save_run_state` (the EMA and the
    scheduler in Accelerate's custom_checkpoint_N.pkl) load too, with `weights_only=True`.

    Raises:
        CheckpointStateError: naming the file that is missing, damaged, or holds more than data.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, load_model

    state_dir = Path(state_dir)
    weights = state_dir / "model.safetensors"
    if not weights.is_file():
        raise CheckpointStateError(f"{weights} is missing (a checkpoint's model state is read from safetensors only)")
    try:
        # Into the unwrapped model: save_state writes the model Accelerate keeps before its DDP wrapping (no
        # "module." prefix), so a resume of several processes would find no key it expects in the wrapper.
        load_model(accelerator.unwrap_model(model), weights, strict=True)  # read on the CPU, into the placed parameters
    except (SafetensorError, RuntimeError, OSError) as err:
        raise CheckpointStateError(f"cannot load {weights} into this model: {err}") from None
    optimizer_state = _load_weights_only(state_dir / "optimizer.bin")
    try:
        optimizer.load_state_dict(optimizer_state)
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise CheckpointStateError(f"{state_dir / 'optimizer.bin'} does not fit this optimizer: {err}") from None
    rng_file = state_dir / f"random_states_{accelerator.process_index}.pkl"
    states = _load_weights_only(rng_file, _numpy_globals())
    _restore_rng(states, rng_file)
    if "step" in states:
        accelerator.step = states["step"]  # gradient accumulation counts from here, as Accelerate's load_state does
    if accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(_load_weights_only(state_dir / "scaler.pt"))

    if (state_dir / RUN_STATE).is_file():
        run_state = _load_json(state_dir / RUN_STATE)
        ema_state = None
        if ema is not None:
            counters = run_state.get("ema") or {}
            try:
                ema_state = {"decay": counters["decay"], "updates": counters["updates"],
                             "weights": load_file(state_dir / EMA_WEIGHTS)}
            except (KeyError, OSError, SafetensorError) as err:
                raise CheckpointStateError(f"{state_dir} has no usable EMA state ({err})") from None
        scheduler_state = run_state.get("scheduler")
    else:  # written before run_state.json: Accelerate's custom states, numbered in the order they were registered
        ema_state = _load_weights_only(state_dir / "custom_checkpoint_0.pkl") if ema is not None else None
        scheduler_state = _load_weights_only(state_dir / f"custom_checkpoint_{int(ema is not None)}.pkl")
    try:
        if ema is not None:
            ema.load_state_dict(ema_state)
        scheduler.load_state_dict(scheduler_state)
    except (KeyError, TypeError, RuntimeError, AttributeError) as err:
        raise CheckpointStateError(f"{state_dir}: the EMA or scheduler state does not fit this run ({err})") from None


# ---------------------------------------------------------------------------------------------- the folder's layout


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
