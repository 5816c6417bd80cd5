"""BSRConfig: the single source of architecture values, and the preset registry.

Values marked [paper] come from Kong et al. 2020; values marked [ours] are this project's choices where the
paper is silent (see docs/METHOD.md section 4). Every value is JSON-plain so that `config.json` round-trips
exactly through `save_pretrained` / `from_pretrained`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core import from_mapping

SUPPORTED_SCALES = (2, 3, 4)


class ConfigError(ValueError):
    """A BSRConfig value (or a config.json) that cannot describe a BSR network."""


# Bounds far above any sensible BSR network (bsr-base is 64 x 16 x 5), so that a config.json cannot make
# `from_pretrained` allocate gigabytes before anything is checked.
SIZE_LIMITS = {"num_features": 1024, "num_groups": 256, "num_blocks": 256, "num_channels": 4}
MAX_BODY_WEIGHTS = 100_000_000
"""The bound on the sizes together: the body's 3x3 convolutions hold about groups x blocks x 18 x features^2
weights (bsr-base: 5.9 M), and a config.json within every per-field limit (1024 x 256 x 256) would otherwise
spend a minute and gigabytes building the skeleton before its weights are refused."""


@dataclass
class BSRConfig:
    """Architecture of a BSR network.

    Defaults are the paper-sized `bsr-base`; use `BSRConfig.from_preset` for the named sizes.
    """

    scale: int = 2
    """Upscaling factor: 2 and 3 use one pixel-shuffle stage, 4 uses two x2 stages."""
    num_features: int = 64
    """C, the width of every feature map in the body."""
    num_groups: int = 16
    """G, the number of Feature Mapping Groups (FMG)."""
    num_blocks: int = 5
    """Residual blocks per FMG [paper: 5]."""
    res_scale: float = 1.0
    """EDSR-style scaling of each residual branch [ours: 1.0; EDSR uses 0.1 only for its 256-wide model]."""
    attention_kernel_size: int = 7
    """Kernel of the light spatial attention conv over [max_c; mean_c] (2 -> 1 channels) [ours]."""
    use_attention: bool = True
    """Ablation switch: the light spatial attention (LSA) at the end of each FMG."""
    use_group_forwarding: bool = True
    """Ablation switch ("SC"): fuse every group's output at the top; off means only the last group's."""
    num_channels: int = 3
    """Image channels in and out. Grey images are replicated to 3 channels before the network."""
    rgb_mean: tuple[float, float, float] = (0.4488, 0.4371, 0.4040)
    """Subtracted before and added after the network (the DIV2K mean, as in EDSR/RCAN) [ours]."""
    preset: str | None = None
    """Name of the preset this config came from, if any (informational; shown by `bsr-hub info`)."""

    def __post_init__(self) -> None:
        # JSON has no tuples: a config read back from config.json gives lists.
        mean = self.rgb_mean
        if isinstance(mean, (str, bytes)) or not isinstance(mean, (list, tuple)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in mean
        ):
            raise ConfigError(f"rgb_mean must be a list of numbers, one per channel, got {mean!r}")
        self.rgb_mean = tuple(float(v) for v in mean)  # type: ignore[assignment]
        if type(self.scale) is not int or self.scale not in SUPPORTED_SCALES:
            raise ConfigError(f"scale must be one of {SUPPORTED_SCALES}, got {self.scale!r}")
        for name, limit in SIZE_LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
                raise ConfigError(f"{name} must be an integer from 1 to {limit}, got {value!r}")
        body = self.num_groups * self.num_blocks * 18 * self.num_features**2
        if body > MAX_BODY_WEIGHTS:
            raise ConfigError(
                f"{self.num_groups} groups x {self.num_blocks} blocks x {self.num_features} features is about "
                f"{body / 1e9:.1f} G weights in the body, above the {MAX_BODY_WEIGHTS / 1e6:.0f} M this package builds "
                f"(bsr-base: 16 x 5 x 64, 5.9 M)"
            )
        for name in ("use_attention", "use_group_forwarding"):
            if not isinstance(getattr(self, name), bool):  # "no" would otherwise count as true
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not (isinstance(self.res_scale, (int, float)) and self.res_scale > 0):
            raise ConfigError(f"res_scale must be a positive number, got {self.res_scale!r}")
        k = self.attention_kernel_size
        if isinstance(k, bool) or not isinstance(k, int) or not 0 < k <= 31 or k % 2 == 0:
            raise ConfigError(f"attention_kernel_size must be an odd integer from 1 to 31, got {k!r}")
        if len(self.rgb_mean) != self.num_channels:
            raise ConfigError(
                f"rgb_mean has {len(self.rgb_mean)} values but num_channels is {self.num_channels}"
            )
        if self.preset is not None and not isinstance(self.preset, str):
            raise ConfigError(f"preset must be a string or None, got {self.preset!r}")

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BSRConfig:
        """Build a config from a dict, refusing unknown fields (a typo must not be silently ignored)."""
        if not isinstance(data, dict):
            raise ConfigError(f"a BSR config must be a JSON object, got {type(data).__name__}")
        return from_mapping(cls, data, "BSR config", ConfigError)

    @classmethod
    def from_json_file(cls, path: str | Path) -> BSRConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"cannot read BSR config {path}: {err}") from err
        try:
            return cls.from_dict(data)
        except (ConfigError, TypeError, ValueError) as err:
            raise ConfigError(f"{path}: {err}") from err

    # ------------------------------------------------------------------ presets

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> BSRConfig:
        """The config of a named preset (see `list_presets()`), with optional field overrides."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; available: {', '.join(list_presets())}")
        return cls.from_dict({**PRESETS[name], "preset": name, **overrides})


# One small registry: a new preset gets the parametrised tests for free (tests/models/test_modeling.py).
PRESETS: dict[str, dict[str, Any]] = {
    # The paper's size: 16 FMGs x 5 residual blocks x 64 channels; 197 conv layers and about 6.8 M parameters
    # at x2 (RCAN has about 400 layers and 16 M). Needs a GPU to train.
    "bsr-base": dict(num_features=64, num_groups=16, num_blocks=5),
    # A CPU-trainable size: 53 conv layers, 0.46 M parameters at x2 (0.50 M at x3 and x4); the shipped default.
    "bsr-lite": dict(num_features=32, num_groups=4, num_blocks=5),
    # The real-time size, FSRCNN's niche (12 K parameters, shipped with OpenCV): still a BSR network (FMGs, the
    # light spatial attention, group forwarding), 3 FMGs x 2 blocks x 16 channels, at most 60 K parameters at
    # every scale (`bsr-hub info bsr-tiny --scale 3`).
    "bsr-tiny": dict(num_features=16, num_groups=3, num_blocks=2),
}


def list_presets() -> list[str]:
    """Names accepted by `BSRConfig.from_preset` and `BSRModel.from_preset`."""
    return sorted(PRESETS)
