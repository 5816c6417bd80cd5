"""Permissively licensed example photos shipped inside the package (see example_images/LICENSES.md).

They are what the README's first command upscales, the demo's examples, and the small default training set
of `accelerate launch train.py` with no arguments, so every one of those works offline on a fresh machine.
"""

from __future__ import annotations

from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "example_images"  # bsr_hub/example_images
_SUFFIXES = {".png", ".jpg", ".jpeg"}


def example_images() -> list[Path]:
    """Paths of the bundled example photos, sorted by name."""
    return sorted(p for p in EXAMPLES_DIR.iterdir() if p.suffix.lower() in _SUFFIXES)
