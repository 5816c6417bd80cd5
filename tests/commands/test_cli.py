"""The bsr-hub command on real files: a folder with good, non-image and truncated files."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bsr_hub.commands.main import main


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(root / "a.png")
    Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / "sub" / "b.jpg")
    (root / "notes.txt").write_text("not an image")
    good = root / "a.png"
    (root / "truncated.png").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (root / ".hidden").write_text("ignored")
    return root


def test_upscale_folder_reports_bad_files_and_fails(mixed_folder, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    status = main(["upscale", str(mixed_folder), "-o", str(out), "--model", str(tiny_checkpoint), "-q"])
    err = capsys.readouterr().err
    assert status == 1
    assert Image.open(out / "a.png").size == (24, 20)
    assert Image.open(out / "sub" / "b.png").size == (16, 16) and Image.open(out / "sub" / "b.png").mode == "L"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == ["a.png", "sub/b.png"]
    failures = [line for line in err.splitlines() if line.startswith("failed")]
    assert len(failures) == 2
    assert any("notes.txt: not an image file" in line for line in failures)
    assert any("truncated.png" in line for line in failures)
    assert "2 upscaled" in err and "2 failed" in err


def test_upscale_all_good_exits_zero_and_keeps_existing_outputs(mixed_folder, tiny_checkpoint, tmp_path, capsys):
    (mixed_folder / "notes.txt").unlink()
    (mixed_folder / "truncated.png").unlink()
    out = tmp_path / "out"
    args = ["upscale", str(mixed_folder), "-o", str(out), "--model", str(tiny_checkpoint), "-q"]
    assert main(args) == 0
    before = (out / "a.png").read_bytes()
    (out / "a.png").write_bytes(b"user's own file")
    assert main(args) == 0
    assert (out / "a.png").read_bytes() == b"user's own file"  # not replaced without --overwrite
    assert "exists (pass --overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert (out / "a.png").read_bytes() == before


def test_upscale_never_overwrites_an_input(tmp_path, tiny_checkpoint, capsys):
    src = tmp_path / "x.png"
    Image.new("RGB", (4, 4)).save(src)
    original = src.read_bytes()
    assert main(["upscale", str(src), "-o", str(tmp_path), "--model", str(tiny_checkpoint), "-q", "--overwrite"]) == 1
    assert src.read_bytes() == original
    assert "would overwrite an input" in capsys.readouterr().err


def test_upscale_into_its_own_input_folder_says_so(tmp_path, tiny_checkpoint, capsys):
    """Issue 23 (12): `bsr-hub upscale d -o d` said "no input files"."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (4, 4)).save(folder / "x.png")
    for output in (folder, tmp_path / "photos" / "."):
        assert main(["upscale", str(folder), "-o", str(output), "--model", str(tiny_checkpoint), "-q"]) == 2
        assert "the output folder is the input folder" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["x.png"]


def test_missing_model_and_cpu_half_precision_are_clear_errors(tmp_path, tiny_checkpoint, capsys):
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    assert main(["upscale", str(tmp_path / "x.png"), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "none")]) == 2
    assert "no such checkpoint folder" in capsys.readouterr().err
    args = ["upscale", str(tmp_path / "x.png"), "-o", str(tmp_path / "o"), "--model", str(tiny_checkpoint)]
    assert main(args + ["--device", "cpu", "--dtype", "float16"]) == 2
    assert "on the CPU" in capsys.readouterr().err


def test_info_json(tiny_checkpoint, capsys):
    assert main(["info", str(tiny_checkpoint), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["scale"] == 2 and info["conv_layers"] > 0 and info["parameters"] > 0
    assert main(["info", "bsr-base", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["preset"] == "bsr-base" and info["conv_layers"] == 197


def test_console_script_is_installed(tiny_checkpoint, tmp_path):
    exe = shutil.which("bsr-hub") or str(Path(sys.executable).parent / "bsr-hub")
    run = subprocess.run([exe, "info", str(tiny_checkpoint)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "conv layers" in run.stdout


def test_inputs_with_the_same_output_name_fail_instead_of_being_skipped(tmp_path, tiny_checkpoint, capsys):
    # photo.jpg and photo.png both map to photo.png: the second must not be reported as "already there".
    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (5, 5), (200, 10, 10)).save(src / "photo.png")
    Image.new("RGB", (7, 7), (10, 200, 10)).save(src / "photo.jpg")
    out = tmp_path / "out"
    assert main(["upscale", str(src), "-o", str(out), "--model", str(tiny_checkpoint), "-q"]) == 1
    err = capsys.readouterr().err
    assert "also the output of" in err and "1 upscaled" in err and "1 failed" in err
    assert sorted(p.name for p in out.iterdir()) == ["photo.png"]


@pytest.mark.parametrize("fmt", ["jpg", "webp"])
def test_sixteen_bit_input_to_an_eight_bit_format_is_scaled_not_clipped(tmp_path, tiny_checkpoint, fmt):
    ramp = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "r.png")
    out = tmp_path / "out"
    assert main(["upscale", str(tmp_path / "r.png"), "-o", str(out), "--model", str(tiny_checkpoint), "-q",
                 "--format", fmt]) == 0
    assert main(["upscale", str(tmp_path / "r.png"), "-o", str(out), "--model", str(tiny_checkpoint), "-q"]) == 0
    reference = np.asarray(Image.open(out / "r.png")).astype(np.float64) / 257.0  # the 16-bit result, in 8 bits
    values = np.asarray(Image.open(out / f"r.{fmt}").convert("L")).astype(np.float64)
    assert np.abs(values - reference).mean() < 8  # JPEG noise, but not clipped to white (Pillow's convert of I;16)


def test_cuda_device_without_cuda_is_a_clear_error(tmp_path, tiny_checkpoint, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    args = ["upscale", str(tmp_path / "x.png"), "-o", str(tmp_path / "o"), "--model", str(tiny_checkpoint)]
    assert main(args + ["--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
