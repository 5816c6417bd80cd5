"""The README's code blocks, run as a reader would paste them (in a scratch folder, on real photos)."""

from __future__ import annotations

import os
import re
import shlex
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
    from bsr_hub.examples import example_images

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


@pytest.mark.parametrize("marker", ["onnxruntime as ort", "cv2.dnn.readNetFromONNX"], ids=["onnxruntime", "opencv"])
def test_onnx_runtime_blocks_run(exported, marker):
    if marker.startswith("cv2"):
        pytest.importorskip("cv2", reason="opencv is not installed (pip install opencv-python-headless)")
    out = exported / "photo_x2.png"
    out.unlink(missing_ok=True)
    run = run_python(block("python", marker), exported)
    assert run.returncode == 0, run.stderr
    with Image.open(exported / "photo.png") as src, Image.open(out) as result:
        assert result.size == (src.width * 2, src.height * 2) and result.mode == "RGB"
