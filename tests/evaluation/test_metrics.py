"""PSNR / SSIM under the published protocol: identities, constants, and agreement with independent code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bsr_hub.data.degradations import imresize
from bsr_hub.evaluation.metrics import (
    Y_COEFFS,
    blockiness,
    gaussian_window_1d,
    luma,
    psnr,
    psnr_from_mse,
    psnr_ssim,
    quantize,
    rgb_to_y,
    ssim,
)


def _smooth_image(seed: int, h: int = 40, w: int = 36, channels: int = 3) -> np.ndarray:
    """A uint8 image with structure (SSIM of pure noise is uninformative)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(x / 5.0 + seed) * np.cos(y / 7.0)
    img = base[:, :, None] + rng.normal(0, 10, (h, w, channels))
    return np.clip(img, 0, 255).astype(np.uint8).squeeze()


def test_identical_images_give_psnr_inf_and_ssim_one() -> None:
    img = _smooth_image(0)
    p, s = psnr_ssim(img, img, shave=2)
    assert math.isinf(p.item()) and p.item() > 0
    assert s.item() == pytest.approx(1.0, abs=1e-12)


def test_known_mse_gives_known_psnr() -> None:
    # A grey image is scored on its own values, so an error of +-d everywhere has MSE d^2 exactly.
    hr = np.full((24, 24), 100, dtype=np.uint8)
    d = 5
    signs = np.where((np.indices((24, 24)).sum(0) % 2) == 0, 1, -1)
    sr = (hr.astype(int) + d * signs).astype(np.uint8)
    p, _ = psnr_ssim(sr, hr, shave=0)
    assert p.item() == pytest.approx(10 * math.log10(255**2 / d**2), abs=1e-9)
    assert psnr_from_mse(d**2) == pytest.approx(p.item(), abs=1e-9)
    # Over Y of a colour image: an error of 1 grey level in G only moves Y by 128.553 / 255.
    rgb = np.full((20, 20, 3), 100, dtype=np.uint8)
    rgb2 = rgb.copy()
    rgb2[:, :, 1] += 1
    p, _ = psnr_ssim(rgb2, rgb, shave=0)
    assert p.item() == pytest.approx(10 * math.log10(255**2 / (128.553 / 255) ** 2), abs=1e-9)


def test_y_constants_are_matlab_rgb2ycbcr() -> None:
    assert Y_COEFFS == (65.481, 128.553, 24.966)
    corners = torch.tensor([[0.0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]])
    y = rgb_to_y(corners[:, :, None, None]).flatten()  # (5, 3, 1, 1) -> (5,)
    np.testing.assert_allclose(y.numpy(), [16.0, 235.0, 16 + 65.481, 16 + 128.553, 16 + 24.966], atol=1e-12)


def test_y_agrees_with_scikit_image() -> None:
    skcolor = pytest.importorskip("skimage.color")
    img = _smooth_image(1)
    expected = skcolor.rgb2ycbcr(img)[:, :, 0]  # float, MATLAB convention
    ours = rgb_to_y(torch.from_numpy(img).permute(2, 0, 1).double())
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-9)


def test_ssim_agrees_with_scikit_image_gaussian_ssim() -> None:
    skmetrics = pytest.importorskip("skimage.metrics")
    a = _smooth_image(2, channels=1).astype(np.float64)
    b = _smooth_image(3, channels=1).astype(np.float64)
    expected = skmetrics.structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert ssim(torch.from_numpy(a), torch.from_numpy(b)).item() == pytest.approx(expected, abs=1e-9)


def test_ssim_equals_a_direct_11x11_valid_convolution() -> None:
    a = torch.from_numpy(_smooth_image(4, channels=1)).double()[None]  # (1, H, W)
    b = torch.from_numpy(_smooth_image(5, channels=1)).double()[None]
    g = gaussian_window_1d()
    w = torch.outer(g, g)[None, None]  # (1, 1, 11, 11)

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t[:, None], w)[:, 0]

    mu_a, mu_b = filt(a), filt(b)
    va, vb, cov = filt(a * a) - mu_a**2, filt(b * b) - mu_b**2, filt(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ref = (((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2))).mean()
    assert ssim(a, b).item() == pytest.approx(ref.item(), abs=1e-12)


def test_grey_reference_is_scored_on_its_own_channel() -> None:
    hr = _smooth_image(6, channels=1)  # (H, W) grey ground truth
    sr = np.clip(hr.astype(int) + 3, 0, 255).astype(np.uint8)
    p1, s1 = psnr_ssim(sr, hr, shave=2)
    p3, s3 = psnr_ssim(np.repeat(sr[:, :, None], 3, axis=2), hr, shave=2)  # an RGB output with R = G = B
    assert p1.item() == pytest.approx(p3.item(), abs=1e-9) and s1.item() == pytest.approx(s3.item(), abs=1e-12)
    # Not the YCbCr-scaled value: that compresses the range by 219/255 and would raise PSNR.
    rgb_hr = np.repeat(hr[:, :, None], 3, axis=2)
    p_scaled, _ = psnr_ssim(np.repeat(sr[:, :, None], 3, axis=2), rgb_hr, shave=2)
    assert p_scaled.item() > p1.item() + 1.0
    with pytest.raises(ValueError, match="grey"):
        luma(torch.zeros(1, 1, 4, 4), grey_reference=False)


def test_float_output_is_quantised_to_uint8_before_scoring() -> None:
    hr = _smooth_image(7)
    x = torch.from_numpy(hr).permute(2, 0, 1)[None].double() / 255  # (1, 3, H, W)
    noisy = (x + 0.4 / 255 * torch.sign(torch.randn_like(x))).clamp(0, 1)  # < half a grey level off
    p, _ = psnr_ssim(noisy.float(), hr, shave=0)
    assert math.isinf(p.item())
    assert torch.equal(quantize(torch.tensor([0.5 / 255, -0.2, 1.3])), torch.tensor([1.0, 0.0, 255.0]))


def test_shave_removes_the_border() -> None:
    hr = _smooth_image(8)
    sr = hr.copy()
    sr[:3] = 0  # damage only the top 3 rows
    assert math.isinf(psnr_ssim(sr, hr, shave=3)[0].item())
    assert not math.isinf(psnr_ssim(sr, hr, shave=2)[0].item())


def test_batches_give_per_image_values() -> None:
    a = torch.from_numpy(np.stack([_smooth_image(9), _smooth_image(10)])).permute(0, 3, 1, 2)  # (2, 3, H, W)
    b = torch.from_numpy(np.stack([_smooth_image(11), _smooth_image(10)])).permute(0, 3, 1, 2)
    p, s = psnr_ssim(a, b, shave=2)
    assert p.shape == s.shape == (2,)
    assert math.isinf(p[1].item()) and not math.isinf(p[0].item())
    assert p[0].item() == pytest.approx(psnr_ssim(a[0], b[0], shave=2)[0].item())


def test_mismatched_sizes_say_to_modcrop() -> None:
    with pytest.raises(ValueError, match="mod-crop"):
        psnr_ssim(np.zeros((20, 20, 3), np.uint8), np.zeros((21, 20, 3), np.uint8), shave=2)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(torch.zeros(4, 4), torch.zeros(4, 5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU here")
def test_gpu_matches_cpu() -> None:
    a = torch.from_numpy(_smooth_image(12)).permute(2, 0, 1)[None]
    b = torch.from_numpy(_smooth_image(13)).permute(2, 0, 1)[None]
    pc, sc = psnr_ssim(a, b, shave=2)
    pg, sg = psnr_ssim(a.cuda(), b.cuda(), shave=2)
    assert pg.device.type == "cuda"
    assert pg.item() == pytest.approx(pc.item(), abs=1e-9) and sg.item() == pytest.approx(sc.item(), abs=1e-9)


# ---------------------------------------------------------------------------------------------------- blockiness


def _block_grid_image(scale: int, shift: int = 0, seed: int = 0) -> np.ndarray:
    """A (96 s + 5, 80 s + 3) grey noise image plus one random offset per 8s x 8s block, the blocks starting at
    output pixel -`shift`: with shift 0 the steps are the JPEG grid of an x`scale` upscale."""
    rng = np.random.default_rng(seed)
    h, w = 96 * scale + 5, 80 * scale + 3
    offsets = rng.uniform(-30, 30, (h // (8 * scale) + 2, w // (8 * scale) + 2))
    rows, cols = (np.arange(h) + shift) // (8 * scale), (np.arange(w) + shift) // (8 * scale)
    image = rng.normal(128, 20, (h, w)) + offsets[rows][:, cols]
    return np.clip(np.floor(image + 0.5), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_blockiness_is_one_without_a_grid_even_where_upscaling_makes_steps_depend_on_the_phase(scale) -> None:
    """Bicubic upscaling of LR noise has steps that depend on where they fall in an LR pixel's s x s cell; the
    figure compares LR pixel borders with LR pixel borders, so it reads 1 there (all positions would read ~1.15)."""
    lr = np.random.default_rng(scale).integers(0, 256, (96, 80, 3), dtype=np.uint8)
    assert blockiness(imresize(lr, scale), scale).item() == pytest.approx(1.0, abs=0.06)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_blockiness_finds_the_grid_at_multiples_of_8_times_the_scale(scale) -> None:
    on_grid = blockiness(_block_grid_image(scale), scale).item()
    assert on_grid > 1.2
    for shift in (1, -1):  # the same steps one output pixel off the LR block borders are no grid
        assert blockiness(_block_grid_image(scale, shift), scale).item() == pytest.approx(1.0, abs=0.06)


def test_blockiness_takes_what_psnr_ssim_takes() -> None:
    grey = _block_grid_image(2)
    value = blockiness(grey, 2)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)  # Y of R = G = B is an affine map of the grey value: same ratio
    assert blockiness(rgb, 2).item() == pytest.approx(value.item(), rel=1e-12)
    batch = torch.from_numpy(np.stack([rgb, rgb[::-1].copy()])).permute(0, 3, 1, 2).float().div(255)  # (2, 3, H, W)
    assert blockiness(batch, 2).shape == (2,)
    assert blockiness(batch, 2)[0].item() == pytest.approx(value.item(), rel=1e-6)
    assert math.isnan(blockiness(np.full((40, 40), 7, np.uint8), 2).item())  # no step at all
    framed = grey.copy()
    framed[:2], framed[-2:], framed[:, :2], framed[:, -2:] = 0, 255, 255, 0  # what a model's padding might do
    assert blockiness(framed, 2).item() != pytest.approx(value.item(), rel=1e-3)
    assert blockiness(framed, 2, shave=2).item() == pytest.approx(blockiness(grey, 2, shave=2).item(), rel=1e-12)
    with pytest.raises(ValueError, match="no 8x8 block border"):
        blockiness(np.zeros((16, 16), np.uint8), 2)
