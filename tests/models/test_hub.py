import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file

from bsr_hub import BSRModel, CheckpointError, ConfigError, bundled_checkpoints, list_presets
from bsr_hub.models import hub


def assert_same_weights(a: BSRModel, b: BSRModel) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k  # atol = 0


@pytest.mark.parametrize("preset", list_presets())
def test_save_load_is_exact(tmp_path, preset):
    torch.manual_seed(0)
    model = BSRModel.from_preset(preset, scale=4)
    model.save_pretrained(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"config.json", "model.safetensors", "README.md"}
    loaded = BSRModel.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    assert_same_weights(model, loaded)
    assert not loaded.training
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(model.eval()(x), loaded(x))


def test_channels_last_model_saves(tmp_path, tiny_model):
    tiny_model.to(memory_format=torch.channels_last)
    tiny_model.save_pretrained(tmp_path / "m")
    assert_same_weights(tiny_model, BSRModel.from_pretrained(tmp_path / "m"))


def test_model_card_metadata(tiny_checkpoint):
    card = ModelCard.load(tiny_checkpoint / "README.md")
    assert card.data.library_name == "bsr-hub"
    assert card.data.pipeline_tag == "image-to-image"
    assert "super-resolution" in card.data.tags
    assert card.data.license == "apache-2.0"
    assert "BSRModel.from_pretrained" in card.text and "@inproceedings{kong2020bsr" in card.text
    assert "not recorded" in card.text  # no training information outside a training run


def _rewrite_weights(folder: Path, edit) -> None:
    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, folder / "model.safetensors")


def test_missing_weight_is_an_error_naming_it(tiny_checkpoint):
    _rewrite_weights(tiny_checkpoint, lambda s: s.pop("tail.bias"))
    with pytest.raises(CheckpointError, match=r"missing weights: tail\.bias"):
        BSRModel.from_pretrained(tiny_checkpoint)


def test_unexpected_weight_is_an_error_naming_it(tiny_checkpoint):
    _rewrite_weights(tiny_checkpoint, lambda s: s.update({"extra.weight": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"unexpected weights: extra\.weight"):
        BSRModel.from_pretrained(tiny_checkpoint)


def test_shape_mismatch_is_an_error_naming_it(tiny_checkpoint):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    config["scale"] = 3  # weights were made for x2: the upsampler conv has the wrong shape
    (tiny_checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"shape mismatches: upsampler\.0\.bias .*upsampler\.0\.weight \(checkpoint \(32, 8, 3, 3\), model \(72, 8, 3, 3\)\)"):
        BSRModel.from_pretrained(tiny_checkpoint)


def test_unknown_config_field_and_wrong_scale_are_errors(tiny_checkpoint):
    path = tiny_checkpoint / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps(config | {"num_feature": 8}))
    with pytest.raises(ConfigError, match="num_feature"):
        BSRModel.from_pretrained(tiny_checkpoint)
    path.write_text(json.dumps(config | {"scale": 8}))
    with pytest.raises(ConfigError, match="scale must be one of"):
        BSRModel.from_pretrained(tiny_checkpoint)


def test_corrupt_or_missing_weights_are_clear_errors(tiny_checkpoint):
    weights = tiny_checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or not a safetensors file"):
        BSRModel.from_pretrained(tiny_checkpoint)
    weights.unlink()
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        BSRModel.from_pretrained(tiny_checkpoint)


def test_unknown_names_and_paths_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        BSRModel.from_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        BSRModel.from_pretrained("./nope")
    # Offline (conftest sets HF_HUB_OFFLINE=1): a bare name is tried on the Hub and fails fast, with the reason.
    with pytest.raises(CheckpointError, match="not a local folder or a bundled checkpoint"):
        BSRModel.from_pretrained("bsr-nonexistent-x2")


def test_bundled_checkpoint_loads_by_name(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setattr(hub, "BUNDLED_DIR", tmp_path / "checkpoints")
    assert bundled_checkpoints() == {}
    tiny_model.save_pretrained(tmp_path / "checkpoints" / "bsr-test-x2")
    assert list(bundled_checkpoints()) == ["bsr-test-x2"]
    assert_same_weights(tiny_model, BSRModel.from_pretrained("bsr-test-x2"))


RECORDS = ("eval_results.json", "training.json", "training_config.yaml", "robustness_results.json", "training_curve.png")


def test_carried_records_replace_a_planted_link_instead_of_writing_through_it(tmp_path):
    """Issue 23: a record carried into a `save_pretrained` folder is written beside its name and renamed; a link
    planted there under a record's name (a shared folder) must not make the copy overwrite what it points at."""
    victim = tmp_path / "victim.txt"
    victim.write_text("not yours")
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "training.json").symlink_to(victim)
    BSRModel.from_pretrained("bsr-tiny-x2").save_pretrained(copy)
    assert victim.read_text() == "not yours"
    source = bundled_checkpoints()["bsr-tiny-x2"] / "training.json"
    assert not (copy / "training.json").is_symlink() and (copy / "training.json").read_bytes() == source.read_bytes()


def test_a_loaded_checkpoint_saved_unchanged_keeps_its_results_and_lineage(tmp_path):
    """Issue 20: the README's own snippet, from_pretrained(bundled).save_pretrained(dir), wrote "Not evaluated yet"."""
    name = "bsr-tiny-x2"
    source = bundled_checkpoints()[name]
    model = BSRModel.from_pretrained(name).to(memory_format=torch.channels_last)  # same values, other layout
    model.save_pretrained(tmp_path / "copy")
    copy = tmp_path / "copy"
    for record in RECORDS:
        assert (copy / record).read_bytes() == (source / record).read_bytes(), record
    card = ModelCard.load(copy / "README.md")
    theirs = ModelCard.load(source / "README.md")
    assert card.data.model_name == name and card.data.eval_results == theirs.data.eval_results
    assert "Not evaluated yet" not in card.text and "### Lineage" in card.text and "total training" in card.text
    assert 'from_pretrained("path/to/copy")' in card.text and str(tmp_path) not in card.text
    # Pushed, the copy is named after its repository: tests/models/test_hub_roundtrip.py, through the test Hub.


@pytest.mark.parametrize("change", ["fine-tuned", "half"])
def test_a_loaded_checkpoint_saved_changed_does_not_claim_its_results(tmp_path, change):
    model = BSRModel.from_pretrained("bsr-tiny-x2")
    if change == "fine-tuned":
        with torch.no_grad():
            model.tail.bias.add_(1e-3)
    else:
        model.half()
    model.save_pretrained(tmp_path / "mine")
    assert {p.name for p in (tmp_path / "mine").iterdir()} == {"config.json", "model.safetensors", "README.md"}
    card = ModelCard.load(tmp_path / "mine" / "README.md")
    assert card.data.eval_results is None and "Not evaluated yet" in card.text
    assert card.text.count("bsr-tiny-x2") == 0 and "# mine" in card.text  # neither its name nor its lineage


def test_card_template_ships_in_the_wheel(tmp_path):
    """save_pretrained must find model_card.md from an installed wheel, not only from a source checkout."""
    pytest.importorskip("hatchling", reason="building the wheel offline needs hatchling installed")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO_ROOT)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("bsr_hub-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert "bsr_hub/model_card.md" in zf.namelist()
        zf.extractall(tmp_path / "site")
    script = (
        "import bsr_hub, sys; from bsr_hub import BSRConfig, BSRModel;"
        "assert bsr_hub.__file__.startswith(sys.argv[1]), bsr_hub.__file__;"
        "BSRModel(BSRConfig(num_features=4, num_groups=1, num_blocks=1)).save_pretrained(sys.argv[2])"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "site"), str(tmp_path / "saved")],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path / "site"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "# saved" in (tmp_path / "saved" / "README.md").read_text()  # named after its folder



def test_saved_files_get_ordinary_permissions(tiny_checkpoint):
    import os

    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "config.json", "README.md"):
        assert (tiny_checkpoint / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
