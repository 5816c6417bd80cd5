"""Several training folders at once (issue 21, item 2): --data.train_dir as a list (recipe, flag values, a repeated
flag), the sampler drawing from their union, the card listing every source with its count and a photo set's
licences, the resume guard, and a missing folder named."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT
from PIL import Image

pytest.importorskip("accelerate")
pytest.importorskip("datasets")
sys.path.insert(0, str(REPO_ROOT))
import train

DEBUG = str(REPO_ROOT / "configs" / "debug_cpu.yaml")


def textured_folder(folder: Path, count: int, channel: int, seed: int) -> Path:
    """`count` 64x64 textured images whose `channel` (0 red, 1 green) is far brighter than the others."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        img = rng.integers(0, 60, (64, 64, 3)).astype(np.uint8)
        img[:, :, channel] += 180
        Image.fromarray(img).save(folder / f"{folder.name}_{i}.png")
    return folder


def photo_set(folder: Path, count: int) -> Path:
    """A folder as bench/make_photo_set.py writes it: images/PKG/*.png and a manifest.csv beside them."""
    textured_folder(folder / "images" / "pkg-a", count, channel=1, seed=7)
    rows = [{"package": "pkg-a", "source": f"usr/share/backgrounds/{i}.jpg", "licence": "CC-BY-SA-3.0",
             "status": "kept"} for i in range(count)]
    rows.append({"package": "pkg-b", "source": "usr/share/backgrounds/flat.png", "licence": "GPL-2+",
                 "status": "render"})  # dropped: neither its package nor its licence is in the training data
    with (folder / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["package", "source", "licence", "status"])
        writer.writeheader()
        writer.writerows(rows)
    return folder


def test_the_sampler_draws_from_the_union_of_two_folders(tmp_path):
    from bsr_hub.data.sources import DataConfig
    from bsr_hub.data.rfs_config import RFSConfig
    from bsr_hub.data.sampling import RFSSampler

    red = textured_folder(tmp_path / "red", 3, channel=0, seed=0)
    green = textured_folder(tmp_path / "green", 2, channel=1, seed=1)
    config = RFSConfig(patch_size=16, batch_size=8, num_intervals=4, prescan_patches=64)
    sampler = RFSSampler([str(red), str(green)], config, DataConfig(train_dir=[str(red), str(green)]),
                         rank=0, world_size=1)
    assert len(sampler.pairs) == 5
    hr = np.concatenate([sampler.batch(g)["hr"].numpy() for g in range(6)])  # (48, 3, 32, 32)
    redder = hr[:, 0].mean(axis=(1, 2)) > hr[:, 1].mean(axis=(1, 2))
    assert 0 < redder.sum() < len(redder)  # patches of both folders


def test_train_dir_takes_a_recipe_list_flag_values_or_a_repeated_flag(tmp_path):
    from bsr_hub.commands.train import load_train_config

    recipe = tmp_path / "two.yaml"
    recipe.write_text("data:\n  train_dir: [a, b]\n")
    assert load_train_config(["--config", str(recipe)])[0].data.train_dir == ["a", "b"]
    assert load_train_config(["--data.train_dir", "a", "b"])[0].data.train_dirs == ["a", "b"]
    assert load_train_config(["--data.train_dir", "a", "--data.train_dir", "b"])[0].data.train_dir == ["a", "b"]
    assert load_train_config(["--config", str(recipe), "--data.train_dir", "c"])[0].data.train_dir == "c"  # flag wins
    # One folder stays a string: recipes, records and old checkpoints read as before.
    assert load_train_config(["--data.train_dir", "a"])[0].data.train_dir == "a"
    assert load_train_config(["--train_dir", "a"])[0].data.train_dirs == ["a"]  # the 0.1 alias


def test_train_dir_lists_that_cannot_be_meant_are_refused():
    from bsr_hub.data.sources import DataConfig

    with pytest.raises(ValueError, match="non-empty list of folders"):
        DataConfig(train_dir=[])
    with pytest.raises(ValueError, match="names a folder twice"):
        DataConfig(train_dir=["a", "a"])
    with pytest.raises(ValueError, match="not both"):
        DataConfig(train_dir=["a", "b"], dataset_name="me/photos")


def test_a_change_of_the_folder_list_is_a_data_change_at_resume():
    from bsr_hub.training.config import config_from_dict
    from bsr_hub.training.resume import resume_changes

    saved = config_from_dict({"data": {"train_dir": "a"}}).to_dict()
    assert resume_changes(saved, config_from_dict({"data": {"train_dir": ["a"]}})) == []
    assert resume_changes(saved, config_from_dict({"data": {"train_dir": ["a", "b"]}})) == [
        ("data.train_dir", "a", ["a", "b"])]
    two = config_from_dict({"data": {"train_dir": ["a", "b"]}}).to_dict()
    assert resume_changes(two, config_from_dict({"data": {"train_dir": ["b", "a"]}})) != []  # another order


def test_the_record_lists_every_folder_and_a_photo_sets_licences(tmp_path):
    from bsr_hub.training.config import config_from_dict
    from bsr_hub.training.reporting import describe_training_data

    plain = textured_folder(tmp_path / "mine", 3, channel=0, seed=0)
    photos = photo_set(tmp_path / "debian_photos", 2)
    data = describe_training_data(config_from_dict({"data": {"train_dir": [str(plain), str(photos)]}}))
    assert [d.describe() for d in data] == [
        "mine (3 images; licence not stated)",
        "debian_photos: Debian wallpapers, not flat by a PIC rule, from pkg-a (2 images; licence CC-BY-SA-3.0)",
    ]


def test_train_py_trains_on_two_folders_and_its_card_lists_both(tmp_path):
    plain = textured_folder(tmp_path / "mine", 3, channel=0, seed=0)
    photos = photo_set(tmp_path / "debian_photos", 2)
    out = tmp_path / "run"
    assert train.main(["--config", DEBUG, "--output.dir", str(out), "--optim.max_steps", "2",
                       "--data.train_dir", str(plain), str(photos)]) == 0
    card = (out / "model" / "README.md").read_text()
    assert ("| training data | mine (3 images; licence not stated), debian_photos: Debian wallpapers, not flat by a PIC rule, from pkg-a (2 images; "
            "licence CC-BY-SA-3.0) |") in card
    from bsr_hub.models.records import TrainingRecord

    record = TrainingRecord.load(out / "model" / "training.json")
    assert [(d.images, d.licence) for d in record.datasets] == [(3, "not stated"), (2, "CC-BY-SA-3.0")]
    assert "train_dir:\n  - " in record.recipe  # the list, as a recipe spells it


def test_a_missing_training_folder_is_a_clear_error_naming_it(tmp_path):
    plain = textured_folder(tmp_path / "mine", 3, channel=0, seed=0)
    missing = tmp_path / "no_such_photos"
    with pytest.raises(SystemExit, match=rf"--data.train_dir {missing}: no such folder"):
        train.main(["--config", DEBUG, "--output.dir", str(tmp_path / "run"), "--data.train_dir", str(plain),
                    str(missing)])
    assert not (tmp_path / "run").exists()  # refused before anything is written

    from bsr_hub.data.sources import load_image_source

    with pytest.raises(FileNotFoundError, match=f"no such folder: {missing}"):
        load_image_source([str(plain), str(missing)])
