"""A run over several machines whose output folders may be one shared folder or a disk of each machine's own.

- `find_disks`: which processes see the same output folder, found by writing a marker file into it and looking
  for the others' (the path is the same string on every machine; whether it is the same folder is not).
- `DiskLayout`: which disks keep a copy of each checkpoint (the main process's always; every disk with
  `output.save_on_each_node`) and which one process writes each copy (the first local main process on it, so a
  folder shared by several machines still gets exactly one).
- `missing_to_resume`: what this process lacks, on its own disk, of the checkpoint the main process resumes from.
- `agree`: errors every process raises together. A process that stops alone leaves the others waiting in their
  next collective operation (a hang, or a transport error far from the cause), so every check whose answer can
  differ between machines ends in `agree`.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core import describe_process

MARKER_PREFIX = ".bsr-disk-check-"


def where(accelerator: Any) -> str:
    """This process in words, for messages: "node 1 (process 1 on HOST)"."""
    return describe_process(accelerator)


def agree(accelerator: Any, error: str | None) -> None:
    """Raise SystemExit("error: ...") on every process when any process has an error (all of them, in one line).
    A collective operation: every process calls it at the same point, with None when all is well."""
    if accelerator.num_processes == 1:
        if error:
            raise SystemExit(f"error: {error}")
        return
    from accelerate.utils import gather_object

    errors = [e for e in gather_object([error]) if e]
    if errors:
        raise SystemExit("error: " + "; ".join(dict.fromkeys(errors)))


@dataclass
class DiskLayout:
    """Which output folder each process sees, by the rank that names its disk (the lowest-ranked local main process
    that sees the same folder; 0: the main process's folder), and each process's `where` for messages."""

    disk: list[int]
    places: list[str]
    each_node: bool = False
    """output.save_on_each_node: every disk keeps a copy, not only the main process's."""

    @classmethod
    def single(cls, accelerator: Any, each_node: bool = False) -> DiskLayout:
        return cls([0], [where(accelerator)], each_node)

    def keeps_copy(self, rank: int) -> bool:
        """Whether the disk of process `rank` keeps a copy of each checkpoint (its random states go there)."""
        return self.each_node or self.disk[rank] == 0

    def writes_copy(self, rank: int) -> bool:
        """Whether process `rank` writes its disk's copy: the model, trainer.json, the rename and the rotation."""
        return self.keeps_copy(rank) and self.disk[rank] == rank

    @property
    def copies(self) -> int:
        return len({d for r, d in enumerate(self.disk) if self.keeps_copy(r)})

    def apart(self) -> list[str]:
        """The processes that do not see the main process's output folder (node-local disks), in words."""
        return [p for p, d in zip(self.places, self.disk) if d != 0]


def _marker_ranks(folder: Path, nonce: str) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(p.name.rsplit("-", 1)[1]) for p in folder.glob(f"{MARKER_PREFIX}{nonce}-*"))


def find_disks(accelerator: Any, folder: Path, nonce: str, each_node: bool) -> DiskLayout:
    """Which processes see the same `folder`: the main process (and, with `each_node`, every local main process,
    creating the folder) writes a marker named by `nonce` and its rank; after a barrier, each process lists the
    markers it sees. The nonce is new for each run, so no earlier run's marker (nor a cached "no such file" of a
    network filesystem) can answer. A collective operation; an error on any process stops all of them."""
    if accelerator.num_processes == 1:
        return DiskLayout.single(accelerator, each_node)
    from accelerate.utils import gather_object

    rank, here = accelerator.process_index, where(accelerator)
    marker, error = None, None
    if accelerator.is_main_process or (each_node and accelerator.is_local_main_process):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            marker = folder / f"{MARKER_PREFIX}{nonce}-{rank}"
            marker.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))  # closed: visible
        except OSError as err:
            error = f"{here} cannot write into its output folder {folder}: {err.strerror or err}"
    accelerator.wait_for_everyone()
    seen = _marker_ranks(folder, nonce)
    answers = gather_object([(seen, here, error)])  # also the barrier before the markers go
    if marker is not None:
        marker.unlink(missing_ok=True)
    errors = [e for _, _, e in answers if e]  # every process holds every error: all raise together
    if errors:
        raise SystemExit("error: " + "; ".join(errors))
    return DiskLayout([min(s) if s else r for r, (s, _, _) in enumerate(answers)], [p for _, p, _ in answers],
                      each_node)


RESUME_NEEDS = ("trainer.json", "state/model.safetensors", "state/optimizer.bin")
"""What every process reads from the checkpoint it resumes from, besides its own random states."""


def missing_to_resume(checkpoint: Path, run_id: str | None, step: int, rank: int) -> str | None:
    """What this process lacks of `checkpoint` (the main process's, at `step`, of run `run_id`) on its own disk,
    in words; None when all is there."""
    for name in (*RESUME_NEEDS, f"state/random_states_{rank}.pkl"):
        path = checkpoint / name
        if not path.is_file():
            return f"has no {path.resolve()}" if name == "trainer.json" else f"has {checkpoint} without {name}"
    try:
        trainer = json.loads((checkpoint / "trainer.json").read_text())
    except (OSError, ValueError) as err:
        return f"cannot read {checkpoint / 'trainer.json'} ({err})"
    if trainer.get("run_id") != run_id or trainer.get("step") != step:
        return (f"has another checkpoint at {checkpoint.resolve()} (step {trainer.get('step')} of run "
                f"{trainer.get('run_id')}, not the main process's step {step} of run {run_id})")
    return None


def resume_hint() -> str:
    return ("a disk of each machine's own holds only what that machine wrote: train with "
            "--output.save_on_each_node (every machine keeps a copy of each checkpoint) or with --output.dir on a "
            "folder all machines share, or copy the checkpoint there")
