"""The training config: typed sections (model, data, rfs, loss, optim, validation, output) addressed by nested YAML
and dotted flags; the bsr_hub 0.1 flat spelling still works and says the new one; one unknown-setting check."""

from __future__ import annotations

import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from conftest import REPO_ROOT

from bsr_hub.commands.train import load_train_config, train_parser
from bsr_hub.training.config import (
    FLAT_NAMES,
    SECTIONS,
    TrainConfig,
    config_from_dict,
    config_to_yaml,
    resolve_config,
)

RECIPES = sorted((REPO_ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_uses_the_sections(recipe):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no FutureWarning: nothing in the old flat spelling
        cfg = resolve_config(recipe, {})
    loaded = yaml.safe_load(recipe.read_text())
    assert set(loaded) - set(SECTIONS) <= {"scale", "seed"}, "run-wide values and sections only"
    assert cfg.rfs.scale == cfg.data.scale == cfg.scale


def test_a_flat_recipe_still_works_and_names_each_new_spelling(tmp_path):
    flat = tmp_path / "flat.yaml"
    flat.write_text("preset: bsr-tiny\nscale: 3\nsampler: uniform\nbatch_size: 8\nmax_steps: 7\n"
                    "output_dir: out/x\nvalidation_dir: bench/Set5\n")
    nested = tmp_path / "nested.yaml"
    nested.write_text("scale: 3\nmodel: {preset: bsr-tiny}\nrfs: {mode: uniform, batch_size: 8}\n"
                      "optim: {max_steps: 7}\noutput: {dir: out/x}\nvalidation: {dir: bench/Set5}\n")
    with pytest.warns(FutureWarning) as caught:
        old = resolve_config(flat, {})
    note = str(caught[0].message)
    for rename in ("preset -> model.preset", "sampler -> rfs.mode", "max_steps -> optim.max_steps",
                   "output_dir -> output.dir", "validation_dir -> validation.dir"):
        assert rename in note
    assert old == resolve_config(nested, {})
    assert (old.model.preset, old.scale, old.rfs.mode, old.rfs.scale, old.optim.max_steps) == ("bsr-tiny", 3, "uniform", 3, 7)


def test_dotted_flags_and_their_flat_aliases_set_the_same_setting():
    pairs = [
        (["--optim.max_steps", "7"], ["--max_steps", "7"]),
        (["--rfs.mode", "uniform"], ["--sampler", "uniform"]),
        (["--rfs.tau", "0.5"], ["--rfs_tau", "0.5"]),
        (["--output.dir", "x", "--output.overwrite"], ["--output_dir", "x", "--overwrite_output_dir"]),
        (["--data.split", "valid"], ["--dataset_split", "valid"]),
        (["--model.overrides", '{"use_attention": false}'], ["--model_overrides", '{"use_attention": false}']),
    ]
    default = TrainConfig()
    for dotted, flat in pairs:
        new, old = load_train_config(dotted)[0], load_train_config(flat)[0]
        assert new == old and new != default, dotted


def test_flags_parse_by_the_settings_types():
    cfg, _ = load_train_config(["--no-rfs.augment", "--optim.lr_decay_at", "0.3", "0.6", "--optim.ema_decay", "none",
                                "--rfs.edges", "0", "0.01", "--rfs.quotas", "10", "6", "--scale", "4", "--seed", "3"])
    assert cfg.rfs.augment is False and cfg.optim.lr_decay_at == [0.3, 0.6] and cfg.optim.ema_decay is None
    assert cfg.rfs.edges == (0.0, 0.01) and cfg.rfs.quotas == (10, 6)
    assert (cfg.scale, cfg.rfs.scale, cfg.data.scale, cfg.seed, cfg.rfs.seed) == (4, 4, 4, 3, 3)
    with pytest.raises(SystemExit):
        load_train_config(["--rfs.scale", "3"])  # set once, as --scale


def test_a_flag_replaces_one_setting_of_a_recipe_section_not_the_section(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  max_steps: 7\n  learning_rate: 1.0e-3\nrfs:\n  batch_size: 8\n")
    cfg, path = load_train_config(["--config", str(recipe), "--optim.max_steps", "9", "--batch_size", "4"])
    assert path == str(recipe)
    assert (cfg.optim.max_steps, cfg.optim.learning_rate, cfg.rfs.batch_size) == (9, 1e-3, 4)
    recipe.write_text("loss:\n  # l1_weight: 0.1\noptim:\n  max_steps: 7\n")  # a section left empty is no error
    assert load_train_config(["--config", str(recipe)])[0].loss == TrainConfig().loss


def test_every_setting_has_a_flag_and_round_trips_through_yaml():
    parser = train_parser()
    dests = {a.dest for a in parser._actions}
    cfg = config_from_dict({"scale": 3, "model": {"preset": "bsr-tiny"}, "data": {"degradation_mix": {}},
                            "rfs": {"tau": 0.5}, "loss": {"lp_p": 1.0}, "optim": {"lr_decay_at": [0.4]}})
    flat = cfg.flat()
    assert set(flat) <= dests
    assert not any(k.endswith((".scale", ".seed")) for k in flat)  # the sections' copies are not settings
    assert config_from_dict(yaml.safe_load(config_to_yaml(cfg))) == cfg
    for old, new in FLAT_NAMES.items():  # every old name points at a setting that exists
        assert new in flat, old


def test_help_says_what_each_setting_means():
    text = " ".join(train_parser().format_help().split())
    assert "--optim.lr_decay_at" in text and "--lr_decay_at" in text
    assert "Fractions of max_steps where the learning rate is multiplied" in text
    assert "--rfs.tau FLOAT, --rfs_tau FLOAT" in text and "Quota temper" in text
    assert "loss: The weights of the hybrid loss" in text


def test_the_sampler_and_the_loss_take_the_configs_own_sections():
    sys.path.insert(0, str(REPO_ROOT))
    import train
    from bsr_hub.data.pairs import ImagePairs
    from bsr_hub.training.losses import HybridLoss

    cfg = config_from_dict({"rfs": {"patch_size": 8, "batch_size": 4, "num_intervals": 2, "prescan_patches": 64},
                            "loss": {"l1_weight": 0.2, "lp_p": 1.0}})
    rng = np.random.default_rng(0)
    hr = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    for h in hr:
        h[:, :32] = 128  # flat and busy halves: two PIC intervals to balance
    source = ImagePairs(hr=hr, lr=[h[::2, ::2].copy() for h in hr], scale=2)
    sampler = train.build_sampler(cfg, source, SimpleNamespace(process_index=0, num_processes=1), start_batch=0)
    assert sampler.config is cfg.rfs and sampler.data_config is cfg.data
    assert sampler.batch(0)["lr"].shape == (4, 3, 8, 8)
    loss = HybridLoss(cfg.loss)
    assert loss.config is cfg.loss and (loss.l1_weight, loss.p) == (0.2, 1.0)


@pytest.mark.parametrize("values, match", [
    ({"loss": {"lp_p": 3.0}}, r"loss.lp_p must be in \(0, 2\]"),
    ({"optim": {"mixed_precision": "fp8"}}, "optim.mixed_precision must be one of"),
    ({"data": {"train_dir": "a", "dataset_name": "b"}}, "not both"),
    ({"output": {"push_to_hub": True}}, "output.hub_model_id"),
    ({"rfs": {"mode": "rfs-indexed"}}, "RFSConfig.mode must be one of"),
    ({"scale": 3, "data": {"scale": 2}}, "scale is set once"),
    ({"model": {"prest": "bsr-lite"}}, "model.*unknown setting.*prest.*known: init_from, overrides, preset"),
    ({"validation": {"steps": 0}}, "validation.steps must be >= 1"),
    ({"model": {"preset": "bsr-huge"}}, "unknown preset 'bsr-huge'"),
    ({"model": {"overrides": {"num_groups": 0}}}, "num_groups must be an integer from 1 to"),
    ({"scale": 5}, r"scale must be one of \(2, 3, 4\)"),
])
def test_each_section_checks_its_values(values, match):
    with pytest.raises(ValueError, match=match):
        config_from_dict(values)


@pytest.mark.parametrize("values, match", [
    ({"optim": {"warmup_steps": -3}}, r"optim.warmup_steps must be an integer >= 0, got -3"),
    ({"optim": {"lr_decay_factor": -2.0}}, r"optim.lr_decay_factor must be in \(0, 1\], got -2.0"),
    ({"optim": {"max_grad_norm": -1}}, r"optim.max_grad_norm must be > 0"),
    ({"optim": {"max_steps": True}}, r"max_steps must be an integer, got True"),
    ({"optim": {"max_steps": 2.7}}, r"max_steps must be an integer, got 2.7"),
    ({"optim": {"learning_rate": "1e-3"}}, r"learning_rate must be a finite number, got '1e-3' \(text, not a number"),
    ({"optim": {"learning_rate": float("inf")}}, r"learning_rate must be a finite number, got inf"),
    ({"optim": {"learning_rate": float("nan")}}, r"learning_rate must be a finite number, got nan"),
    ({"optim": {"learning_rate": 0.0}}, r"optim.learning_rate must be in \(0, 1\]"),
    ({"optim": {"adam_beta2": 1.0}}, r"optim.adam_beta2 must be in \(0, 1\)"),
    ({"validation": {"eval_dirs": "../shared/data/benchmarks/Set5"}}, r"eval_dirs must be a list of strings"),
    ({"rfs": {"batch_size": "16"}}, r"batch_size must be an integer, got '16'"),
    ({"seed": 1.5}, r"seed must be an integer"),
    ({"output": {"push_to_hub": "yes"}}, r"push_to_hub must be true or false"),
])
def test_recipe_values_of_the_wrong_type_or_range_are_refused_at_load(values, match):
    """Issue 23 (7): these trained silently to exit 0 (or failed deep inside Adam, or after training)."""
    with pytest.raises(ValueError, match=match):
        config_from_dict(values)


def test_a_recipe_with_a_section_given_twice_is_refused(tmp_path):
    recipe = tmp_path / "twice.yaml"
    recipe.write_text("optim:\n  max_steps: 10\nvalidation:\n  steps: 5\noptim:\n  learning_rate: 1.0e-4\n")
    with pytest.raises(ValueError, match=r"'optim' is given twice in one mapping"):
        load_train_config(["--config", str(recipe)])


def test_the_yaml_hint_names_the_spelling_that_works(tmp_path):
    recipe = tmp_path / "lr.yaml"
    recipe.write_text("optim:\n  learning_rate: 1e-3\n")
    with pytest.raises(ValueError, match=r"write 1.0e-3"):
        load_train_config(["--config", str(recipe)])
    recipe.write_text("optim:\n  learning_rate: 1.0e-3\n")
    assert load_train_config(["--config", str(recipe)])[0].optim.learning_rate == 1e-3


def test_train_py_says_a_bad_setting_in_one_line(tmp_path):
    """Issue 23 (11): a configuration error was a 30-line traceback."""
    import subprocess

    run = subprocess.run([sys.executable, "train.py", "--config", "configs/debug_cpu.yaml", "--optim.warmup_steps",
                          "-3", "--output.dir", str(tmp_path / "out")], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=300, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith("error: optim.warmup_steps must be an integer >= 0")
    assert "Traceback" not in run.stderr
