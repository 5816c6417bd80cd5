"""Stumbles a new user hit on the README's path (issue 14, part 5), each checked as that user meets it."""

from __future__ import annotations

import shutil
from pathlib import Path
import sys

import numpy as np
import pytest
from conftest import SHARED_DATA, requires_shared_data
from PIL import Image

from bsr_hub.commands.main import main


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


def test_cpu_half_precision_is_answered_in_flags(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    # A command-line user cannot act on check_precision's "use model.float()"; the CLI names the flags.
    from bsr_hub.core import cpu

    monkeypatch.setattr(cpu, "has_native_bf16", lambda: False)  # a CPU with avx512_bf16 runs --dtype bfloat16
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    args = ["upscale", str(tmp_path / "x.png"), "-o", str(tmp_path / "o"), "--model", str(tiny_checkpoint)]
    for dtype in ("float16", "bfloat16"):
        assert main(args + ["--device", "cpu", "--dtype", dtype]) == 2
        err = capsys.readouterr().err
        assert f"--dtype {dtype} needs a GPU (--device cuda); on the CPU keep --dtype float32" in err
        assert "model.float()" not in err
    assert not (tmp_path / "o").exists()


def test_eval_without_the_train_extra_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    # sys.modules[name] = None is how Python spells "not installed" to both import and find_spec.
    monkeypatch.setitem(sys.modules, "datasets", None)
    (tmp_path / "Set5").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "Set5" / "a.png")
    assert main(["eval", "--model", "bicubic", "--benchmarks", "Set5", "--data-dir", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        "error: evaluation needs datasets: pip install 'bsr-hub[train]' (from a clone: pip install -e '.[train]')"
    ]
    assert captured.out == ""


def test_train_without_the_train_extra_stops_at_start_naming_it(monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_script", Path(__file__).resolve().parents[1] / "train.py")
    train_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_script)
    monkeypatch.setitem(sys.modules, "accelerate", None)
    with pytest.raises(SystemExit) as stop:
        train_script.main(["--max_steps", "1"])
    assert str(stop.value) == ("error: train.py needs accelerate: pip install 'bsr-hub[train]' "
                               "(from a clone: pip install -e '.[train]')")
