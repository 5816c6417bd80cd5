"""The core layer: what every other layer stands on, importing nothing of bsr_hub's.

Images in and out (`images`), files written atomically and without following links (`files`), optional
dependencies named by their extra (`extras`), the CPU's capabilities (`cpu`), typed config parsing (`typed`),
the bundled example images (`examples`) and the version.
"""

from .examples import example_images
from .extras import MissingExtraError, require
from .version import __version__

__all__ = ["MissingExtraError", "__version__", "example_images", "require"]
