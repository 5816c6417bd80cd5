"""The BSR network (Kong et al., ITU Kaleidoscope 2020), read top to bottom: blocks, then the model.

    F0   = conv3x3(x - mean)                                    x: (B, 3, h, w) in [0, 1]
    F_g  = FMG_g(F_{g-1}),  g = 1..G
    FMG(F) = F + conv3x3(LSA(RB_B(...RB_1(F))))                 group skip
    RB(F)  = F + res_scale * conv3x3(ReLU(conv3x3(F)))
    LSA(X) = X * sigmoid(conv7x7([max_c X ; mean_c X]))         2 -> 1 channel, about 100 parameters
    F_GF = conv3x3(conv1x1(concat[F_1 .. F_G])) + F0            "SC": every group forwarded to the top
    y    = conv3x3(pixel_shuffle_upsampler(F_GF)) + mean        x2, x3 one stage; x4 two x2 stages

The Hub side (strict loading, bundled checkpoints, model cards) lives in `hub.py` and `card.py`; turning images
into tensors and tiling lives in `inference.py`.
"""

from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from torch import nn

from .card import CARD_METADATA
from .configuration import BSRConfig
from ..core.files import write_atomically
from ..inference.protocol import PixelMemory


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


class ResidualBlock(nn.Module):
    """conv -> ReLU -> conv -> scale, plus identity (EDSR's block, no batch norm)."""

    def __init__(self, channels: int, res_scale: float):
        super().__init__()
        self.conv1 = conv3x3(channels, channels)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(channels, channels)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.conv2(self.act(self.conv1(x)))


class LightSpatialAttention(nn.Module):
    """One spatial weight map from channel max and mean: the "light" attention (k*k*2 + 1 parameters)."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)  # (B, 2, H, W)
        return x * torch.sigmoid(self.conv(pooled))  # (B, 1, H, W) broadcast over C


class FeatureMappingGroup(nn.Module):
    """B residual blocks, the light spatial attention and a conv, wrapped in a group-level skip."""

    def __init__(self, config: BSRConfig):
        super().__init__()
        c = config.num_features
        self.blocks = nn.Sequential(*(ResidualBlock(c, config.res_scale) for _ in range(config.num_blocks)))
        self.attention = (
            LightSpatialAttention(config.attention_kernel_size) if config.use_attention else nn.Identity()
        )
        self.conv = conv3x3(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(self.attention(self.blocks(x)))


class Upsampler(nn.Sequential):
    """Sub-pixel convolution: one x2 or x3 stage, or two x2 stages for x4."""

    def __init__(self, scale: int, channels: int):
        stages = [2, 2] if scale == 4 else [scale]
        layers: list[nn.Module] = []
        for s in stages:
            layers += [conv3x3(channels, channels * s * s), nn.PixelShuffle(s)]  # (B, C*s*s, H, W) -> (B, C, sH, sW)
        super().__init__(*layers)


class BSRModel(
    nn.Module,
    PyTorchModelHubMixin,
    **{**CARD_METADATA, "tags": list(CARD_METADATA["tags"])},  # a copy: the mixin appends to the list it gets
    paper_url="https://doi.org/10.23919/ituk50268.2020.9303225",
):
    """BSR: Feature Mapping Groups with light spatial attention and group forwarding.

    `forward` takes (B, 3, h, w) RGB in [0, 1] and returns (B, 3, h*scale, w*scale), not clamped (clamp when
    converting to an image; training losses want the raw values). For images of any kind use `upscale`.
    """

    def __init__(self, config: BSRConfig):
        super().__init__()
        if not isinstance(config, BSRConfig):
            raise TypeError(f"BSRModel expects a BSRConfig, got {type(config).__name__}")
        self.config = config
        # The checkpoint folder `from_pretrained` read: its records follow a `save_pretrained` of unchanged weights.
        self.loaded_from: Path | None = None
        c, g = config.num_features, config.num_groups
        # Derived from the config, so not part of the state dict (keeps checkpoints strict and minimal). Kept 1-D:
        # a (1, 3, 1, 1) buffer converted to channels_last gets strides that DDP's buffer broadcast refuses.
        self.register_buffer("rgb_mean", torch.tensor(config.rgb_mean), persistent=False)

        self.head = conv3x3(config.num_channels, c)
        self.groups = nn.ModuleList(FeatureMappingGroup(config) for _ in range(g))
        if config.use_group_forwarding:
            self.fusion = nn.Sequential(nn.Conv2d(g * c, c, kernel_size=1), conv3x3(c, c))
        else:
            self.fusion = conv3x3(c, c)  # ablation "without SC": only the last group reaches the top
        self.upsampler = Upsampler(config.scale, c)
        self.tail = conv3x3(c, config.num_channels)

    @property
    def scale(self) -> int:
        return self.config.scale

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.rgb_mean.view(1, -1, 1, 1)
        f0 = self.head(x - mean)  # (B, C, h, w)
        features, f = [], f0
        for group in self.groups:
            f = group(f)
            features.append(f)
        if self.config.use_group_forwarding:
            fused = self.fusion(torch.cat(features, dim=1))  # (B, G*C, h, w) -> (B, C, h, w)
        else:
            fused = self.fusion(f)
        out = self.tail(self.upsampler(fused + f0))  # (B, 3, h*s, w*s)
        return out + mean

    # ------------------------------------------------------------------ construction and introspection

    @classmethod
    def from_preset(cls, name: str, scale: int = 2, **overrides: Any) -> "BSRModel":
        """A freshly initialised model of a named preset (`list_presets()`), at the given scale."""
        return cls(BSRConfig.from_preset(name, scale=scale, **overrides))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def num_conv_layers(self) -> int:
        return sum(isinstance(m, nn.Conv2d) for m in self.modules())

    def memory_per_input_pixel(self) -> PixelMemory:
        """Activation bytes per LR pixel (float32), for tiling and the out-of-memory check (`upscaler.Upscaler`):
        the G group outputs kept for fusion, a few working maps, and the upsampler's maps at output resolution."""
        c, g, s = self.config.num_features, self.config.num_groups, self.config.scale
        return PixelMemory(feature_map=4 * c, peak=4 * ((g + 6) * c + 3 * c * s * s))

    def upscale(self, image: Any, **kwargs: Any) -> Any:
        """Super-resolve a PIL image, numpy array or torch tensor; returns the same kind, `scale` times larger.

        See `bsr_hub.inference.api.upscale` for the options (tile, tile_overlap, self_ensemble, channels_last).
        """
        from ..inference.api import upscale

        return upscale(self, image, **kwargs)

    # ------------------------------------------------------------------ Hub integration

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        map_location: str | torch.device = "cpu",
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
    ) -> "BSRModel":
        """Load a model from a bundled checkpoint name, a local folder or a Hub repo id, strictly.

        Unlike the mixin's default, unknown config fields, missing or unexpected weights and shape mismatches
        are errors (`bsr_hub.models.hub.CheckpointError`) that name what is wrong; nothing is loaded partially.
        """
        from .hub import check_weights_header, load_weights_strict, resolve_checkpoint

        folder = resolve_checkpoint(
            pretrained_model_name_or_path,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
        )
        config = BSRConfig.from_json_file(folder / "config.json")
        with torch.device("meta"):  # the config's shapes, with no memory allocated
            expected = {k: tuple(v.shape) for k, v in cls(config).state_dict().items()}
        check_weights_header(folder / "config.json", folder / "model.safetensors", expected)
        model = cls(config)
        load_weights_strict(model, folder / "model.safetensors", map_location=map_location)
        model.loaded_from = folder
        # load_state_dict copies into the existing (CPU) parameters: move the model itself.
        return model.to(map_location).eval()

    def save_pretrained(  # type: ignore[override]
        self,
        save_directory: str | Path,
        *,
        config: Any = None,
        repo_id: str | None = None,
        push_to_hub: bool = False,
        model_card_kwargs: dict[str, Any] | None = None,
        **push_to_hub_kwargs: Any,
    ) -> str | None:
        """The mixin's `save_pretrained`, with a card that does not pass this model off as another one.

        The card is named after the folder (or `model_card_kwargs["model_name"]`), not after the preset and scale,
        which name a bundled checkpoint. A model loaded with `from_pretrained` and saved with its weights unchanged
        keeps the loaded checkpoint's records (results, training lineage, robustness: `records.carry_records`) and
        its name; changed weights (fine-tuned, converted to another dtype) get a card that says they are not
        evaluated yet.
        """
        from .records import carried_source, carry_records, how_to_load

        folder = Path(save_directory)
        given = dict(model_card_kwargs or {})
        card = {"model_name": folder.resolve().name, **given}
        card = {**how_to_load(folder, card["model_name"]), **card}
        source = carried_source(self)  # before saving: saved where it came from, its weights would be replaced
        super().save_pretrained(folder, config=config, model_card_kwargs=card)
        if source is not None:
            carry_records(source, folder, model_name=given.get("model_name"))
        if push_to_hub:
            return self.push_to_hub(repo_id or folder.name, config=config, model_card_kwargs=given,
                                    **push_to_hub_kwargs)
        return None

    def push_to_hub(  # type: ignore[override]
        self, repo_id: str, *, model_card_kwargs: dict[str, Any] | None = None, **kwargs: Any
    ) -> str:
        """The mixin's `push_to_hub`, with the card named after the repository (`me/my-bsr`), not after the temporary
        folder the model is saved in before the upload."""
        card = {"model_name": repo_id, **(model_card_kwargs or {})}
        return super().push_to_hub(repo_id, model_card_kwargs=card, **kwargs)

    def _save_pretrained(self, save_directory: Path) -> None:
        from safetensors.torch import save_file

        # channels_last parameters are not contiguous, and safetensors stores contiguous tensors only.
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        target = Path(save_directory) / "model.safetensors"
        # Written beside the target and renamed, so an interrupted save never leaves a truncated checkpoint.
        write_atomically(target, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        from .card import render_model_card

        return render_model_card(self, **kwargs)
