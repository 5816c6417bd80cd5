import json

import pytest

from bsr_hub import BSRConfig, ConfigError, list_presets


def test_presets_are_listed_and_build():
    assert {"bsr-base", "bsr-lite"} <= set(list_presets())
    for name in list_presets():
        config = BSRConfig.from_preset(name, scale=3)
        assert config.preset == name and config.scale == 3


def test_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match="bsr-lite"):
        BSRConfig.from_preset("bsr-huge")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("scale", 5, "scale must be one of"),
        ("scale", 1, "scale must be one of"),
        ("scale", True, "scale must be one of"),
        ("scale", 2.0, "scale must be one of"),
        ("num_features", 0, "num_features must be an integer from 1 to 1024"),
        ("num_features", 20000, "num_features must be an integer from 1 to 1024"),
        ("num_groups", -1, "num_groups must be an integer from 1 to"),
        ("num_blocks", 1.5, "num_blocks must be an integer from 1 to"),
        ("res_scale", 0, "res_scale must be a positive number"),
        ("attention_kernel_size", 4, "odd"),
        ("rgb_mean", (0.5, 0.5), "rgb_mean has 2 values"),
        ("rgb_mean", "abc", "rgb_mean must be a list of numbers"),
        ("use_attention", "no", "use_attention must be true or false"),
        ("use_group_forwarding", 1, "use_group_forwarding must be true or false"),
    ],
)
def test_invalid_values_say_what_is_wrong(field, value, message):
    with pytest.raises(ConfigError, match=message):
        BSRConfig(**{field: value})


def test_unknown_field_in_config_json_is_an_error_naming_it(tmp_path):
    data = BSRConfig().to_dict() | {"num_featurs": 32}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="num_featurs"):
        BSRConfig.from_json_file(path)


def test_unreadable_config_json_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="config.json"):
        BSRConfig.from_json_file(path)


def test_json_round_trip_is_exact():
    config = BSRConfig.from_preset("bsr-lite", scale=4, res_scale=0.5, use_attention=False)
    back = BSRConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert back == config
    assert isinstance(back.rgb_mean, tuple)


def test_a_config_huge_in_total_is_refused_before_anything_is_built(tmp_path):
    """Issue 23 (10): 1024 features x 256 groups x 256 blocks passed every per-field limit and spent a minute and
    1.2 GB building the skeleton before the weights were refused."""
    import json

    from bsr_hub import BSRModel
    from bsr_hub.models.configuration import MAX_BODY_WEIGHTS

    (tmp_path / "config.json").write_text(json.dumps({"scale": 2, "num_features": 1024, "num_groups": 256,
                                                      "num_blocks": 256}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"256 groups x 256 blocks x 1024 features is about 1237.0 G weights"):
        BSRModel.from_pretrained(tmp_path)  # refused from config.json's numbers: nothing is built
    base = BSRConfig.from_preset("bsr-base")
    assert base.num_groups * base.num_blocks * 18 * base.num_features**2 < MAX_BODY_WEIGHTS / 10
