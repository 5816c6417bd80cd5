"""`bsr-hub space export`: the folder installs into a fresh environment the way a Space does, and serves.

Offline, the fresh environment sees this test environment's packages (torch, gradio, ...) through a .pth file,
and pip installs the folder's wheel with --no-deps --no-index: everything else is what a Space does
(`pip install -r requirements.txt` inside the folder, then `python app.py` with GRADIO_SERVER_NAME/PORT set).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tiny_config
from PIL import Image

gr = pytest.importorskip("gradio")
pytest.importorskip("hatchling", reason="building the wheel needs hatchling (in the test extra)")
from gradio_client import Client, handle_file

from bsr_hub import BSRModel, bundled_checkpoints
from bsr_hub.commands.main import main
from bsr_hub.core.examples import example_images

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


def front_matter(readme: Path) -> dict:
    return yaml.safe_load(readme.read_text().split("---")[1])


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("space") / "my-space"
    assert main(["space", "export", str(folder)]) == 0
    return folder


def test_the_folder_holds_what_a_space_needs(space):
    wheels = list(space.glob("bsr_hub-*-py3-none-any.whl"))
    assert len(wheels) == 1
    requirements = (space / "requirements.txt").read_text().splitlines()
    lines = [line for line in requirements if line and not line.startswith("#")]
    assert lines == ["--extra-index-url https://download.pytorch.org/whl/cpu", f"./{wheels[0].name}[demo]"]
    front = front_matter(space / "README.md")
    assert front["sdk"] == "gradio" and front["sdk_version"] == gr.__version__
    assert front["app_file"] == "app.py" and (space / "app.py").is_file()
    assert front["models"] == []  # the bundled checkpoints have no Hub repo
    served = sorted(p.name for p in (space / "checkpoints").iterdir())
    assert served == sorted(bundled_checkpoints())
    for name in served:
        assert {"config.json", "model.safetensors"} <= {p.name for p in (space / "checkpoints" / name).iterdir()}


@pytest.mark.parametrize("recipe", [
    "scale: 3\noutput:\n  dir: out\n  push_to_hub: true\n  hub_model_id: me/my-bsr-x3\n",
    "scale: 3\npush_to_hub: true\nhub_model_id: me/my-bsr-x3\n",  # as bsr_hub 0.1 wrote it, flat
])
def test_models_front_matter_lists_a_pushed_checkpoints_hub_id(space, tmp_path, recipe):
    pushed = tmp_path / "my-bsr-x3"
    BSRModel(tiny_config(scale=3)).save_pretrained(pushed)
    (pushed / "training_config.yaml").write_text(recipe)
    local = tmp_path / "local-x2"
    BSRModel(tiny_config(scale=2)).save_pretrained(local)
    out = tmp_path / "space2"
    wheel = next(space.glob("*.whl"))
    assert main(["space", "export", str(out), "--model", str(pushed), "--model", str(local), "--wheel", str(wheel)]) == 0
    assert front_matter(out / "README.md")["models"] == ["me/my-bsr-x3"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["local-x2", "my-bsr-x3"]


def test_a_non_empty_folder_is_not_overwritten_without_asking(space, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["space", "export", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["space", "export", str(tmp_path), "--overwrite", "--wheel", str(next(space.glob("*.whl")))]) == 0
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "app.py").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_installed_like_a_space_it_serves_the_bundled_model(space, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # Offline stand-in for the index: this environment's packages, after the venv's own (where the wheel goes).
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "test-env-packages.pth").write_text("\n".join(sorted(ours)) + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index", "--no-deps", "-q",
         "-r", "requirements.txt"],
        cwd=space, capture_output=True, text=True,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    where = subprocess.run([python, "-c", "import bsr_hub; print(bsr_hub.__file__)"], cwd=space,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(venv), f"bsr_hub imported from {where}, not from the installed wheel"

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BSR_DEMO_")}
    env.update(GRADIO_SERVER_NAME="0.0.0.0", GRADIO_SERVER_PORT=str(port), HF_HUB_OFFLINE="1",
               GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH="")
    log_path = tmp_path / "app.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([python, "app.py"], cwd=space, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(url, timeout=2).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"app.py did not serve {url}: {log_path.read_text()[-3000:]}")
                    time.sleep(0.5)
            photo = example_images()[2]  # chelsea.png, a real photo
            png, _, info = Client(url, verbose=False).predict(handle_file(str(photo)), api_name="/upscale")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    name = "bsr-lite-x2-robust"  # issue 24 (2): an upload is a photo of unknown origin, the robust model its default
    assert name in info
    with Image.open(photo) as img, Image.open(png) as out:
        assert out.format == "PNG"
        want = BSRModel.from_pretrained(name).upscale(img.convert("RGB"))
        np.testing.assert_array_equal(np.asarray(out.convert("RGB")), np.asarray(want))


def test_overwrite_replaces_only_what_an_export_wrote(space, tmp_path, capsys):
    """Issue 23 (3): --overwrite deleted a training folder's checkpoints/ and, with --model DIR, that model's own
    card; --wheel took any file."""
    wheel = str(next(space.glob("*.whl")))
    run = tmp_path / "run"
    (run / "checkpoints" / "step_10").mkdir(parents=True)
    (run / "checkpoints" / "step_10" / "trainer.json").write_text("{}")
    assert main(["space", "export", str(run), "--overwrite", "--wheel", wheel]) == 2
    assert "holds checkpoints, which no Space export wrote there" in capsys.readouterr().err
    assert (run / "checkpoints" / "step_10" / "trainer.json").is_file() and not (run / "app.py").exists()

    model = tmp_path / "my-model"
    BSRModel(tiny_config(scale=2)).save_pretrained(model)
    card = (model / "README.md").read_text()
    assert main(["space", "export", str(model), "--model", str(model), "--overwrite", "--wheel", wheel]) == 2
    assert "is inside the Space folder" in capsys.readouterr().err
    assert (model / "README.md").read_text() == card

    fake, other = tmp_path / "bsr_hub-0-py3-none-any.whl", tmp_path / "hostname"  # as /etc/hostname was taken
    fake.write_bytes(b"not a zip")
    other.write_text("box\n")
    for bad, message in ((str(other), "is not a bsr_hub wheel"), (str(fake), "is not a wheel")):
        assert main(["space", "export", str(tmp_path / "s"), "--wheel", bad]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()

    out = tmp_path / "space"  # an export, then one over it: the second replaces the first's files, keeps others
    assert main(["space", "export", str(out), "--wheel", wheel]) == 0
    (out / "notes.txt").write_text("mine")
    (out / "checkpoints" / "stray.txt").write_text("inside a folder the export wrote: replaced with it")
    assert main(["space", "export", str(out), "--overwrite", "--wheel", wheel, "--model", "bsr-tiny-x2"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["bsr-tiny-x2"]
    assert not list(tmp_path.glob(".space.export-*"))  # the staging folder is gone


def test_a_failed_export_leaves_the_folder_as_it_was(space, tmp_path, monkeypatch):
    """Issue 23 (3): SIGINT during the wheel build left the folder empty, the old Space gone."""
    from bsr_hub.demo import space as space_module

    out = tmp_path / "space"
    assert main(["space", "export", str(out), "--wheel", str(next(space.glob("*.whl")))]) == 0
    before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def interrupted(dest):
        (Path(dest) / "bsr_hub-0.0.0-py3-none-any.whl").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(space_module, "build_wheel", interrupted)
    with pytest.raises(KeyboardInterrupt):
        space_module.export_space(out, overwrite=True)
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not list(tmp_path.glob(".space.export-*"))
