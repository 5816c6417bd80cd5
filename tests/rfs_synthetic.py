"""Small synthetic training images for the RFS/data tests: texture that ramps from flat to strong noise."""

from pathlib import Path

import numpy as np

from bsr_hub.data.pairs import ImagePairs
from bsr_hub.data.sources import make_lr

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def ramp_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) uint8: grey 128 plus noise whose amplitude grows from 0 (left) to a random maximum (right) as
    the cube of x, so patch PIC covers a wide range but most patches are flat-ish, as in natural images."""
    amplitude = (np.linspace(0.0, 1.0, w) ** 3 * rng.uniform(40, 120))[None, :, None]  # (1, w, 1)
    noise = rng.normal(size=(h, w, 3)) * amplitude
    return np.clip(128 + noise, 0, 255).round().astype(np.uint8)


def synthetic_pairs(n: int = 10, scale: int = 2, seed: int = 0, min_side: int = 40) -> ImagePairs:
    """n HR/LR pairs of different sizes (LR sides min_side .. 2 * min_side), LR by the real `make_lr`."""
    rng = np.random.default_rng(seed)
    pairs = ImagePairs(hr=[], lr=[], scale=scale)
    for _ in range(n):
        h, w = (int(rng.integers(min_side, 2 * min_side)) * scale for _ in range(2))
        hr = ramp_image(rng, h, w)
        pairs.hr.append(hr)
        pairs.lr.append(make_lr(hr, scale))
    return pairs
