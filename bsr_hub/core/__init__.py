"""The core layer: what every other layer stands on, importing nothing of bsr_hub's.

Images in and out (`images`), files written atomically and without following links (`files`), optional
dependencies named by their extra (`extras`), the CPU's capabilities (`cpu`), typed config parsing (`typed`),
the bundled example images (`examples`), how the process was launched (`launch`) and the version.
"""

from .cpu import describe_cpu
from .examples import example_images
from .extras import MissingExtraError, require
from .files import (
    CACHE_ENV,
    append_text,
    cache_folder,
    file_lock,
    plan_jobs,
    save_image_atomic,
    write_atomically,
    write_text_atomically,
    write_texts_together,
)
from .images import (
    MODES,
    ImageReadError,
    mode_of,
    narrowed_png_rawmode,
    open_image,
    read_png_16bit,
    straight_mode,
    to_uint8,
)
from .launch import check_launch, describe_process, launched_world_size
from .typed import from_mapping
from .version import __version__

__all__ = [
    "CACHE_ENV",
    "MODES",
    "ImageReadError",
    "MissingExtraError",
    "__version__",
    "append_text",
    "cache_folder",
    "check_launch",
    "describe_cpu",
    "describe_process",
    "example_images",
    "file_lock",
    "from_mapping",
    "launched_world_size",
    "mode_of",
    "narrowed_png_rawmode",
    "open_image",
    "plan_jobs",
    "read_png_16bit",
    "require",
    "save_image_atomic",
    "straight_mode",
    "to_uint8",
    "write_atomically",
    "write_text_atomically",
    "write_texts_together",
]
