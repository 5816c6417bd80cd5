"""Every checkpoint shipped inside the package (as timm's tests run over `list_models(pretrained=True)`): it loads
offline by name, its config, card and records agree, and the card's numbers are reproduced by the evaluator."""

import json
import re

import numpy as np
import pytest
from huggingface_hub import ModelCard
from PIL import Image

from bsr_hub import BSRModel, bundled_checkpoints, default_checkpoint, list_checkpoints
from bsr_hub.models.card import model_index_mismatches
from bsr_hub.commands.main import main as cli_main
from bsr_hub.models.records import read_robustness, trained_for

from conftest import SHARED_DATA, requires_shared_data

BUNDLED = list_checkpoints()
# Published Y-PSNR (Set5, Set14, BSD100) each bundled model must reach (README table; docs/METHOD.md section 8):
# the requirement, not the target. bsr-lite at x2 and x3 and bsr-tiny-x2 are held to their bundled numbers (those of
# their weights since 2026-12-07, 2026-12-08 and 2026-12-08, less a few hundredths), which they must not lose.
REQUIRED = {
    "bsr-lite-x2": ("bsr-lite-x2 as bundled on 2026-12-07", (37.34, 32.91, 31.87)),
    "bsr-lite-x3": ("bsr-lite-x3 as bundled on 2026-12-08", (33.67, 29.74, 28.83)),
    "bsr-lite-x4": ("FSRCNN", (30.72, 27.61, 26.98)),
    "bsr-tiny-x2": ("bsr-tiny-x2 as bundled on 2026-12-08", (37.26, 32.81, 31.72)),
    # Issue 16: on the published protocol, within 0.5 dB of the bsr-lite-x2 weights it was trained from (37.25 /
    # 32.86 / 31.81; issue 21 has since replaced them with better ones).
    "bsr-lite-x2-robust": ("bsr-lite-x2 - 0.5 dB", (36.75, 32.36, 31.31)),
    # Issue 24: the same bar at x3 and x4, against the bsr-lite-x3 (33.42 / 29.55 / 28.70) and -x4 (31.11 / 27.86 /
    # 27.18) weights they were trained from (issue 21 has since replaced both with better ones).
    "bsr-lite-x3-robust": ("bsr-lite-x3 - 0.5 dB", (32.92, 29.05, 28.20)),
    "bsr-lite-x4-robust": ("bsr-lite-x4 - 0.5 dB", (30.61, 27.36, 26.68)),
}
ROBUST = [n for n in BUNDLED if trained_for(bundled_checkpoints()[n]) == "real"]


def test_the_zoo_has_every_scale_and_the_fast_model():
    assert {"bsr-lite-x2", "bsr-lite-x3", "bsr-lite-x4", "bsr-tiny-x2"} <= set(BUNDLED)
    assert ROBUST == ["bsr-lite-x2-robust", "bsr-lite-x3-robust", "bsr-lite-x4-robust"]
    assert set(list_checkpoints(scale=4)) >= {"bsr-lite-x4"} and "bsr-lite-x4" not in list_checkpoints(scale=2)
    # Issue 24 (2): photos of unknown origin (the default) get the robust model of the scale; benchmark LR the
    # benchmark-protocol one.
    assert [default_checkpoint(s) for s in (2, 3, 4)] == [f"bsr-lite-x{s}-robust" for s in (2, 3, 4)]
    assert [default_checkpoint(s, "benchmark") for s in (2, 3, 4)] == ["bsr-lite-x2", "bsr-lite-x3", "bsr-lite-x4"]
    with pytest.raises(ValueError, match="photos, benchmark"):
        default_checkpoint(2, "paintings")


def test_upscale_without_a_model_uses_the_robust_one_of_the_scale_and_says_so(tmp_path, capsys):
    """Issue 24 (2): `bsr-hub upscale photo.jpg` hands a photo of unknown origin to the robust model, names it and
    says why; its output is that model's, not the benchmark model's."""
    rng = np.random.default_rng(0)
    src = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(src)
    for scale in (2, 3, 4):
        out = tmp_path / f"x{scale}"
        assert cli_main(["upscale", str(src), "-o", str(out), "--scale", str(scale), "-q"]) == 0
        err = capsys.readouterr().err
        assert f"model: bsr-lite-x{scale}-robust, the default" in err and f"--model bsr-lite-x{scale})" in err
        expected = BSRModel.from_pretrained(f"bsr-lite-x{scale}-robust").upscale(Image.open(src))
        assert np.array_equal(np.asarray(Image.open(out / "photo.png")), np.asarray(expected))
    assert cli_main(["upscale", str(src), "-o", str(tmp_path / "named"), "--model", "bsr-lite-x2", "-q"]) == 0
    assert "model:" not in capsys.readouterr().err  # a named model needs no explanation


@pytest.mark.parametrize("name", BUNDLED)
def test_loads_offline_and_config_card_and_records_agree(name):
    folder = bundled_checkpoints()[name]
    model = BSRModel.from_pretrained(name)  # HF_HUB_OFFLINE=1 (conftest): no network involved
    preset, scale = re.fullmatch(r"(bsr-[a-z]+)-x(\d)(?:-.*)?", name).groups()
    assert (model.config.preset, model.scale) == (preset, int(scale))

    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "bsr-hub"
    assert f"| scale | x{model.scale} |" in card.text and f"| preset | `{preset}` |" in card.text
    assert f"| parameters | {model.num_parameters():,} |" in card.text
    stored = json.loads((folder / "eval_results.json").read_text())
    assert stored["model"] == name
    assert model_index_mismatches(folder / "README.md", stored["results"]) == []  # the Hub's parser agrees
    benchmarks = {r["benchmark"] for r in stored["results"] if r["scale"] == model.scale and not r["self_ensemble"]}
    assert {"Set5", "Set14", "BSD100"} <= benchmarks

    training = json.loads((folder / "training.json").read_text())
    assert "../" not in training["data"] and "T91 (91 images;" in training["data"]  # datasets, not a local path
    for dataset in training["datasets"]:  # every source is named with its image count and licence (issue 21)
        assert dataset["images"] > 0 and dataset["licence"], dataset
    assert training["lineage"] and all(stage["steps"] > 0 for stage in training["lineage"])
    assert "total training" in card.text and "Lineage" in card.text


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_card_numbers_meet_the_required_published_rows(name):
    if name not in BUNDLED:
        pytest.fail(f"{name} is not bundled")
    folder = bundled_checkpoints()[name]
    results = json.loads((folder / "eval_results.json").read_text())["results"]
    scale = BSRModel.from_pretrained(name).scale
    psnr = {r["benchmark"]: r["psnr"] for r in results if r["scale"] == scale and not r["self_ensemble"]
            and r["degradation"] == "BI"}
    reference, required = REQUIRED[name]
    for benchmark, bar in zip(("Set5", "Set14", "BSD100"), required):
        assert round(psnr[benchmark], 2) >= bar, f"{name} on {benchmark}: {psnr[benchmark]:.2f} < {reference}'s {bar}"


@requires_shared_data
@pytest.mark.parametrize("name", BUNDLED)
def test_the_cards_set5_number_is_reproduced_and_beats_bicubic(name):
    pytest.importorskip("datasets")
    from bsr_hub.data.benchmarks import load_benchmark
    from bsr_hub.evaluation.bicubic import BicubicModel
    from bsr_hub.evaluation.protocol import evaluate_benchmark

    folder = bundled_checkpoints()[name]
    model = BSRModel.from_pretrained(name)
    stored = json.loads((folder / "eval_results.json").read_text())["results"]
    (card_set5,) = [r for r in stored if r["benchmark"] == "Set5" and r["scale"] == model.scale
                    and r["degradation"] == "BI" and not r["self_ensemble"]]
    set5 = load_benchmark("Set5", SHARED_DATA / "benchmarks")
    ours = evaluate_benchmark(model, set5, model.scale, progress=False)
    bicubic = evaluate_benchmark(BicubicModel(model.scale), set5, model.scale, progress=False)
    assert ours.psnr == pytest.approx(card_set5["psnr"], abs=0.005)  # the card was measured, not typed
    assert ours.psnr > bicubic.psnr + 1.0


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_upscale_by_scale_alone_uses_the_bundled_model_of_that_scale(scale, tmp_path, capsys):
    src = tmp_path / "in.png"
    Image.new("RGB", (9, 7), (120, 40, 200)).save(src)
    assert cli_main(["upscale", str(src), "-o", str(tmp_path / "out"), "--scale", str(scale), "-q"]) == 0
    assert Image.open(tmp_path / "out" / "in.png").size == (9 * scale, 7 * scale)
    # A named model of another scale is refused rather than silently giving another size.
    other = "bsr-lite-x2" if scale != 2 else "bsr-lite-x3"
    assert cli_main(["upscale", str(src), "-o", str(tmp_path / "o2"), "--scale", str(scale), "--model", other]) == 2
    assert f"--scale {scale}" in capsys.readouterr().err


def test_list_prints_every_bundled_checkpoint(capsys):
    assert cli_main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == BUNDLED
    for row in rows:
        assert set(row["psnr"]) >= {"Set5", "Set14", "BSD100"}


@pytest.mark.parametrize("name", BUNDLED)
def test_every_card_shows_the_robustness_suite_under_limitations(name):
    """Issue 16: each bundled card says, measured, how the model does on LR that MATLAB did not make."""
    folder = bundled_checkpoints()[name]
    document = read_robustness(folder)
    assert document is not None, f"{name} has no robustness_results.json"
    # Set5 for each (the suite is 27 inputs per image: CPU time); Set14 too for the x2 models people compare.
    assert {r["benchmark"] for r in document["rows"]} >= ({"Set5", "Set14"} if name.endswith(("lite-x2", "robust")) else {"Set5"})
    card = (folder / "README.md").read_text()
    limitations = card[card.index("## Limitations"):]
    assert "Inputs not made by MATLAB bicubic" in limitations and document["command"] in limitations
    for r in document["rows"]:
        assert f"| {r['degradation']} |" in limitations


@pytest.mark.parametrize("name", ROBUST)
def test_robust_checkpoints_beat_bicubic_on_every_input_of_the_suite(name):
    """Issues 16 and 24, on Set5 and Set14: +0.5 dB over bicubic of the same LR for every resizer alone, and at
    least bicubic's PSNR after JPEG and with noise; every resizer and every family of the suite measured (OpenCV
    installed). The camera-like rows are reported, not held to a bar (issue 24 (3))."""
    from bsr_hub.evaluation.robustness import FAMILIES, row_family, robustness_suite

    document = read_robustness(bundled_checkpoints()[name])
    assert not document["skipped_resizers"]
    for bench in ("Set5", "Set14"):
        measured = {r["degradation"] for r in document["rows"] if r["benchmark"] == bench}
        assert measured == {d.name for d in robustness_suite(with_opencv=True)[0]}, (name, bench)
    for r in document["rows"]:
        if r["benchmark"] not in ("Set5", "Set14") or row_family(r) == "camera":
            continue
        bar = 0.5 if row_family(r) == "resize" else 0.0
        gain = r["psnr"] - r["bicubic_psnr"]
        assert gain >= bar, f"{name}, {r['benchmark']}, {r['degradation']}: {gain:+.2f} dB over bicubic (< {bar})"
    assert set(document["families"]) == set(FAMILIES)


@pytest.mark.parametrize("name", BUNDLED)
def test_every_card_reports_the_camera_like_rows(name):
    """Issue 24 (3): the camera-like family (blur, resizer, JPEG) is reported for every bundled model."""
    document = read_robustness(bundled_checkpoints()[name])
    camera = [r for r in document["rows"] if r.get("family") == "camera"]
    assert {r["benchmark"] for r in camera} >= {"Set5"} and len(camera) >= 6
    assert "camera-like" in (bundled_checkpoints()[name] / "README.md").read_text()
