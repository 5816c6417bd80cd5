"""The README's code blocks, run as a reader would paste them (in a scratch folder, on real photos)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, SHARED_DATA
from PIL import Image

README = (REPO_ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, re.DOTALL)
BIN = Path(sys.executable).parent
# A real photo, with a fallback that is one too (shipped with the package) when ../shared is absent.
PHOTO = SHARED_DATA / "reference_LR" / "RCAN_Set5_x2" / "bird_LRBI_x2.png"
if not PHOTO.is_file():
    from bsr_hub.core.examples import example_images

    PHOTO = example_images()[2]


def block(language: str, marker: str) -> str:
    found = [code for lang, code in BLOCKS if lang == language and marker in code]
    assert len(found) == 1, f"expected one {language} block containing {marker!r} in README.md, found {len(found)}"
    return found[0]


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_python_api_block_runs(tmp_path):
    run = run_python(block("python", "from bsr_hub import BSRModel"), tmp_path)
    assert run.returncode == 0, run.stderr
    assert "bsr-lite" in run.stdout  # print(list_presets())
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in (tmp_path / "my-bsr").iterdir()}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """The README's export line, run as written after its install step (already done in this environment)."""
    pytest.importorskip("onnxruntime", reason="the export extra is not installed")
    folder = tmp_path_factory.mktemp("readme-onnx")
    line = block("bash", "bsr-hub export").strip()
    command = line.split("&&", 1)[1].strip()  # drop `pip install -e ".[export]"`: this checkout is installed
    argv = shlex.split(command)
    run = subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=folder, capture_output=True, text=True,
                         env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=600)
    assert run.returncode == 0, run.stderr
    Image.open(PHOTO).convert("RGB").save(folder / "photo.png")
    return folder


@pytest.mark.parametrize("tile", [256, 48], ids=["one-tile", "tiles"])
@pytest.mark.parametrize("marker", ["onnxruntime as ort", "cv2.dnn.readNetFromONNX"], ids=["onnxruntime", "opencv"])
def test_onnx_runtime_blocks_run_in_tiles_and_agree_with_pytorch(exported, marker, tile):
    """The blocks as written (the OpenCV one after the `tiled` it borrows from the block above), and with tiles
    small enough that the photo is cut into several: within one grey level of PyTorch's one pass."""
    import numpy as np

    from bsr_hub import BSRModel

    if marker.startswith("cv2"):
        pytest.importorskip("cv2", reason="opencv is not installed (pip install opencv-python-headless)")
    helper = block("python", "onnxruntime as ort").split("session =")[0]
    code = block("python", marker) if marker.startswith("onnx") else helper + block("python", marker)
    assert code.count("scale=2)") == 1
    out = exported / "photo_x2.png"
    out.unlink(missing_ok=True)
    run = run_python(code.replace("scale=2)", f"scale=2, tile={tile})"), exported)
    assert run.returncode == 0, run.stderr
    with Image.open(exported / "photo.png") as src, Image.open(out) as result:
        assert result.size == (src.width * 2, src.height * 2) and result.mode == "RGB"
        expected = BSRModel.from_pretrained("bsr-lite-x2").upscale(src, tile=None, backend="eager")
        difference = np.abs(np.asarray(result).astype(int) - np.asarray(expected).astype(int))
    assert difference.max() <= 1, f"{marker} at tile={tile}: {difference.max()} grey levels from PyTorch"


# ---------------------------------------------------------------------------------------------- the Command line block


def cli_lines() -> list[str]:
    """The commands of the README's "Command line" block: continuation lines joined, comments dropped."""
    code = block("bash", "bsr-hub upscale photos/").replace("\\\n", "")
    return [line.split("#", 1)[0].strip() for line in code.splitlines() if line.strip()]


def _crop(index: int, size: tuple[int, int], at: tuple[int, int] = (60, 40)) -> Image.Image:
    from bsr_hub.core.examples import example_images

    with Image.open(example_images()[index]) as img:
        return img.convert("RGB").crop((*at, at[0] + size[0], at[1] + size[1]))


@pytest.fixture(scope="module")
def cli_workspace(tmp_path_factory) -> Path:
    """Small stand-ins for every path the block names, laid out as it expects: the commands run in `work/`,
    so `../shared/data/...` is a tiny copy of the shared data's layout, not the real thing."""
    root = tmp_path_factory.mktemp("readme-cli")
    work = root / "work"
    (work / "photos" / "sub").mkdir(parents=True)
    _crop(0, (20, 16)).save(work / "photos" / "a.png")
    _crop(1, (18, 14)).save(work / "photos" / "sub" / "b.png")  # the folder is read recursively
    _crop(2, (16, 12)).save(work / "more.jpg")
    _crop(3, (40, 32)).save(work / "big.png")
    (work / "HR").mkdir()
    _crop(4, (24, 30)).save(work / "HR" / "hr.png")
    for i, name in enumerate(["Set5", "Set14", "BSD100"]):
        (root / "shared" / "data" / "benchmarks" / name).mkdir(parents=True)
        _crop(i, (32, 24)).save(root / "shared" / "data" / "benchmarks" / name / "img.png")
    (root / "shared" / "data" / "train").mkdir(parents=True)
    for i in range(5):
        _crop(i, (128, 112), at=(20, 20)).save(root / "shared" / "data" / "train" / f"{i}.png")
    return work


def run_cli(line: str, cwd: Path) -> subprocess.CompletedProcess:
    """One line as a shell runs it (environment prefixes, `$(which bsr-hub)`), with the venv active."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


@pytest.mark.slow
def test_command_line_block_runs(cli_workspace):
    import torch

    from bsr_hub.commands.demo import cmd_demo
    from bsr_hub.commands.main import build_parser

    work = cli_workspace
    lines = cli_lines()
    commands = [re.search(r"bsr-hub\S*\s+(\S+)", line).group(1) for line in lines]
    assert sorted(set(commands)) == ["degrade", "demo", "eval", "info", "pic-stats", "upscale"], commands
    for line, command in zip(lines, commands):
        if command == "upscale":
            shutil.rmtree(work / "out", ignore_errors=True)  # each line writes its own outputs, none skipped
            if "--device cuda" in line and not torch.cuda.is_available():
                line = line.replace("--device cuda", "--device cpu")  # the rest of the line runs here as written
            run = run_cli(line, work)
            assert run.returncode == 0, (line, run.stderr)
            outputs = {p.relative_to(work / "out").as_posix(): _size(p) for p in (work / "out").rglob("*.png")}
            expected = {"big.png": (80, 64)} if "big.png" in line else {"a.png": (40, 32), "sub/b.png": (36, 28)}
            if "more.jpg" in line:
                expected["more.png"] = (32, 24)
            assert outputs == expected, (line, outputs)  # folder structure kept
        elif command == "info":
            assert "MODEL [--json]" in line  # the placeholder, with and without the option
            run = run_cli(line.replace("MODEL [--json]", "bsr-lite-x2"), work)
            assert run.returncode == 0 and "bsr-lite" in run.stdout, run.stderr
            run = run_cli(line.replace("MODEL [--json]", "bsr-lite-x2 --json"), work)
            assert run.returncode == 0, run.stderr
            assert json.loads(run.stdout)["scale"] == 2
        elif command == "degrade":
            run = run_cli(line, work)
            assert run.returncode == 0, run.stderr
            assert _size(work / "LR" / "hr.png") == (8, 10)  # x3
        elif command == "eval":
            run = run_cli(line.replace("--model MODEL", "--model bsr-lite-x2"), work)
            assert run.returncode == 0, run.stderr
            assert all(name in run.stdout for name in ("Set5", "Set14", "BSD100")), run.stdout
        elif command == "pic-stats":
            run = run_cli(line, work)
            assert run.returncode == 0, run.stderr
            assert _size(work / "pic.png")[0] > 100
        else:
            # The demo runs until stopped (tests/demo/test_demo.py launches it and calls its API); here its flags
            # must be the command's.
            argv = shlex.split(line.replace("[--model PATH_OR_ID ...]", "--model a --model b"))[1:]
            args = build_parser().parse_args(argv)
            assert args.func is cmd_demo and args.model == ["a", "b"]


@pytest.mark.slow
def test_model_files_and_leaderboard_block_runs(exported, cli_workspace):
    """The block that scores `bsr-hub export`'s file in ONNX Runtime and OpenCV and writes a leaderboard, run as
    written in the Command line block's workspace (`../shared/data/benchmarks` stand-ins) with that file in it."""
    pytest.importorskip("cv2", reason="opencv is not installed (pip install opencv-python-headless)")
    work = cli_workspace
    shutil.copy(exported / "bsr-lite-x2.onnx", work)
    code = block("bash", "--leaderboard").replace("\\\n", "")
    lines = [line.split("#", 1)[0].strip() for line in code.splitlines() if line.strip()]
    assert len(lines) == 3 and all(line.startswith("bsr-hub eval") for line in lines), lines
    for line in lines:
        run = run_cli(line, work)
        assert run.returncode == 0, (line, run.stderr)
        assert "Set5" in run.stdout, run.stdout
    table = (work / "leaderboard" / "leaderboard.md").read_text()
    for model in ("bsr-tiny-x2", "bsr-lite-x2", "bsr-lite-x2.onnx", "bicubic"):
        assert f"| {model} |" in table, table
    assert (work / "leaderboard" / "leaderboard.png").stat().st_size > 0
