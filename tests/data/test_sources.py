"""Training data from 🤗 datasets sources: folders, in-memory and streaming datasets, odd images, LR made once."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import bsr_hub.data.sources as data_module
from bsr_hub.data.degradations import degrade, modcrop
from bsr_hub.data.pairs import ImagePairs, crop_pair, iter_pools
from bsr_hub.data.sources import DataConfig, load_image_source, to_rgb_array

datasets = pytest.importorskip("datasets")


def noise(h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    shape = (h, w, c) if c > 1 else (h, w)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture
def odd_folder(tmp_path):
    """One usable image of every kind, and one of every kind that must be skipped."""
    Image.fromarray(noise(70, 81, seed=1)).save(tmp_path / "rgb.png")  # odd sides: mod-cropped
    Image.fromarray(noise(64, 64, 1, seed=2), mode="L").save(tmp_path / "grey.png")
    rgba = np.dstack([noise(64, 64, seed=3), np.full((64, 64), 255, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "opaque_rgba.png")
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "transparent.png")
    Image.fromarray(noise(20, 64, seed=4)).save(tmp_path / "small.png")  # LR 10 x 32 < 16
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    Image.fromarray(np.full((64, 64), 40000, np.uint16)).save(tmp_path / "deep16.png")
    sub = tmp_path / "nested"  # imagefolder reads sub-folders; drop_labels keeps a None label column away
    sub.mkdir()
    Image.fromarray(noise(48, 48, seed=5)).save(sub / "nested.png")
    return tmp_path


def test_folder_with_odd_images_is_read_with_counts(odd_folder):
    pairs = ImagePairs.from_source(odd_folder, DataConfig(scale=2), min_lr_size=16)
    assert len(pairs) == 4  # rgb, grey, opaque RGBA, nested
    assert pairs.num_skipped == 4
    reasons = " | ".join(sorted(pairs.skipped))
    for word in ("transparent", "smaller than the patch", "unreadable", "not 8-bit"):
        assert word in reasons, reasons
    for hr, lr in zip(pairs.hr, pairs.lr):
        assert hr.dtype == lr.dtype == np.uint8 and hr.ndim == lr.ndim == 3 and hr.shape[2] == lr.shape[2] == 3
        assert hr.shape[:2] == (2 * lr.shape[0], 2 * lr.shape[1])
        assert np.array_equal(lr, degrade(hr, 2))  # LR is the MATLAB-exact BI of the mod-cropped HR
    shapes = sorted(hr.shape for hr in pairs.hr)
    assert (70, 80, 3) in shapes  # 70 x 81 mod-cropped to a multiple of 2
    grey = [hr for hr in pairs.hr if np.array_equal(hr[..., 0], hr[..., 1])]
    assert grey and all(np.array_equal(g[..., 0], g[..., 2]) for g in grey)


def test_transparent_images_kept_on_request(odd_folder):
    pairs = ImagePairs.from_source(odd_folder, DataConfig(scale=2, transparent="drop_alpha"), min_lr_size=16)
    assert len(pairs) == 5 and "partly transparent" not in pairs.skipped


def test_to_rgb_array_modes():
    rgb, _ = to_rgb_array(Image.fromarray(noise(8, 8)).convert("P"))
    assert rgb.shape == (8, 8, 3)
    cmyk, _ = to_rgb_array(Image.fromarray(noise(8, 8)).convert("CMYK"))
    assert cmyk.shape == (8, 8, 3)
    arr, _ = to_rgb_array(noise(8, 8, 1))
    assert arr.shape == (8, 8, 3)
    none, reason = to_rgb_array(np.zeros((8, 8, 3), np.float32))
    assert none is None and "float32" in reason
    assert to_rgb_array(noise(8, 8))[0].flags.writeable


def test_in_memory_dataset_makes_each_lr_once(monkeypatch):
    calls = []
    real = data_module.make_lr

    def counting(hr, scale, kind="BI"):
        calls.append(hr.shape)
        return real(hr, scale, kind)

    monkeypatch.setattr(data_module, "make_lr", counting)
    ds = datasets.Dataset.from_dict({"image": [Image.fromarray(noise(40, 44, seed=s)) for s in range(5)]})
    pairs = ImagePairs.from_source(ds, DataConfig(scale=2), min_lr_size=16)
    assert len(pairs) == 5 and len(calls) == 5
    from bsr_hub.data.rfs_config import RFSConfig
    from bsr_hub.data.sampling import RFSSampler

    sampler = RFSSampler(pairs, RFSConfig(patch_size=16, batch_size=4, prescan_patches=64, mode="uniform"))
    for g in range(10):
        sampler.batch(g)
    assert len(calls) == 5  # crops never re-degrade


def test_bd_degradation_and_scale_3():
    ds = datasets.Dataset.from_dict({"image": [Image.fromarray(noise(61, 62))]})
    pairs = ImagePairs.from_source(ds, DataConfig(scale=3, degradation="BD"), min_lr_size=16)
    assert np.array_equal(pairs.lr[0], degrade(modcrop(noise(61, 62), 3), 3, kind="BD"))
    assert pairs.hr[0].shape == (60, 60, 3)


def test_paired_lr_column():
    hr = [noise(64, 64, seed=1), noise(65, 67, seed=2), noise(64, 64, seed=3)]
    lr = [noise(32, 32, seed=4), noise(32, 33, seed=5), noise(20, 32, seed=6)]  # the last does not match x2
    ds = datasets.Dataset.from_dict(
        {"hr": [Image.fromarray(a) for a in hr], "lr": [Image.fromarray(a) for a in lr]}
    ).cast_column("hr", datasets.Image()).cast_column("lr", datasets.Image())
    pairs = ImagePairs.from_source(ds, DataConfig(scale=2, image_column="hr", lr_column="lr"), min_lr_size=16)
    assert len(pairs) == 2 and pairs.skipped == {"LR/HR sizes do not match the scale": 1}
    assert np.array_equal(pairs.lr[0], lr[0]) and np.array_equal(pairs.hr[1], hr[1][:64, :66])
    with pytest.raises(ValueError, match="LR column 'low'"):
        ImagePairs.from_source(ds, DataConfig(scale=2, image_column="hr", lr_column="low"))
    with pytest.raises(ValueError, match="which column"):
        ImagePairs.from_source(ds, DataConfig(scale=2))  # two Image columns: say which is HR


def test_streaming_pools_split_between_readers():
    images = [noise(40, 40, seed=s) for s in range(8)]
    ds = datasets.Dataset.from_dict({"image": [Image.fromarray(a) for a in images]})
    stream = ds.to_iterable_dataset(num_shards=4)
    config = DataConfig(scale=2)
    seen = []
    for reader in range(2):
        pools = list(iter_pools(stream, config, min_lr_size=16, pool_size=3, rank=reader, world_size=2))
        assert [len(p) for p in pools] == [3, 1]
        seen += [p.hr[i].tobytes() for p in pools for i in range(len(p))]
    assert sorted(seen) == sorted(a.tobytes() for a in images)  # every image once, no reader repeats another's


def test_crop_pair_is_aligned():
    hr = noise(64, 80)
    lr = degrade(hr, 2)
    lr_patch, hr_patch = crop_pair(hr, lr, 5, 9, 16, 2)
    assert lr_patch.shape == (16, 16, 3) and hr_patch.shape == (32, 32, 3)
    assert np.array_equal(degrade(hr_patch, 2)[3:-3, 3:-3], lr_patch[3:-3, 3:-3])


def test_bad_sources_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_image_source(str(tmp_path / "missing"))
    with pytest.raises(TypeError, match="source must be"):
        load_image_source(42)
    empty = datasets.Dataset.from_dict({"image": [Image.fromarray(noise(8, 8))]})
    with pytest.raises(ValueError, match="no usable training image"):
        ImagePairs.from_source(empty, DataConfig(scale=2), min_lr_size=16)
    with pytest.raises(ValueError, match="degradation"):
        DataConfig(degradation="bicubic")


def test_import_bsr_hub_does_not_need_datasets():
    code = (
        "import sys, bsr_hub, bsr_hub.data.pic, bsr_hub.data.sources, bsr_hub.data.pairs, bsr_hub.data.rfs_config, "
        "bsr_hub.data.rfs_picks, bsr_hub.data.sampling; assert 'datasets' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
