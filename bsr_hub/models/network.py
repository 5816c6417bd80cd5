"""The BSR network (Kong et al., ITU Kaleidoscope 2020), read top to bottom: blocks, then the model.

    F0   = conv3x3(x - mean)                                    x: (B, 3, h, w) in [0, 1]
    F_g  = FMG_g(F_{g-1}),  g = 1..G
    FMG(F) = F + conv3x3(LSA(RB_B(...RB_1(F))))                 group skip
    RB(F)  = F + res_scale * conv3x3(ReLU(conv3x3(F)))
    LSA(X) = X * sigmoid(conv7x7([max_c X ; mean_c X]))         2 -> 1 channel, about 100 parameters
    F_GF = conv3x3(conv1x1(concat[F_1 .. F_G])) + F0            "SC": every group forwarded to the top
    y    = conv3x3(pixel_shuffle_upsampler(F_GF)) + mean        x2, x3 one stage; x4 two x2 stages

This module is pure PyTorch: `BSRNetwork` is the network alone. `modeling.BSRModel` adds the Hub side
(`from_pretrained`, `save_pretrained`, the card) and `upscale`; turning images into tensors and tiling lives in
the `inference` layer.
"""

from __future__ import annotations

import torch
from torch import nn

from ..inference import PixelMemory
from .configuration import BSRConfig

# torch.is_autocast_enabled takes the device type from torch 2.4 on; pyproject allows 2.3.
_AUTOCAST_BY_DEVICE = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 4)


def _autocast_enabled(device_type: str) -> bool:
    if _AUTOCAST_BY_DEVICE:
        return torch.is_autocast_enabled(device_type)
    return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


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
        # One kernel instead of a multiply and an add (none at res_scale 1): with few channels, each element-wise pass
        # over the feature map costs a sizeable share of a convolution's time on a CPU.
        return torch.add(x, self.conv2(self.act(self.conv1(x))), alpha=self.res_scale)


class LightSpatialAttention(nn.Module):
    """One spatial weight map from channel max and mean: the "light" attention (k*k*2 + 1 parameters)."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.bfloat16 and x.device.type == "cpu" and x.is_contiguous(memory_format=torch.channels_last):
            return self._forward_cpu_bf16(x)
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)  # (B, 2, H, W)
        return x * torch.sigmoid(self.conv(pooled))  # (B, 1, H, W) broadcast over C

    def _forward_cpu_bf16(self, x: torch.Tensor) -> torch.Tensor:
        """The same map for a channels_last bf16 input on a CPU, with the channel max, mean and product in fp32,
        each rounded to bf16 once as the bf16 kernels round. There the channels are the innermost dimension, and
        PyTorch's bf16 kernels for a reduction over them and a product broadcast over them work through 16 or 32
        values at a time, much slower than fp32's: this takes the attention from 2.76 to 1.82 ms in bsr-tiny-x2
        and 3.67 to 2.01 ms in bsr-lite-x2 at 256x256 (bench/results/attention_cpu_bf16.md; in NCHW no gain)."""
        xf = x.float()  # (B, C, H, W), the memory format kept
        pooled = torch.cat([xf.amax(dim=1, keepdim=True), xf.mean(dim=1, keepdim=True)], dim=1).to(x.dtype)
        weight = torch.sigmoid(self.conv(pooled))  # (B, 1, H, W), bf16 (or autocast's choice)
        return (xf * weight.float()).to(x.dtype)


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


class BSRNetwork(nn.Module):
    """BSR: Feature Mapping Groups with light spatial attention and group forwarding.

    `forward` takes (B, 3, h, w) RGB in [0, 1] and returns (B, 3, h*scale, w*scale), not clamped (clamp when
    converting to an image; training losses want the raw values). Follows the `inference.Upscaler` protocol.
    Under bf16 autocast (training, or `backend="eager-bf16"`) the last conv runs in float32 and so does the output.
    """

    output_fp32_under_autocast = True
    """What lets `backend="auto"` consider bf16 autocast for this network (inference/autotune.py): its output is
    computed in float32 (by `output_conv`), which kept bf16's cost within 0.01 dB on Set5 and Set14
    (bench/results/bf16_cost.md)."""

    def __init__(self, config: BSRConfig):
        super().__init__()
        if not isinstance(config, BSRConfig):
            raise TypeError(f"{type(self).__name__} expects a BSRConfig, got {type(config).__name__}")
        self.config = config
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
    def output_conv(self) -> nn.Conv2d:
        """The conv whose output is the image: run in float32 under autocast, so kept in float32 by a runner that
        casts the other convs' weights to bf16 once (backend="eager-bf16") rather than at every call."""
        return self.tail

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
        up = self.upsampler(fused + f0)  # (B, C, h*s, w*s)
        if _autocast_enabled(x.device.type):
            # The tail's output is the image itself, which bf16's 8-bit mantissa would round to about half a grey
            # level: the whole network in bf16 cost 0.010-0.017 dB on Set5, with this conv in fp32 0.003-0.008
            # (bench/results/bf16_cost.md), for a 64->3 conv's worth of time.
            with torch.autocast(x.device.type, enabled=False):
                return self.tail(up.float()) + mean  # (B, 3, h*s, w*s) float32
        return self.tail(up) + mean  # (B, 3, h*s, w*s)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def num_conv_layers(self) -> int:
        return sum(isinstance(m, nn.Conv2d) for m in self.modules())

    def memory_per_input_pixel(self) -> PixelMemory:
        """Activation bytes per LR pixel (float32), for tiling and the out-of-memory check (`upscaler.Upscaler`):
        the G group outputs kept for fusion, a few working maps, and the upsampler's maps at output resolution."""
        c, g, s = self.config.num_features, self.config.num_groups, self.config.scale
        return PixelMemory(feature_map=4 * c, peak=4 * ((g + 6) * c + 3 * c * s * s))
