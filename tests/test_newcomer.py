"""Stumbles a new user hit on the README's path (issue 14, part 5), each checked as that user meets it."""

from __future__ import annotations

import shutil

import numpy as np
from conftest import SHARED_DATA, requires_shared_data
from PIL import Image

from bsr_hub.cli import main


def test_degrade_rerun_with_every_output_present_succeeds(tmp_path, capsys):
    hr = tmp_path / "HR"
    hr.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(hr / f"{i}.png")
    assert main(["degrade", str(hr), "-o", str(tmp_path / "LR"), "--scale", "2"]) == 0
    assert main(["degrade", str(hr), "-o", str(tmp_path / "LR"), "--scale", "2"]) == 0  # like upscale
    assert "exists (pass --overwrite" in capsys.readouterr().err
    assert main(["degrade", str(tmp_path / "empty-or-missing"), "-o", str(tmp_path / "LR2"), "--scale", "2"]) == 1


@requires_shared_data
def test_pic_stats_says_why_an_image_was_skipped(tmp_path, capsys):
    for path in sorted((SHARED_DATA / "train" / "T91").glob("*.png"))[:3]:
        shutil.copy(path, tmp_path)
    Image.new("RGB", (10, 10)).save(tmp_path / "tiny.png")
    assert main(["pic-stats", str(tmp_path), "--scale", "2", "--patch", "24", "--batches", "1", "--batch-size", "4"]) == 0
    assert "(1 skipped: 1 smaller than the patch)" in capsys.readouterr().out
