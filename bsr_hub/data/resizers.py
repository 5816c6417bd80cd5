"""How other software shrinks images, and the degradation mix that trains a model for inputs of unknown origin.

Published SR tables make LR with MATLAB's antialiased bicubic (`bsr_hub.data.degradations`). Real inputs come from
other resizers, often followed by JPEG. Two things live here:

- `RESIZERS` / `downscale`: named downscalers, the ones the robustness suite (`bsr_hub.evaluation.robustness`) scores on.
  ``pil-*`` reduce with Pillow's filters (antialiased: the kernel is stretched when shrinking); ``opencv-*`` call
  `cv2.resize` (optional: ``pip install opencv-python-headless``); ``torch-*`` call `F.interpolate` without
  antialiasing. At x2, OpenCV's ``INTER_LINEAR`` and ``INTER_AREA`` equal ``torch-bilinear`` (both a 2x2 mean)
  and ``INTER_CUBIC`` equals ``torch-bicubic`` within one grey level (both Keys a = -0.75); tests/data/test_resizers.py
  checks this where OpenCV is installed. So the x2 training mix needs no OpenCV (at x3 and x4 ``INTER_AREA`` is a
  box mean, closer to ``pil-box``).
- `DegradationMix`: the typed training-config section that makes each training patch's LR with a random resizer,
  then optional Gaussian noise and JPEG, from the HR patch the sampler chose (RFS balancing is unchanged: it picks
  positions by the PIC of the clean LR).

Arrays are (H, W, 3) uint8 throughout.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .degradations import imresize
from ..core import open_image, to_uint8


def _pil(filter_: int) -> Callable[[np.ndarray, int], np.ndarray]:
    def resize(hr: np.ndarray, scale: int) -> np.ndarray:
        h, w = hr.shape[:2]
        return np.array(Image.fromarray(hr).resize((w // scale, h // scale), filter_))  # writable

    return resize


def _torch(mode: str) -> Callable[[np.ndarray, int], np.ndarray]:
    def resize(hr: np.ndarray, scale: int) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(hr)).permute(2, 0, 1)[None].double()  # (1, 3, H, W)
        y = F.interpolate(x, scale_factor=1 / scale, mode=mode, align_corners=False, antialias=False)
        # Round half up and clip, as an 8-bit image library would store the result.
        return torch.floor(y[0] + 0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()  # (h, w, 3)

    return resize


def _opencv(flag_name: str) -> Callable[[np.ndarray, int], np.ndarray]:
    def resize(hr: np.ndarray, scale: int) -> np.ndarray:
        cv2 = require_opencv()
        h, w = hr.shape[:2]
        return cv2.resize(hr, (w // scale, h // scale), interpolation=getattr(cv2, flag_name))

    return resize


def _matlab(hr: np.ndarray, scale: int) -> np.ndarray:
    return imresize(hr, 1 / scale)


RESIZERS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "matlab-bicubic": _matlab,
    "pil-bicubic": _pil(Image.Resampling.BICUBIC),
    "pil-bilinear": _pil(Image.Resampling.BILINEAR),
    "pil-box": _pil(Image.Resampling.BOX),
    "pil-lanczos": _pil(Image.Resampling.LANCZOS),
    "opencv-cubic": _opencv("INTER_CUBIC"),
    "opencv-linear": _opencv("INTER_LINEAR"),
    "opencv-area": _opencv("INTER_AREA"),
    "torch-bicubic": _torch("bicubic"),
    "torch-bilinear": _torch("bilinear"),
}
"""Name -> f(hr (H, W, 3) uint8 with H, W multiples of scale, scale) -> (H / scale, W / scale, 3) uint8."""

OPENCV_RESIZERS = tuple(name for name in RESIZERS if name.startswith("opencv-"))
TRAINING_RESIZERS = tuple(name for name in RESIZERS if name not in OPENCV_RESIZERS)
"""The training mix's defaults: at x2 the OpenCV resizers equal torch ones (module docstring)."""


def require_opencv() -> Any:
    """cv2, or an error naming the extra that installs it (opencv-python-headless)."""
    from ..core import require

    return require("cv2", extra="robustness", what="the opencv-* resizers")


def opencv_available() -> bool:
    try:
        require_opencv()
    except ImportError:
        return False
    return True


def downscale(hr: np.ndarray, scale: int, resizer: str) -> np.ndarray:
    """The (H / scale, W / scale, 3) uint8 LR of an (H, W, 3) uint8 HR whose sides are multiples of `scale`."""
    if resizer not in RESIZERS:
        raise ValueError(f"unknown resizer {resizer!r}; choose from {', '.join(RESIZERS)}")
    if hr.dtype != np.uint8 or hr.ndim != 3 or hr.shape[0] % scale or hr.shape[1] % scale:
        raise ValueError(f"downscale needs (H, W, 3) uint8 with sides divisible by {scale}, got {hr.shape} {hr.dtype}")
    lr = RESIZERS[resizer](hr, scale)
    assert lr.shape == (hr.shape[0] // scale, hr.shape[1] // scale, 3), (resizer, lr.shape)
    return lr


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """`image` after a JPEG round trip through Pillow at `quality` (libjpeg defaults: 4:2:0 chroma)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
    return to_uint8(open_image(buffer.getvalue()), colour="rgb")  # writable


def add_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise of `sigma` grey levels (the same on the three channels' scale), rounded to uint8."""
    noisy = image.astype(np.float32) + rng.normal(0.0, sigma, size=image.shape).astype(np.float32)
    return np.clip(np.floor(noisy + 0.5), 0, 255).astype(np.uint8)


@dataclass
class DegradationMix:
    """How training LR is made when inputs of unknown origin are the target (`bsr-lite-x2-robust`).

    For each patch: one resizer drawn from `resizers` (weights `resizer_weights`, uniform when None); then, with
    probability `noise_probability`, Gaussian noise of a sigma drawn uniformly from `noise_sigma` (grey levels);
    then, with probability `jpeg_probability`, a JPEG round trip at a quality drawn uniformly from `jpeg_quality`.
    The order is the one of a camera or web pipeline: resize, sensor/processing noise, compression. [Ours; the
    BSR paper trains on MATLAB bicubic only.]
    """

    resizers: list[str] = field(default_factory=lambda: list(TRAINING_RESIZERS))
    resizer_weights: list[float] | None = None
    noise_probability: float = 0.2
    noise_sigma: list[float] = field(default_factory=lambda: [1.0, 4.0])
    jpeg_probability: float = 0.5
    jpeg_quality: list[int] = field(default_factory=lambda: [60, 95])
    margin: int = 4
    """LR pixels of context resized around each patch, so that the resizers' border handling stays outside it."""

    def __post_init__(self) -> None:
        unknown = [r for r in self.resizers if r not in RESIZERS]
        if not self.resizers or unknown:
            raise ValueError(f"degradation_mix.resizers: unknown {unknown} (choose from {', '.join(RESIZERS)})")
        if any(r in OPENCV_RESIZERS for r in self.resizers):
            require_opencv()  # at start-up, not at the first batch: raises naming the extra that installs it
        if self.resizer_weights is not None:
            w = self.resizer_weights
            if len(w) != len(self.resizers) or any(not x >= 0 for x in w) or not sum(w) > 0:
                raise ValueError("degradation_mix.resizer_weights: one weight >= 0 per resizer, not all 0")
        for name in ("noise_probability", "jpeg_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"degradation_mix.{name} must be in [0, 1], got {getattr(self, name)}")
        lo, hi = _pair(self.noise_sigma, "noise_sigma")
        if not 0 <= lo <= hi <= 50:
            raise ValueError(f"degradation_mix.noise_sigma must be 0 <= low <= high <= 50 levels, got {self.noise_sigma}")
        qlo, qhi = _pair(self.jpeg_quality, "jpeg_quality")
        if not (1 <= qlo <= qhi <= 100) or int(qlo) != qlo or int(qhi) != qhi:
            raise ValueError(f"degradation_mix.jpeg_quality must be integers 1 <= low <= high <= 100, got {self.jpeg_quality}")
        if not isinstance(self.margin, int) or self.margin < 0:
            raise ValueError(f"degradation_mix.margin must be an integer >= 0, got {self.margin!r}")

    @classmethod
    def from_value(cls, value: Any) -> DegradationMix | None:
        """A mix from a recipe's nested mapping (None or a DegradationMix pass through); unknown keys are errors."""
        if value is None or isinstance(value, DegradationMix):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"degradation_mix must be a mapping of its settings (or null), got {value!r}")
        from ..core import from_mapping

        return from_mapping(cls, value, "degradation_mix")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def degrade(self, hr: np.ndarray, scale: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        """(LR, description) of an (H, W, 3) uint8 HR window with sides divisible by `scale`."""
        weights = None
        if self.resizer_weights is not None:
            weights = np.asarray(self.resizer_weights, dtype=np.float64) / sum(self.resizer_weights)
        resizer = self.resizers[int(rng.choice(len(self.resizers), p=weights))]
        lr = downscale(hr, scale, resizer)
        steps = [resizer]
        if rng.random() < self.noise_probability:
            sigma = float(rng.uniform(*self.noise_sigma))
            lr = add_noise(lr, sigma, rng)
            steps.append(f"noise{sigma:.1f}")
        if rng.random() < self.jpeg_probability:
            quality = int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1))
            lr = jpeg(lr, quality)
            steps.append(f"jpeg{quality}")
        return lr, "+".join(steps)

    def lr_patch(
        self, hr_image: np.ndarray, y: int, x: int, patch_size: int, scale: int, rng: np.random.Generator
    ) -> np.ndarray:
        """The (P, P, 3) LR patch at LR position (y, x) of `hr_image` (sides multiples of `scale`), made by this mix.

        The HR window resized is the patch plus `margin` LR pixels on each side (cut at the image's edges, where a
        whole-image resize would see the same border), so a resizer's border handling never reaches the patch.
        """
        s, p, m = scale, patch_size, self.margin
        h, w = hr_image.shape[0] // s, hr_image.shape[1] // s
        y0, x0 = max(0, y - m), max(0, x - m)
        y1, x1 = min(h, y + p + m), min(w, x + p + m)
        window = np.ascontiguousarray(hr_image[s * y0 : s * y1, s * x0 : s * x1])
        lr, _ = self.degrade(window, s, rng)  # (y1 - y0, x1 - x0, 3)
        return lr[y - y0 : y - y0 + p, x - x0 : x - x0 + p]


def _pair(value: Any, name: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"degradation_mix.{name} must be [low, high], got {value!r}")
    return float(value[0]), float(value[1])
