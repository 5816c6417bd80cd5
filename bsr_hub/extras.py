"""Optional dependencies: one check, at start-up, that names the extra to install.

    require_extra("train", "accelerate", "datasets")   # train.py and `bsr-hub eval`, before any work

A missing package then reads "... needs accelerate, datasets: pip install 'bsr-hub[train]'" instead of a raw
ModuleNotFoundError halfway through a run (lerobot's `require_package` does the same).
"""

from __future__ import annotations

import importlib.util


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which extra installs it."""


def require_extra(extra: str, *modules: str, what: str = "this") -> None:
    """Raise MissingExtraError naming `bsr-hub[extra]` if any of `modules` cannot be imported."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(
            f"{what} needs {', '.join(missing)}: pip install 'bsr-hub[{extra}]' "
            f"(from a clone: pip install -e '.[{extra}]')"
        )
