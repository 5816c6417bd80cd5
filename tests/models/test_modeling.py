import pytest
import torch
from conftest import tiny_config
from torch import nn

from bsr_hub import BSRConfig, BSRModel, list_presets
from bsr_hub.models.network import LightSpatialAttention

PRESET_SCALES = [(name, scale) for name in list_presets() for scale in (2, 3, 4)]


@pytest.mark.parametrize("preset, scale", PRESET_SCALES)
def test_every_preset_upscales_and_trains(preset, scale):
    torch.manual_seed(0)
    model = BSRModel.from_preset(preset, scale=scale)
    x = torch.rand(2, 3, 12, 10)
    y = model(x)
    assert y.shape == (2, 3, 12 * scale, 10 * scale)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without a finite gradient: {no_grad}"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_base_is_the_papers_size(scale):
    model = BSRModel.from_preset("bsr-base", scale=scale)
    assert 190 <= model.num_conv_layers() < 200  # the paper: "fewer than 200 convolution layers"
    if scale == 2:
        assert 6.5e6 < model.num_parameters() < 7.0e6  # "about 6.8 M"


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_lite_is_cpu_sized(scale):
    model = BSRModel.from_preset("bsr-lite", scale=scale)
    assert 0.3e6 <= model.num_parameters() <= 0.7e6
    assert model.num_conv_layers() < 60


def test_light_spatial_attention_is_light_and_spatial():
    lsa = LightSpatialAttention(7)
    assert sum(p.numel() for p in lsa.parameters()) == 7 * 7 * 2 + 1
    x = torch.rand(1, 16, 9, 9)
    weights = lsa(x) / x  # one weight per pixel, shared by all channels
    assert torch.allclose(weights, weights[:, :1].expand_as(weights), atol=1e-5)


def test_the_attention_of_a_channels_last_bf16_map_on_a_cpu_matches_the_expression_in_bf16():
    """Its fp32 arithmetic (faster there) rounds once where the bf16 kernels round: the same map, and gradients
    under autocast, as training computes it."""
    torch.manual_seed(0)
    lsa = LightSpatialAttention(7).to(torch.bfloat16).to(memory_format=torch.channels_last)
    x = torch.randn(2, 16, 23, 17).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
    expected = x * torch.sigmoid(lsa.conv(pooled))  # the expression, in bf16 kernels
    out = lsa(x)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, expected)
    trained = LightSpatialAttention(7).to(memory_format=torch.channels_last)  # fp32 weights, bf16 autocast
    grads = []
    for forward in (trained, lambda t: t * torch.sigmoid(trained.conv(torch.cat(
            [t.amax(dim=1, keepdim=True), t.mean(dim=1, keepdim=True)], dim=1)))):
        trained.zero_grad()
        leaf = x.clone().requires_grad_()  # bf16, as a residual block's output under autocast
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = forward(leaf)
        y.float().square().mean().backward()
        grads.append((y.dtype, trained.conv.weight.grad.clone(), leaf.grad))
    (dtype, weight_grad, input_grad), (dtype_expr, weight_grad_expr, input_grad_expr) = grads
    assert dtype == dtype_expr == torch.bfloat16
    assert torch.allclose(weight_grad, weight_grad_expr, rtol=2e-2, atol=1e-4)
    assert torch.allclose(input_grad.float(), input_grad_expr.float(), rtol=2e-2, atol=1e-4)


def test_ablation_switches_change_the_network():
    full = BSRModel(tiny_config())
    no_attention = BSRModel(tiny_config(use_attention=False))
    no_forwarding = BSRModel(tiny_config(use_group_forwarding=False))
    assert not any(isinstance(m, LightSpatialAttention) for m in no_attention.modules())
    assert sum(isinstance(m, LightSpatialAttention) for m in full.modules()) == full.config.num_groups
    # Without group forwarding only the last group reaches the fusion: no G*C -> C 1x1 conv.
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in no_forwarding.modules())
    for model in (no_attention, no_forwarding):
        assert model(torch.rand(1, 3, 8, 8)).shape == (1, 3, 16, 16)


def test_group_forwarding_reaches_every_group():
    """With SC, the output depends on the first group's output directly, not only through the later groups."""
    torch.manual_seed(0)
    model = BSRModel(tiny_config(num_groups=3))
    seen = []
    model.fusion.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape) and None)
    model(torch.rand(1, 3, 6, 6))
    assert seen[0][1] == 3 * model.config.num_features
    # Through forward itself, with the path through the later groups cut: the first group still reaches the output
    # with SC, and only through the later groups without it.
    assert first_group_gradient(use_group_forwarding=True).abs().sum() > 0
    assert first_group_gradient(use_group_forwarding=False) is None


def first_group_gradient(use_group_forwarding: bool) -> torch.Tensor | None:
    """d(output)/d(first group's output) when the later groups see a detached copy of their input."""
    torch.manual_seed(0)
    model = BSRModel(tiny_config(num_groups=3, use_group_forwarding=use_group_forwarding))
    kept = {}

    def keep(module, inputs, output):
        kept["f1"] = output.detach().requires_grad_(True)
        return kept["f1"]

    model.groups[0].register_forward_hook(keep)
    for group in model.groups[1:]:
        group.register_forward_pre_hook(lambda module, args: (args[0].detach(),))
    model(torch.rand(1, 3, 6, 6)).sum().backward()
    return kept["f1"].grad


def test_model_rejects_a_non_config():
    with pytest.raises(TypeError, match="BSRConfig"):
        BSRModel({"scale": 2})


def test_config_is_kept_on_the_model():
    config = BSRConfig.from_preset("bsr-lite", scale=3)
    model = BSRModel(config)
    assert model.config is config and model.scale == 3
