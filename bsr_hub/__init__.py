"""bsr_hub: BSR super-resolution models you can load, train, evaluate and demo.

The core import needs only torch, huggingface_hub, safetensors, numpy, Pillow and Jinja2; training (accelerate,
datasets) and the demo (gradio) are optional extras imported where they are used. The package is layered
(docs/ARCHITECTURE.md): core < data < inference < models < evaluation < training < demo < commands; this file
re-exports the names a user starts from.
"""

from .core import __version__, example_images
from .inference import upscale, upscale_many
from .models import (
    BSRConfig,
    BSRModel,
    CheckpointError,
    ConfigError,
    bundled_checkpoints,
    default_checkpoint,
    list_checkpoints,
    list_presets,
)

__all__ = [
    "BSRConfig",
    "BSRModel",
    "CheckpointError",
    "ConfigError",
    "__version__",
    "bundled_checkpoints",
    "default_checkpoint",
    "example_images",
    "list_checkpoints",
    "list_presets",
    "upscale",
    "upscale_many",
]
