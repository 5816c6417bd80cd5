"""Everything that takes a model takes a Hub repo id, through the real huggingface_hub client and the test Hub
(tests/hub_server.py): `bsr-hub upscale` (and again offline, from the cache, in a fresh process), `bsr-hub eval`,
the demo and an exported Space."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import yaml
from conftest import REPO_ROOT
from PIL import Image

from bsr_hub import BSRModel
from bsr_hub.commands.main import main


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (13, 11, 3), dtype=np.uint8)).save(path)
    return path


def bsr_hub_command(*args: str, **env: str) -> subprocess.CompletedProcess:
    """`bsr-hub ARGS` in a fresh process, with the test's environment (the `hub` fixture's HF_*) and `env`."""
    return subprocess.run([sys.executable, "-m", "bsr_hub.commands.main", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def test_upscale_by_repo_id_then_offline_from_the_cache_and_without_one_a_clear_error(hub, tiny_model, photo, tmp_path):
    tiny_model.push_to_hub("me/bsr-x")
    assert main(["upscale", str(photo), "-o", str(tmp_path / "online"), "--model", "me/bsr-x", "-q"]) == 0
    (online,) = (tmp_path / "online").iterdir()
    with Image.open(photo) as img:
        assert np.array_equal(np.asarray(Image.open(online)), np.asarray(tiny_model.upscale(img)))

    # A fresh process, offline, with the cache the download above filled: the same bytes, and no request at all.
    asked = len(hub.log)
    offline = bsr_hub_command("upscale", str(photo), "-o", str(tmp_path / "offline"), "--model", "me/bsr-x", "-q",
                              HF_HUB_OFFLINE="1")
    assert offline.returncode == 0, offline.stderr[-3000:]
    assert (tmp_path / "offline" / online.name).read_bytes() == online.read_bytes()
    assert len(hub.log) == asked

    # Offline with an empty cache: exit status 2, one line naming the repo and what to do.
    empty = tmp_path / "empty-home"
    failed = bsr_hub_command("upscale", str(photo), "-o", str(tmp_path / "nothing"), "--model", "me/bsr-x", "-q",
                             HF_HUB_OFFLINE="1", HF_HOME=str(empty), HF_HUB_CACHE=str(empty / "hub"))
    assert failed.returncode == 2
    (line,) = failed.stderr.strip().splitlines()
    assert line.startswith("error: 'me/bsr-x' is not a local folder") and "HF_HUB_OFFLINE=0" in line
    assert not (tmp_path / "nothing").exists() and len(hub.log) == asked


def test_eval_by_repo_id_gives_the_numbers_of_the_local_folder(hub, tiny_checkpoint, bench_dir, tmp_path):
    BSRModel.from_pretrained(tiny_checkpoint).push_to_hub("me/bsr-x")
    flags = ["--benchmarks", "Syn", "--data-dir", str(bench_dir), "--scale", "2", "-q"]
    assert main(["eval", "--model", "me/bsr-x", *flags, "--output", str(tmp_path / "hub.json")]) == 0
    assert main(["eval", "--model", str(tiny_checkpoint), *flags, "--output", str(tmp_path / "local.json")]) == 0
    from_hub, local = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("hub", "local"))
    for run in (from_hub, local):
        for result in run["results"]:
            del result["timing_s"]  # seconds, different every run
    assert from_hub["model"] == "me/bsr-x" and from_hub["results"] == local["results"] and local["results"]


def test_the_demo_offers_and_runs_a_model_by_repo_id(hub, tiny_model, photo):
    from bsr_hub.demo.models import ModelCache, discover_models
    from bsr_hub.demo.upscaling import upscale_upload

    tiny_model.push_to_hub("me/bsr-x")
    (entry,) = discover_models(["me/bsr-x"])
    assert (entry.name, entry.source, entry.scale) == ("me/bsr-x", "Hugging Face Hub", 2)
    assert entry.benchmark == "not evaluated"
    result = upscale_upload(ModelCache([entry], device="cpu"), photo, entry.label)
    with Image.open(photo) as img:
        assert np.array_equal(np.asarray(result.image), np.asarray(tiny_model.upscale(img)))


def test_a_space_exported_by_repo_id_serves_the_pushed_files(hub, tiny_model, tmp_path):
    pytest.importorskip("gradio")  # the Space pins the installed Gradio version
    tiny_model.push_to_hub("me/bsr-x")
    # The wheel is not what this test is about (tests/demo/test_space.py builds and installs a real one): any file
    # that --wheel accepts as a bsr_hub wheel spares the build.
    wheel = tmp_path / "bsr_hub-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("bsr_hub/__init__.py", "")
    out = tmp_path / "space"
    assert main(["space", "export", str(out), "--model", "me/bsr-x", "--wheel", str(wheel)]) == 0
    head = hub.store.resolve("me/bsr-x", "main")
    for name in ("config.json", "model.safetensors", "README.md"):
        assert (out / "checkpoints" / "bsr-x" / name).read_bytes() == hub.store.read("me/bsr-x", head, name), name
    front = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    assert front["models"] == ["me/bsr-x"]
