"""bsr_hub: BSR super-resolution models you can load, train, evaluate and demo.

The core import needs only torch, huggingface_hub, safetensors, numpy and Pillow; training (accelerate,
datasets) and the demo (gradio) are optional extras imported where they are used.
"""

from .models.configuration import BSRConfig, ConfigError, list_presets
from .models.hub import CheckpointError, bundled_checkpoints, default_checkpoint, list_checkpoints
from .models.modeling import BSRModel

from .core.version import __version__

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
