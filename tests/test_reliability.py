"""Misuse and hostile input that once gave a crash, a silent wrong answer or a needless allocation (issue 12).

Each case here failed on the code before its fix; they stay together so the list stays covered.
"""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from bsr_hub import BSRModel, CheckpointError, ConfigError
from bsr_hub import modeling
from bsr_hub.cli import main as cli_main


def test_nan_or_infinite_weights_are_refused_by_name(tiny_checkpoint):
    weights = tiny_checkpoint / "model.safetensors"
    state = load_file(weights)
    state["tail.weight"][0, 0, 0, 0] = float("nan")
    state["head.bias"][0] = float("inf")
    save_file(state, weights)
    with pytest.raises(CheckpointError, match=r"NaN or infinite values in head\.bias, tail\.weight"):
        BSRModel.from_pretrained(tiny_checkpoint)


def test_an_oversized_config_fails_on_the_weights_header_before_anything_is_allocated(tiny_checkpoint, monkeypatch):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    config.update(num_features=512, num_groups=16, num_blocks=5)  # 1.5 GB of float32 weights, next to tiny ones
    (tiny_checkpoint / "config.json").write_text(json.dumps(config))
    built_for_real = []
    original = modeling.BSRModel.__init__

    def spy(self, cfg):
        if torch.get_default_device().type != "meta":
            built_for_real.append(cfg.num_features)
        original(self, cfg)

    monkeypatch.setattr(modeling.BSRModel, "__init__", spy)
    with pytest.raises(CheckpointError, match=r"does not match the architecture in config\.json; .*shape mismatches"):
        BSRModel.from_pretrained(tiny_checkpoint)
    assert built_for_real == []  # the check read the safetensors header only


@pytest.mark.parametrize("field, value, message", [
    ("num_features", 20000, "num_features must be an integer from 1 to 1024"),
    ("rgb_mean", "abc", "rgb_mean must be a list of numbers"),
    ("use_attention", "no", "use_attention must be true or false"),
])
def test_bad_config_values_name_the_file_and_the_field(tiny_checkpoint, field, value, message):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    config[field] = value
    (tiny_checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=message) as err:
        BSRModel.from_pretrained(tiny_checkpoint)
    assert "config.json" in str(err.value)


def test_a_local_folder_shadowing_a_bundled_name_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bsr-lite-x2").mkdir()
    with pytest.raises(CheckpointError, match="shadows the bundled checkpoint 'bsr-lite-x2'"):
        BSRModel.from_pretrained("bsr-lite-x2")


@pytest.mark.parametrize("device, message", [
    ("foo", "--device foo: not a device name"),
    ("mps", "--device mps: no MPS device is available here"),
])
def test_unusable_devices_are_clear_cli_errors(tmp_path, tiny_checkpoint, capsys, device, message):
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has an MPS device")
    src = tmp_path / "in.png"
    from PIL import Image

    Image.new("RGB", (4, 4)).save(src)
    status = cli_main(["upscale", str(src), "-o", str(tmp_path / "out"), "--model", str(tiny_checkpoint),
                       "--device", device])
    err = capsys.readouterr().err
    assert status == 2 and message in err and "Traceback" not in err
