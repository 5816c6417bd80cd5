"""The models layer: the BSR network, its config and presets, checkpoints (bundled, local, on the Hub), and a
checkpoint folder's records and model card.

It stands on `core` and on the `inference` engine (`BSRModel.upscale` is `inference.upscale` on itself).
"""

from .configuration import BSRConfig, ConfigError, list_presets
from .hub import CheckpointError, bundled_checkpoints, default_checkpoint, list_checkpoints
from .modeling import BSRModel

__all__ = [
    "BSRConfig",
    "BSRModel",
    "CheckpointError",
    "ConfigError",
    "bundled_checkpoints",
    "default_checkpoint",
    "list_checkpoints",
    "list_presets",
]
