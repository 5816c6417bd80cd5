"""How a training run is stopped: SIGINT/SIGTERM (and the end of its launcher) become a request the loop answers
with a checkpoint (`StopRequest`); the data workers leave the signals to the trainer and are ended at its exit.
"""

from __future__ import annotations

import os
import signal
from typing import Any


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
