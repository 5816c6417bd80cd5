"""The demo's models: the choices it offers (`discover_models`, `ModelEntry`: read from configs and cards,
before any weights), each model loaded once, on first use, then shared (`ModelCache`), and what the demo says
when it has no model to offer (`NO_MODEL_MESSAGE`)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .settings import DemoInputError

if TYPE_CHECKING:
    from ..models import BSRModel

NO_MODEL_MESSAGE = (
    "No trained model is bundled with this version of bsr_hub, so this demo has nothing to upscale with "
    "(it will not show the output of untrained weights). Start it with a checkpoint: "
    "`bsr-hub demo --model PATH_OR_REPO_ID`, or set BSR_DEMO_MODELS=PATH_OR_REPO_ID for spaces_demo/app.py."
)


@dataclass(frozen=True)
class ModelEntry:
    """One choice in the demo: where the checkpoint is and what its card says, known before loading it."""

    name: str
    folder: Path
    scale: int
    preset: str
    source: str
    """"bundled", "local folder" or "Hugging Face Hub": shown next to the name, so nobody mistakes a
    test checkpoint for a shipped one."""
    benchmark: str
    """The measured PSNR from the checkpoint's card, as a short phrase, or "not evaluated"."""
    trained_for: str = "benchmark"
    """`records.trained_for`: "real" for a checkpoint trained on a degradation mix, shown in its label."""

    @property
    def label(self) -> str:
        return f"x{self.scale} · {self.name}" + (" · for real photos" if self.trained_for == "real" else "")


def default_label(entries: Sequence[ModelEntry]) -> str | None:
    """The choice selected at start, and used by an API call that names no model: the first checkpoint trained
    for photos of unknown origin (lowest scale first), as `bsr-hub upscale` picks when no model is named; a
    user's upload is such a photo. Without one, the first choice."""
    real = [e for e in entries if e.trained_for == "real"]
    return (real or list(entries))[0].label if entries else None


DEFAULT_CHOICE_INFO = (
    "Preselected: the model for photos of unknown origin (\"for real photos\": trained on many resizers, noise and "
    "JPEG). The others are trained on MATLAB-bicubic LR, as in the papers' benchmarks, and can do worse than plain "
    "bicubic on images shrunk by other software."
)


def card_psnr(folder: Path) -> str:
    """The benchmark PSNR recorded in `folder/README.md`'s model-index, as "Set5 (x2, BI): 37.10 dB", or
    "not evaluated". Set5 without self-ensemble is preferred, being the figure every paper reports first."""
    from ..models import card_eval_results

    try:
        results = card_eval_results(folder)
    except Exception:
        return "not evaluated (unreadable model card)"
    psnr = [r for r in results if str(r.metric_type).lower() == "psnr" and r.metric_value is not None]
    if not psnr:
        return "not evaluated"

    def rank(r: Any) -> tuple[bool, bool]:
        name = str(r.dataset_name)
        return (not name.startswith("Set5"), "self-ensemble" in name)

    best = min(psnr, key=rank)
    return f"{best.dataset_name}: {float(best.metric_value):.2f} dB PSNR"


def discover_models(names: Sequence[str] = ()) -> list[ModelEntry]:
    """The demo's choices, by scale: the given checkpoints, or else every bundled one.

    Only configs and cards are read here (weights load on first use). A given name that cannot be resolved is
    an error now, at start-up, rather than on the first request.
    """
    from ..models import BSRConfig, bundled_checkpoints, resolve_checkpoint, trained_for

    bundled = bundled_checkpoints()

    def source_of(
        name: str,
    ) -> str:  # resolve_checkpoint's order: a folder, then a bundled name, then the Hub
        if Path(name).expanduser().is_dir():
            return "local folder"
        return "bundled" if name in bundled else "Hugging Face Hub"

    if names:
        sources = [(n, resolve_checkpoint(n), source_of(n)) for n in names]
    else:
        sources = [(n, folder, "bundled") for n, folder in bundled.items()]
    entries = []
    for name, folder, source in sources:
        config = BSRConfig.from_json_file(folder / "config.json")
        entries.append(
            ModelEntry(
                name=Path(name).name if source == "local folder" else name,
                folder=folder,
                scale=config.scale,
                preset=config.preset or "custom",
                source=source,
                benchmark=card_psnr(folder),
                trained_for=trained_for(folder),
            )
        )
    labels = [e.label for e in entries]
    duplicates = sorted({lab for lab in labels if labels.count(lab) > 1})
    if duplicates:
        raise ValueError(
            f"two models would share the label {duplicates[0]!r}; give the checkpoint folders distinct names"
        )
    return sorted(entries, key=lambda e: (e.scale, e.name))


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class ModelCache:
    """Each model loaded once, on first use, then shared by every request (loading per request is the
    classic demo mistake: seconds of latency and a copy of the weights per concurrent user)."""

    def __init__(self, entries: Sequence[ModelEntry], device: str | None = None):
        self.entries = {e.label: e for e in entries}
        self.device = device or default_device()
        self._models: dict[str, BSRModel] = {}
        self._lock = threading.Lock()

    def get(self, label: str) -> tuple[ModelEntry, BSRModel]:
        entry = self.entries.get(label)
        if entry is None:
            raise DemoInputError(
                f"unknown model {label!r}; choose one of: {', '.join(self.entries) or 'none'}"
            )
        with self._lock:  # two first requests at once must not both load it
            if label not in self._models:
                from ..models import BSRModel

                model = BSRModel.from_pretrained(entry.folder, map_location=self.device)
                # map_location only places the loaded tensors; load_state_dict copies them into the
                # parameters where they are (the CPU), so the module itself must be moved.
                self._models[label] = model.to(self.device)
            return entry, self._models[label]
