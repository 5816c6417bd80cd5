"""Issue 26: the ablation driver (bench/ablation.py) runs a real grid of train.py runs, and its statistics
(bench/ablation_stats.py) match a hand-computed case."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, write_benchmark_images

sys.path.insert(0, str(REPO_ROOT / "bench"))
import ablation  # noqa: E402
from ablation_report import verdict  # noqa: E402
from ablation_stats import Interval, paired_interval, resolvable_effect  # noqa: E402

pytest.importorskip("accelerate")
pytest.importorskip("datasets")


def test_the_paired_t_interval_matches_a_hand_computed_case():
    # differences 0.1, 0.2, 0.3: mean 0.2, sample sd 0.1; t(0.975, 2 df) = 4.302653 (Student's table);
    # half-width 4.302653 * 0.1 / sqrt(3) = 0.248414
    iv = paired_interval([32.1, 32.3, 32.2], [32.0, 32.1, 31.9])
    assert iv.n == 3 and math.isclose(iv.mean, 0.2, abs_tol=1e-12) and math.isclose(iv.sd, 0.1, abs_tol=1e-12)
    assert math.isclose(iv.high - iv.mean, 0.248414, abs_tol=1e-6)
    assert math.isclose(iv.mean - iv.low, 0.248414, abs_tol=1e-6)
    assert not iv.excludes_zero and iv.format() == "+0.200 [-0.048, +0.448]"
    assert math.isclose(resolvable_effect(0.1, 3), 0.248414, abs_tol=1e-6)
    # 90 %: t(0.95, 2 df) = 2.919986, a narrower interval
    assert math.isclose(paired_interval([32.1, 32.3, 32.2], [32.0, 32.1, 31.9], 0.90).high - 0.2,
                        2.919986 * 0.1 / math.sqrt(3), abs_tol=1e-6)


def test_one_seed_has_no_interval_and_unpaired_values_are_refused():
    iv = paired_interval([32.0], [32.1])
    assert (iv.n, iv.low, iv.high) == (1, iv.mean, iv.mean) and iv.format() == "-0.100 (1 seed)"
    assert resolvable_effect(0.1, 1) == math.inf
    with pytest.raises(ValueError, match="same seeds"):
        paired_interval([32.0, 32.1], [32.0])


def test_the_verdict_separates_reproduced_contradicted_and_unresolved():
    assert verdict(Interval(-0.04, -0.06, -0.02, 0.01, 3), -0.05) == \
        "reproduces the paper's direction (and its size: the paper -0.05 dB)"
    assert verdict(Interval(-0.3, -0.4, -0.2, 0.05, 3), -0.05).endswith("(not its size: the paper -0.05 dB)")
    assert verdict(Interval(0.05, 0.02, 0.08, 0.01, 3), -0.10).startswith("contradicts the paper")
    assert verdict(Interval(-0.02, -0.09, 0.05, 0.03, 3), -0.05) == \
        "cannot resolve at this budget: the interval holds 0 and the paper's value"
    assert verdict(Interval(-0.02, -0.09, 0.05, 0.03, 3), None) == "cannot resolve at this budget: the interval holds 0"
    assert verdict(Interval(-0.003, -0.012, 0.006, 0.005, 4), -0.03).endswith("outside the interval: contradicts its size")
    assert verdict(Interval(-0.02, -0.02, -0.02, 0.0, 1), -0.10) == "one seed: no interval yet"


def test_a_two_step_grid_trains_every_run_writes_the_table_and_skips_what_is_done(tmp_path):
    data = tmp_path / "data"
    for name in ("Set5", "Set14", "BSD100"):
        write_benchmark_images(data / name, count=2)
    write_benchmark_images(data / "train", count=4, grey=False, seed=1)
    recipe = tmp_path / "recipe.yaml"
    settings = yaml.safe_load((REPO_ROOT / "configs" / "debug_cpu.yaml").read_text())  # a tiny model, 16 px patches
    settings["data"]["train_dir"] = str(data / "train")
    settings["validation"] = {"dir": str(data / "Set5"), "steps": 1000,
                              "eval_dirs": [str(data / name) for name in ("Set5", "Set14", "BSD100")]}
    recipe.write_text(yaml.safe_dump(settings))
    out, results = tmp_path / "runs", tmp_path / "results" / "ablation.md"
    argv = ["--config", str(recipe), "--columns", "full", "no-sc", "--seeds", "0", "1", "--steps", "2",
            "--launcher", "python", "--threads", "1", "--out", str(out), "--results", str(results)]
    assert ablation.main(argv) == 0

    means, pairs, resolution, runs, rerun = results.read_text().split("\n## ")[1:]
    assert "| column | seeds | Set5 | Set14 | BSD100 | mean | paper |" in means
    assert "| full BSR | 2 |" in means and "| without SC (group forwarding off) | 2 |" in means
    assert pairs.startswith("Paired difference to full BSR (dB), mean [95 % paired t interval over seeds]")
    (row,) = [line for line in pairs.splitlines() if line.startswith("| without SC")]
    assert row.count("[") == 4 and row.split(" | ")[5] == "-0.10"  # four intervals; the paper's difference
    assert "over 2 seeds" in resolution and rerun.startswith("Rerun it") and "--preset bsr-base" in rerun
    assert sum(line.startswith(("| full BSR |", "| without SC")) for line in runs.splitlines()) == 4
    assert results.with_suffix(".png").stat().st_size > 0
    # the column's switch, merged into the recipe's own overrides (the model keeps the recipe's size)
    config = json.loads((out / "no-sc" / "seed1" / "model" / "config.json").read_text())
    assert config["use_group_forwarding"] is False and config["num_features"] == 8
    assert json.loads((out / "full" / "seed1" / "model" / "config.json").read_text())["use_group_forwarding"] is True
    assert "seed: 1" in json.loads((out / "full" / "seed1" / "model" / "training.json").read_text())["recipe"]

    weights = out / "full" / "seed0" / "model" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert ablation.main(argv) == 0  # every run finished: nothing is trained again
    assert weights.stat().st_mtime_ns == before


def test_each_column_changes_one_switch_of_the_recipe():
    args = ablation.parse_args(["--steps", "5", "--seeds", "3"])
    base = ablation.train_command(args, "full", 3)
    assert base[base.index("--seed") + 1] == "3" and base[base.index("--optim.max_steps") + 1] == "5"
    extra = {c: ablation.train_command(args, c, 3)[len(base):] for c in ablation.COLUMNS}
    assert extra == {
        "full": [], "no-rfs": ["--rfs.mode", "uniform"],
        "no-sc": ["--model.overrides", '{"use_group_forwarding": false}'],
        "no-lsa": ["--model.overrides", '{"use_attention": false}'],
        "l2": ["--loss.l1_weight", "0", "--loss.lp_weight", "0"], "l2-l1": ["--loss.lp_weight", "0"]}


def test_the_driver_refuses_a_grid_without_its_reference(capsys):
    with pytest.raises(SystemExit):
        ablation.parse_args(["--columns", "no-sc", "l2"])
    assert "--columns must include full" in capsys.readouterr().err


def _recorded(args, column: str, seed: int):
    """The config a run of `column` and `seed` under `args` would record (what train.py resolves)."""
    from bsr_hub.commands.train import load_train_config

    cmd = ablation.train_command(args, column, seed)
    flags = cmd[cmd.index("train.py") + 1:]
    flags[flags.index("--config") + 1] = str(REPO_ROOT / args.config)
    return load_train_config(flags)[0]


def test_a_run_made_with_other_settings_stops_the_grid_naming_its_folder(tmp_path):
    """A run counted as finished whatever its --steps: `--steps 2` then a default run mixed budgets in one table.
    A finished or interrupted run whose recorded recipe differs from what the grid asks now stops it, and is kept."""
    from bsr_hub.training.config import config_to_yaml

    out = tmp_path / "runs"
    argv = ["--columns", "full", "--seeds", "0", "--launcher", "python", "--out", str(out),
            "--results", str(tmp_path / "ablation.md")]
    made = _recorded(ablation.parse_args([*argv, "--steps", "2"]), "full", 0)
    model = out / "full" / "seed0" / "model"
    model.mkdir(parents=True)
    (model / "training.json").write_text(json.dumps({"recipe": config_to_yaml(made), "wall_time_s": 1.0}))
    (model / "eval_results.json").write_text(json.dumps({"results": [
        {"benchmark": name, "psnr": 30.0} for name in ("Set5", "Set14", "BSD100")]}))
    with pytest.raises(SystemExit, match=f"{model.parent} holds a finished run .*optim.max_steps 2 there, 3 asked"):
        ablation.main([*argv, "--steps", "3", "--report"])
    with pytest.raises(SystemExit, match="model.preset 'bsr-tiny' there, 'bsr-lite' asked"):
        ablation.run_grid(ablation.parse_args([*argv, "--steps", "2", "--preset", "bsr-lite"]))
    assert (model / "training.json").is_file() and (model / "eval_results.json").is_file()

    # An interrupted run (a checkpoint, no model yet) of another column's settings is not resumed either.
    other = _recorded(ablation.parse_args([*argv, "--steps", "2"]), "no-sc", 0)
    checkpoint = out / "full" / "seed1" / "checkpoints" / "step_1"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer.json").write_text(json.dumps({"step": 1, "config": other.to_dict()}))
    with pytest.raises(SystemExit, match=f"{checkpoint.parents[1]} holds an interrupted run .*model.overrides"):
        ablation.run_grid(ablation.parse_args([*argv[:3], "1", *argv[4:], "--steps", "2"]))
    assert (checkpoint / "trainer.json").is_file()


def _rows(seeds, psnr: float = 30.0) -> dict[int, dict]:
    return {s: {"Set5": psnr + s / 10, "Set14": psnr, "BSD100": psnr, "mean": psnr + s / 30, "wall_s": None}
            for s in seeds}


def test_a_column_with_no_seed_in_common_with_full_is_reported_not_a_crash(tmp_path):
    """paired() raised ValueError for a column that shares no seed with full BSR, and the resolution took the
    smallest column's seed count for "the seeds every column has"."""
    import types

    from ablation_report import render, resolution_lines

    keys = ("Set5", "Set14", "BSD100", "mean")
    runs = {"full": _rows([0, 1, 2]), "no-sc": _rows([0, 1, 2], 29.9), "l2": _rows([1, 2, 3], 29.8)}
    (line,) = [x for x in resolution_lines(runs, keys) if "an interval over" in x]
    assert "an interval over 2 seeds" in line  # seeds 1 and 2: in every column

    runs["no-rfs"] = _rows([5, 6])
    args = types.SimpleNamespace(out=tmp_path / "runs", config="configs/ablation_tiny_x2.yaml", command="test",
                                 results=tmp_path / "ablation.md")
    render(runs, args, ablation.COLUMNS, ablation.PAPER_PSNR, ablation.SETS)
    (row,) = [x for x in args.results.read_text().splitlines() if x.startswith("| without RFS") and "paired" in x]
    assert row.count("no paired seeds") == 4 and "no seed of it has finished for full BSR too" in row
