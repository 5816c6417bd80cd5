"""The data layer: what images a model learns from and is measured on. Stands on `core` alone.

Degradations and resizers (HR -> LR), Picture Information Content (`pic`, `pic_stats`), Random Filter Sampling
(`rfs_config`, `rfs_picks`, `sampling`), training sources and pairs (`sources`, `pairs`), the benchmark sets.
"""

from .benchmarks import DEFAULT_BENCHMARKS, Benchmark, EvaluationError, ImageRecord, load_benchmark, read_hr
from .degradations import DEGRADATIONS, degrade, degrade_files, imresize, modcrop
from .pairs import ImagePairs
from .pic import dense_pic
from .pic_stats import compute_pic_stats, plot_pic_stats
from .resizers import OPENCV_RESIZERS, DegradationMix, add_noise, downscale, jpeg, opencv_available
from .rfs_config import RFSConfig, RFSWarning
from .sampling import RFSSampler
from .sources import DataConfig, load_image_source

__all__ = [
    "DEFAULT_BENCHMARKS",
    "DEGRADATIONS",
    "OPENCV_RESIZERS",
    "Benchmark",
    "DataConfig",
    "DegradationMix",
    "EvaluationError",
    "ImagePairs",
    "ImageRecord",
    "RFSConfig",
    "RFSSampler",
    "RFSWarning",
    "add_noise",
    "compute_pic_stats",
    "degrade",
    "degrade_files",
    "dense_pic",
    "downscale",
    "imresize",
    "jpeg",
    "load_benchmark",
    "load_image_source",
    "modcrop",
    "opencv_available",
    "plot_pic_stats",
    "read_hr",
]
