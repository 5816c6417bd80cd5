"""MATLAB-exact bicubic imresize, mod-crop and the BI / BD degradations."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bsr_hub.data.degradations import bd_kernel_size, degrade, gaussian_kernel_1d, imresize, modcrop

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
REFERENCE_LR = SHARED_DATA / "reference_LR"
requires_reference = pytest.mark.skipif(
    not REFERENCE_LR.is_dir(), reason=f"MATLAB reference LR images not found at {REFERENCE_LR} (../shared/data)"
)
SET5 = ("baby", "bird", "butterfly", "head", "woman")


def _png(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


# ------------------------------------------------------------------------------------------ bit-exact references


@requires_reference
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bi_reproduces_matlab_reference_bit_for_bit(scale: int) -> None:
    folder = REFERENCE_LR / f"RCAN_Set5_x{scale}"
    for name in SET5:
        hr = _png(folder / f"{name}_HR_x{scale}.png")
        expected = _png(folder / f"{name}_LRBI_x{scale}.png")
        lr = degrade(hr, scale, "BI")
        assert lr.dtype == np.uint8 and lr.shape == expected.shape, name
        assert np.array_equal(lr, expected), f"{name} x{scale}: {(lr != expected).sum()} pixels differ"
        # The torch path, on a (C, H, W) tensor, gives the same pixels.
        lr_t = imresize(torch.from_numpy(hr.copy()).permute(2, 0, 1), 1 / scale)
        assert lr_t.dtype == torch.uint8
        assert np.array_equal(lr_t.permute(1, 2, 0).numpy(), expected), f"{name} x{scale} (torch)"


@requires_reference
@pytest.mark.parametrize("scale", [3, 4])
def test_benchmark_hr_modcropped_is_the_reference_hr(scale: int) -> None:
    """The evaluator mod-crops the benchmark HR itself: that must be the HR the references were made from."""
    for name in SET5:
        hr = modcrop(_png(SHARED_DATA / "benchmarks" / "Set5" / f"{name}.png"), scale)
        assert np.array_equal(hr, _png(REFERENCE_LR / f"RCAN_Set5_x{scale}" / f"{name}_HR_x{scale}.png")), name


# ------------------------------------------------------------------------------------------ imresize semantics


def test_enlarging_reproduces_a_linear_ramp_on_matlab_coordinates() -> None:
    # The cubic kernel reproduces linear functions, so away from the borders the output of a ramp is the ramp
    # sampled at MATLAB's coordinates u = x / s + 0.5 * (1 - 1 / s) (1-based): checks the coordinate map.
    ramp = np.tile(np.arange(1, 21, dtype=np.float64), (4, 1))  # (4, 20), value = 1-based column index
    out = imresize(ramp, 2)
    assert out.shape == (8, 40) and out.dtype == np.float64
    x = np.arange(1, 41)
    u = x / 2 + 0.5 * (1 - 1 / 2)
    np.testing.assert_allclose(out[0, 4:-4], u[4:-4], atol=1e-12)


def test_shrinking_a_ramp_averages_its_block() -> None:
    ramp = np.tile(np.arange(1, 31, dtype=np.float64), (3, 1))  # (3, 30)
    out = imresize(ramp, 1 / 3)
    assert out.shape == (1, 10)
    # The antialiased kernel is symmetric about each block centre (2, 5, 8, ... 1-based): the mean of a ramp.
    np.testing.assert_allclose(out[0, 2:-2], (np.arange(10) * 3 + 2)[2:-2], atol=1e-12)


@pytest.mark.parametrize("scale", [1 / 4, 1 / 3, 1 / 2, 2, 3, 4])
def test_constant_image_stays_constant_and_size_is_ceil(scale: float) -> None:
    img = np.full((13, 10, 3), 173, dtype=np.uint8)
    out = imresize(img, scale)
    assert out.shape == (math.ceil(13 * scale - 1e-9), math.ceil(10 * scale - 1e-9), 3)
    assert out.dtype == np.uint8 and (out == 173).all()


def test_float_input_keeps_float_and_is_not_clipped() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((12, 12)).astype(np.float32)
    img[5, 5] = 1.0
    img[5, 6] = 0.0  # a sharp edge overshoots with a = -0.5
    out = imresize(img, 2)
    assert out.dtype == np.float32
    assert out.max() > 1.0 or out.min() < 0.0


def test_uint8_rounds_each_pass_unlike_float() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    as_uint8 = imresize(img, 1 / 3).astype(np.int64)
    from_float = np.clip(np.floor(imresize(img.astype(np.float64), 1 / 3) + 0.5), 0, 255).astype(np.int64)
    assert np.abs(as_uint8 - from_float).max() <= 1  # the same up to the intermediate rounding


def test_torch_batch_matches_numpy_and_keeps_device_and_dtype() -> None:
    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 256, (2, 17, 23, 3), dtype=np.uint8)
    batch = torch.from_numpy(imgs).permute(0, 3, 1, 2)  # (B, C, H, W)
    for scale in (1 / 2, 3):
        out = imresize(batch, scale)
        assert out.dtype == torch.uint8
        for b in range(2):
            assert np.array_equal(out[b].permute(1, 2, 0).numpy(), imresize(imgs[b], scale))
    f = imresize(batch.float() / 255, 2)
    assert f.dtype == torch.float32 and f.shape == (2, 3, 34, 46)


# ------------------------------------------------------------------------------------------ modcrop and degrade


def test_modcrop_numpy_and_torch() -> None:
    assert modcrop(np.zeros((13, 10, 3), np.uint8), 4).shape == (12, 8, 3)
    assert modcrop(np.zeros((13, 10), np.uint8), 3).shape == (12, 9)
    assert modcrop(torch.zeros(2, 3, 13, 10), 4).shape == (2, 3, 12, 8)


def test_degrade_modcrops_and_keeps_channel_layout() -> None:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (31, 22, 3), dtype=np.uint8)
    grey = rgb[:, :, 0].copy()
    for kind in ("BI", "BD"):
        for scale in (2, 3, 4):
            lr = degrade(rgb, scale, kind)
            assert lr.shape == (31 // scale, 22 // scale, 3) and lr.dtype == np.uint8
            lr_grey = degrade(grey, scale, kind)
            assert lr_grey.shape == (31 // scale, 22 // scale)
            # Channels are degraded independently, so replicating grey to RGB before or after is the same.
            assert np.array_equal(lr_grey, lr[:, :, 0])


def _bd_reference(hr: np.ndarray, scale: int, sigma: float = 1.6) -> np.ndarray:
    """The RDN/SRMD MATLAB code, transcribed literally on a tiny image: fspecial, imfilter(replicate), slicing."""
    size = bd_kernel_size(scale, sigma)
    t = np.arange(size) - (size - 1) / 2
    k2 = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2 * sigma**2))
    k2 /= k2.sum()
    anchor = (size + 1) // 2 - 1  # imfilter's centre, 0-based
    padded = np.pad(hr.astype(np.float64), ((anchor, size - 1 - anchor), (anchor, size - 1 - anchor)), mode="edge")
    h, w = hr.shape
    blurred = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            blurred[i, j] = (padded[i : i + size, j : j + size] * k2).sum()
    blurred = np.clip(np.floor(blurred + 0.5), 0, 255)
    if scale % 2 == 1:
        # imresize(blur, 1/s, 'nearest'): 1-based index round(x * s + 0.5 * (1 - s)) = s * x - (s - 1) / 2
        idx = np.arange(h // scale) * scale + (scale - 1) // 2
        jdx = np.arange(w // scale) * scale + (scale - 1) // 2
    else:
        # blur(s/2 : s : end - s/2) in 1-based indices
        idx = np.arange(scale // 2 - 1, h - scale // 2, scale)
        jdx = np.arange(scale // 2 - 1, w - scale // 2, scale)
    return blurred[np.ix_(idx, jdx)].astype(np.uint8)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bd_matches_the_literal_matlab_transcription(scale: int) -> None:
    rng = np.random.default_rng(scale)
    hr = rng.integers(0, 256, (4 * scale, 5 * scale), dtype=np.uint8)
    assert np.array_equal(degrade(hr, scale, "BD"), _bd_reference(hr, scale))


def test_bd_kernel_sizes_and_normalisation() -> None:
    assert bd_kernel_size(3) == 7  # the published BD setting
    assert bd_kernel_size(2) == bd_kernel_size(4) == 12  # even: ceil(3 sigma) * 2 + 2
    k = gaussian_kernel_1d(7, 1.6)
    assert k.sum() == pytest.approx(1.0) and np.allclose(k, k[::-1])


@pytest.mark.parametrize(
    "image, scale, kind, match",
    [
        (np.zeros((8, 8, 3), np.float32), 2, "BI", "uint8"),
        (np.zeros((8, 8, 4), np.uint8), 2, "BI", "RGBA"),
        (np.zeros((8, 8, 3), np.uint8), 2, "BX", "kind"),
        (np.zeros((8, 8, 3), np.uint8), 1, "BI", "at least 2"),
        (np.zeros((8, 8, 3), np.uint8), 2.5, "BI", "integer"),
        (np.zeros((3, 8, 3), np.uint8), 4, "BI", "smaller"),
    ],
)
def test_degrade_rejects_bad_input_with_a_clear_error(image, scale, kind, match) -> None:
    with pytest.raises(ValueError, match=match):
        degrade(image, scale, kind)


def test_imresize_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="positive"):
        imresize(np.zeros((4, 4), np.uint8), 0)
    with pytest.raises(ValueError, match="dtype"):
        imresize(np.zeros((4, 4), np.int32), 2)
    with pytest.raises(ValueError, match="shape"):
        imresize(np.zeros((2, 4, 4, 3), np.uint8), 2)


@requires_reference
def test_cli_degrade_writes_same_names_and_matlab_pixels(tmp_path: Path) -> None:
    from bsr_hub.commands.main import main

    src = tmp_path / "hr"
    (src / "sub").mkdir(parents=True)
    hr = _png(REFERENCE_LR / "RCAN_Set5_x4" / "bird_HR_x4.png")
    Image.fromarray(hr).save(src / "sub" / "bird.png")
    Image.fromarray(hr[:, :, 0]).save(src / "grey.bmp")
    assert main(["degrade", str(src), "-o", str(tmp_path / "lr"), "--scale", "4"]) == 0
    lr = _png(tmp_path / "lr" / "sub" / "bird.png")
    assert np.array_equal(lr, _png(REFERENCE_LR / "RCAN_Set5_x4" / "bird_LRBI_x4.png"))
    assert Image.open(tmp_path / "lr" / "grey.png").mode == "L"
    assert main(["degrade", str(src / "grey.bmp"), "-o", str(tmp_path / "bd"), "--scale", "3", "--degradation", "BD"]) == 0
    assert (tmp_path / "bd" / "grey.png").is_file()
    (src / "junk.png").write_bytes(b"not an image")
    assert main(["degrade", str(src), "-o", str(tmp_path / "lr2"), "--scale", "2"]) == 1  # reported, not hidden


def test_degrade_files_refuses_sixteen_bit_and_colliding_names(tmp_path: Path) -> None:
    from bsr_hub.data.degradations import degrade_files

    src = tmp_path / "hr"
    src.mkdir()
    # 16-bit: Pillow's convert() would clip it to 255 and write a wrong LR with no error.
    Image.fromarray(np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)).save(src / "deep.png")
    Image.new("RGB", (8, 8), (10, 20, 30)).save(src / "pair.png")
    Image.new("RGB", (8, 8), (200, 20, 30)).save(src / "pair.bmp")  # same output name, pair.png
    done, problems = degrade_files([str(src)], str(tmp_path / "lr"), 2)
    assert done == 1
    assert not (tmp_path / "lr" / "deep.png").exists()
    assert any(p.startswith("failed") and "deep.png" in p and "8-bit" in p for p in problems)
    assert any(p.startswith("failed") and "also the output of" in p for p in problems)
