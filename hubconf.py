"""torch.hub entry points: one per checkpoint bundled with bsr_hub.

    model = torch.hub.load("<owner>/bsr_hub", "bsr_lite_x2")          # from GitHub
    model = torch.hub.load("path/to/bsr_hub", "bsr_lite_x2", source="local")
    torch.hub.list("<owner>/bsr_hub")                                  # ['bsr_lite_x2', ...] (GitHub only:
                                                                       # torch.hub.list takes no source=)

The entry points are made from `bsr_hub.bundled_checkpoints()` (a bundled "bsr-lite-x3" becomes
`bsr_lite_x3`), so a checkpoint added to `bsr_hub/checkpoints/` gets its entry point without an edit here.
Each returns a `BSRModel` in eval mode on the CPU (or `map_location`), loaded strictly; `pretrained=False`
returns the same architecture freshly initialised.
"""

from __future__ import annotations

# Every public callable here is an entry point (torch.hub.list lists them all): imports keep a leading "_".
from collections.abc import Callable as _Callable
from pathlib import Path as _Path

# torch.hub checks that these import before it loads anything ("PIL" is Pillow).
dependencies = ["torch", "huggingface_hub", "safetensors", "numpy", "PIL"]


def _entry_point(name: str, folder: _Path) -> _Callable:
    def load(pretrained: bool = True, map_location: str = "cpu"):
        from bsr_hub import BSRConfig, BSRModel

        if pretrained:
            return BSRModel.from_pretrained(name, map_location=map_location)
        config = BSRConfig.from_json_file(folder / "config.json")
        return BSRModel(config).to(map_location).eval()

    load.__name__ = load.__qualname__ = name.replace("-", "_")
    load.__doc__ = (
        f"The bundled `{name}` checkpoint as a BSRModel (RGB in [0, 1], NCHW in; `model.upscale` for images).\n\n"
        "Args:\n"
        "    pretrained: load the trained weights (False: the same architecture, freshly initialised).\n"
        "    map_location: the device to put the model on."
    )
    return load


def _register_bundled() -> None:
    from bsr_hub import bundled_checkpoints

    for name, folder in bundled_checkpoints().items():
        entry = _entry_point(name, folder)
        globals()[entry.__name__] = entry


_register_bundled()
