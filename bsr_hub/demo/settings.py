"""What the demo serves and how much it accepts (`DemoSettings`, from arguments or BSR_DEMO_*), and the error
it shows a user as it is (`DemoInputError`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_MEGAPIXELS = 2.0
"""Largest input accepted (width x height). At x4 a 2-megapixel input is a 32-megapixel output: the most a
shared CPU Space should be asked for in one request."""


class DemoInputError(ValueError):
    """An upload or setting the demo refuses; the message is shown to the user as it is."""



@dataclass(frozen=True)
class DemoSettings:
    """What the demo serves and how much it accepts. `from_env` reads the same values from BSR_DEMO_*."""

    models: tuple[str, ...] = ()
    """Checkpoints to offer (bundled names, folders or Hub repo ids). Empty: every bundled checkpoint."""
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
    concurrency: int = 1
    """Upscales running at once. One keeps a CPU's threads on one image (no slower per request, and memory
    stays that of one image); raise it on a large GPU."""
    queue_size: int = 16
    """Requests allowed to wait; a burst beyond it is turned away ("queue is full") instead of piling up."""
    max_file_size: str = "50mb"
    """Largest upload Gradio accepts at all, before any decoding."""

    def __post_init__(self) -> None:
        if not self.max_megapixels > 0:
            raise ValueError(f"max_megapixels must be positive, got {self.max_megapixels}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {self.queue_size}")

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1_000_000)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> DemoSettings:
        """BSR_DEMO_MODELS (comma-separated), BSR_DEMO_MAX_MEGAPIXELS, BSR_DEMO_CONCURRENCY, BSR_DEMO_QUEUE_SIZE;
        keyword arguments that are not None win over the environment."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        try:
            if env.get("BSR_DEMO_MODELS", "").strip():
                values["models"] = tuple(m.strip() for m in env["BSR_DEMO_MODELS"].split(",") if m.strip())
            if "BSR_DEMO_MAX_MEGAPIXELS" in env:
                values["max_megapixels"] = float(env["BSR_DEMO_MAX_MEGAPIXELS"])
            if "BSR_DEMO_CONCURRENCY" in env:
                values["concurrency"] = int(env["BSR_DEMO_CONCURRENCY"])
            if "BSR_DEMO_QUEUE_SIZE" in env:
                values["queue_size"] = int(env["BSR_DEMO_QUEUE_SIZE"])
        except ValueError as err:
            raise ValueError(f"bad BSR_DEMO_* environment variable: {err}") from err
        values.update({k: (tuple(v) if k == "models" else v) for k, v in overrides.items() if v is not None})
        return cls(**values)
