"""How a command ends on SIGTERM: through its `finally` blocks, as on Ctrl-C (`sigterm_as_exit`), so that no
half-written file is left behind. Used by `bsr-hub` and by `python evaluate.py`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """SIGTERM (kill, a job scheduler, a container stopping) ends a command through its `finally` blocks, as
    Ctrl-C does, instead of killing it where it stands: a file being written is then removed, not left behind as
    a hidden .NAME.xxxx.tmp. Exit status 143, as a process ended by SIGTERM reports."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
