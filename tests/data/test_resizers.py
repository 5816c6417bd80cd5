"""The resizers of the robustness suite and the training degradation mix (bsr_hub.data.resizers)."""

import numpy as np
import pytest
import torch

from bsr_hub.data.resizers import (
    OPENCV_RESIZERS,
    RESIZERS,
    TRAINING_RESIZERS,
    DegradationMix,
    add_noise,
    downscale,
    jpeg,
    opencv_available,
)


def _photo(h=64, w=80, seed=0):
    """A smooth gradient with texture: what a resizer's filter and rounding act on."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([yy * 3, xx * 2, (yy + xx) * 1.5], axis=-1) % 256
    return np.clip(base + rng.normal(0, 12, size=(h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", [r for r in RESIZERS if r not in OPENCV_RESIZERS or opencv_available()])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_every_resizer_gives_the_lr_size_and_range_it_claims(name, scale):
    hr = _photo(12 * scale, 10 * scale)
    lr = downscale(hr, scale, name)
    assert lr.shape == (12, 10, 3) and lr.dtype == np.uint8
    # A downscale keeps the image's brightness: the means agree within a couple of levels.
    assert abs(float(lr.mean()) - float(hr.mean())) < 3


def test_a_flat_image_stays_flat_through_every_training_resizer():
    hr = np.full((32, 32, 3), (198, 34, 18), np.uint8)
    for name in TRAINING_RESIZERS:
        assert np.array_equal(downscale(hr, 2, name), np.full((16, 16, 3), (198, 34, 18), np.uint8)), name


def test_resizers_differ_from_each_other():
    """The suite is only worth running if its resizers make different LR (antialiased vs not, kernel shapes)."""
    hr = _photo(96, 96)
    made = {name: downscale(hr, 2, name).astype(int) for name in TRAINING_RESIZERS}
    # Non-antialiased bicubic keeps more of the texture's noise than MATLAB's antialiased one.
    assert made["torch-bicubic"].std() > made["matlab-bicubic"].std() + 0.5
    assert np.abs(made["pil-box"] - made["matlab-bicubic"]).max() >= 3


@pytest.mark.skipif(not opencv_available(), reason="OpenCV is not installed (pip install opencv-python-headless)")
def test_opencv_at_x2_equals_its_torch_stand_ins():
    """Training draws from torch-bilinear / torch-bicubic instead of OpenCV: at x2 they are the same resizers."""
    hr = _photo(96, 128)
    assert np.array_equal(downscale(hr, 2, "opencv-linear"), downscale(hr, 2, "torch-bilinear"))
    assert np.array_equal(downscale(hr, 2, "opencv-area"), downscale(hr, 2, "torch-bilinear"))
    diff = np.abs(downscale(hr, 2, "opencv-cubic").astype(int) - downscale(hr, 2, "torch-bicubic").astype(int))
    assert diff.max() <= 1  # both Keys a = -0.75; only float rounding differs


def test_downscale_refuses_what_it_cannot_size():
    with pytest.raises(ValueError, match="divisible"):
        downscale(_photo(33, 32), 2, "pil-bicubic")
    with pytest.raises(ValueError, match="unknown resizer"):
        downscale(_photo(32, 32), 2, "photoshop")


def test_jpeg_and_noise_keep_size_and_change_pixels():
    lr = _photo(32, 32)
    for out in (jpeg(lr, 75), add_noise(lr, 3.0, np.random.default_rng(0))):
        assert out.shape == lr.shape and out.dtype == np.uint8
        assert 0.2 < np.abs(out.astype(int) - lr.astype(int)).mean() < 10
    assert np.abs(jpeg(lr, 95).astype(int) - lr).mean() < np.abs(jpeg(lr, 60).astype(int) - lr).mean()


def test_mix_patch_equals_the_whole_image_resize_inside_the_margin():
    """A patch made from a window with margin is the same as the patch of the resized whole image (for a
    resizer whose taps reach less than the margin), so training LR matches what a user's resizer makes."""
    hr = _photo(128, 128)
    mix = DegradationMix(resizers=["matlab-bicubic"], noise_probability=0, jpeg_probability=0, margin=4)
    whole = downscale(hr, 2, "matlab-bicubic")
    for y, x in [(0, 0), (10, 7), (16, 16)]:  # at the border and inside
        patch = mix.lr_patch(hr, y, x, 48, 2, np.random.default_rng(0))
        assert patch.shape == (48, 48, 3)
        assert np.array_equal(patch, whole[y : y + 48, x : x + 48]), (y, x)


def test_mix_draws_every_branch_and_is_reproducible():
    hr = _photo(64, 64)
    mix = DegradationMix(noise_probability=0.5, jpeg_probability=0.5)
    seen = set()
    for seed in range(200):
        lr, how = mix.degrade(hr, 2, np.random.default_rng(seed))
        assert lr.shape == (32, 32, 3) and lr.dtype == np.uint8
        seen.update(how.split("+"))
        again, how_again = mix.degrade(hr, 2, np.random.default_rng(seed))
        assert how == how_again and np.array_equal(lr, again)
    assert set(TRAINING_RESIZERS) <= seen
    assert any(s.startswith("noise") for s in seen) and any(s.startswith("jpeg") for s in seen)


def test_mix_weights_pick_only_weighted_resizers():
    mix = DegradationMix(resizers=["pil-box", "torch-bicubic"], resizer_weights=[0, 1], noise_probability=0,
                         jpeg_probability=0)
    assert {mix.degrade(_photo(32, 32), 2, np.random.default_rng(s))[1] for s in range(20)} == {"torch-bicubic"}


@pytest.mark.parametrize("bad, match", [
    ({"resizers": ["gimp"]}, "unknown"),
    ({"resizers": []}, "unknown"),
    ({"resizer_weights": [1.0]}, "one weight"),
    ({"jpeg_probability": 1.5}, "jpeg_probability"),
    ({"jpeg_quality": [95, 60]}, "jpeg_quality"),
    ({"noise_sigma": [1.0]}, r"\[low, high\]"),
    ({"margin": -1}, "margin"),
    ({"colour": 1}, "unknown setting"),
])
def test_mix_settings_are_checked(bad, match):
    with pytest.raises(ValueError, match=match):
        DegradationMix.from_value(bad)


def test_mix_in_a_training_config_round_trips_through_yaml(tmp_path):
    import yaml

    from bsr_hub.commands.train import load_train_config as load_config
    from bsr_hub.training.config import config_from_dict, config_to_yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  degradation_mix:\n    jpeg_probability: 0.25\n    resizers: [pil-box, torch-bicubic]\n")
    cfg, _ = load_config(["--config", str(recipe)])
    mix = cfg.data.degradation_mix
    assert isinstance(mix, DegradationMix)
    assert mix.jpeg_probability == 0.25 and mix.resizers == ["pil-box", "torch-bicubic"]
    again = config_from_dict(yaml.safe_load(config_to_yaml(cfg)))
    assert again.data.degradation_mix == mix
    for flag in ("--data.degradation_mix", "--degradation_mix"):
        assert load_config([flag, "{}"])[0].data.degradation_mix == DegradationMix()
    assert load_config([])[0].data.degradation_mix is None


def test_sampler_with_a_mix_returns_patches_of_the_claimed_size(tmp_path):
    """RFS positions come from the clean LR; the LR returned is the mix's, not the pair's."""
    from bsr_hub.data.degradations import degrade
    from bsr_hub.data.pairs import ImagePairs
    from bsr_hub.data.rfs_config import RFSConfig
    from bsr_hub.data.sampling import RFSSampler
    from bsr_hub.data.sources import DataConfig

    hrs = [_photo(96, 96, seed=s) for s in range(3)]
    pairs = ImagePairs(hr=hrs, lr=[degrade(h, 2) for h in hrs], scale=2)
    cfg = RFSConfig(patch_size=16, batch_size=8, scale=2, num_intervals=2, prescan_patches=64)
    plain = RFSSampler(pairs, cfg).batch(0)
    mixed_sampler = RFSSampler(pairs, cfg, DataConfig(degradation_mix=DegradationMix(resizers=["torch-bicubic"])))
    mixed = mixed_sampler.batch(0)
    assert mixed["lr"].shape == (8, 3, 16, 16) and mixed["hr"].shape == (8, 3, 32, 32)
    assert 0 <= float(mixed["lr"].min()) and float(mixed["lr"].max()) <= 1
    # Same positions (the mix's draws come between the flips' draws, so each patch may be flipped otherwise).
    for a, b in zip(plain["hr"], mixed["hr"]):
        assert any(torch_equal(torch.rot90(a, k % 4, dims=(1, 2)).flip(2) if k >= 4 else torch.rot90(a, k, dims=(1, 2)), b)
                   for k in range(8))
    assert not torch_equal(plain["lr"], mixed["lr"])
    assert torch_equal(mixed["lr"], mixed_sampler.batch(0)["lr"])  # exact resume: batch g is a function of g
    assert mixed_sampler.to_dict()["degradation_mix"]["resizers"] == ["torch-bicubic"]


def torch_equal(a, b):
    return torch.equal(a, b)
