"""Optional dependencies: one helper, `require`, that imports a module or names the extra that installs it.

    datasets = require("datasets", extra="train", what="evaluation")            # import it, where it is used
    require("accelerate", "datasets", "yaml", "matplotlib", extra="train", what="train.py")  # at start-up

Commands call it at start-up for everything the run will need, so a missing package reads "... needs accelerate,
datasets: pip install 'bsr-hub[train]'" before any work, not as a raw ModuleNotFoundError at the end of a long
run (lerobot's `require_package` does the same).
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which extra installs it."""


def require(module: str, *more: str, extra: str, what: str = "this") -> ModuleType:
    """Check that `module` and `more` are installed, then import and return `module`.

    Raises:
        MissingExtraError: naming `bsr-hub[extra]`, when any of them cannot be found or `module` fails to import.
    """
    names = (module, *more)
    missing = [m for m in names if importlib.util.find_spec(m.split(".")[0]) is None]
    if missing:
        raise MissingExtraError(_message(what, missing, extra))
    try:
        return importlib.import_module(module)
    except ImportError as err:  # installed but broken (a missing shared library, a half-installed wheel)
        raise MissingExtraError(f"{_message(what, [module], extra)} ({err})") from err


def _message(what: str, missing: list[str], extra: str) -> str:
    return (f"{what} needs {', '.join(missing)}: pip install 'bsr-hub[{extra}]' "
            f"(from a clone: pip install -e '.[{extra}]')")
