"""The checkpoint shipped inside the package: it loads offline by name, and its card tells the truth."""

import json

import pytest
from huggingface_hub import ModelCard

from bsr_hub import BSRModel, bundled_checkpoints

from conftest import SHARED_DATA, requires_shared_data

NAME = "bsr-lite-x2"


def test_bundled_model_loads_offline_by_name():
    assert NAME in bundled_checkpoints()
    model = BSRModel.from_pretrained(NAME)  # HF_HUB_OFFLINE=1 (conftest): no network involved
    assert model.scale == 2 and model.config.preset == "bsr-lite"
    card = ModelCard.load(bundled_checkpoints()[NAME] / "README.md")
    assert card.data.library_name == "bsr-hub"
    measured = {(r.dataset_type, r.metric_type) for r in card.data.eval_results}
    assert {("Set5", "psnr"), ("Set14", "psnr"), ("BSD100", "psnr")} <= measured
    training = json.loads((bundled_checkpoints()[NAME] / "training.json").read_text())
    assert training["steps"] > 0 and "../shared/data/train" in training["data"]


@requires_shared_data
def test_the_cards_set5_number_is_reproduced_and_beats_bicubic():
    pytest.importorskip("datasets")
    from bsr_hub.evaluation import BicubicModel, evaluate_benchmark, load_benchmark

    folder = bundled_checkpoints()[NAME]
    stored = json.loads((folder / "eval_results.json").read_text())["results"]
    (card_set5,) = [r for r in stored if r["benchmark"] == "Set5" and r["scale"] == 2 and not r["self_ensemble"]]
    set5 = load_benchmark("Set5", SHARED_DATA / "benchmarks")
    ours = evaluate_benchmark(BSRModel.from_pretrained(NAME), set5, 2, progress=False)
    bicubic = evaluate_benchmark(BicubicModel(2), set5, 2, progress=False)
    assert ours.psnr == pytest.approx(card_set5["psnr"], abs=0.005)  # the card was measured, not typed
    assert ours.psnr > bicubic.psnr + 2.0
