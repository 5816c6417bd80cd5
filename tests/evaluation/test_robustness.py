"""The robustness suite (`evaluate.py --suite robustness`): LR made by other resizers and JPEG, scored next to
bicubic upscaling of the same LR, written into the card under Limitations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("datasets", reason="evaluation needs the train extra (datasets)")

from bsr_hub import BSRModel
from bsr_hub.data.benchmarks import load_benchmark
from bsr_hub.evaluation.bicubic import BicubicModel
from bsr_hub.commands.eval import eval_main
from bsr_hub.evaluation.protocol import evaluate_benchmark
from bsr_hub.data.resizers import OPENCV_RESIZERS
from bsr_hub.evaluation.robustness import (
    CAMERA_BLUR_SIGMA,
    CAMERA_JPEG_QUALITY,
    SUITE_JPEG_QUALITIES,
    SUITE_NOISE_SIGMA,
    SUITE_RESIZERS,
    InputDegradation,
    evaluate_robustness,
    gaussian_blur,
    merge_documents,
    results_document,
    robustness_suite,
    score_inputs,
)


def test_the_suite_is_every_resizer_alone_with_jpeg_with_noise_and_camera_like(monkeypatch):
    suite, skipped = robustness_suite(with_opencv=True)
    assert [d.name for d in suite][:5] == ["matlab-bicubic", "matlab-bicubic+jpeg90", "matlab-bicubic+jpeg75",
                                           "matlab-bicubic+noise3", "blur+matlab-bicubic+jpeg80"]
    assert [d.family for d in suite][:5] == ["resize", "jpeg", "jpeg", "noise", "camera"]
    assert len(suite) == len(SUITE_RESIZERS) * (1 + len(SUITE_JPEG_QUALITIES) + 2) and not skipped
    suite, skipped = robustness_suite(with_opencv=False)
    assert set(skipped) == set(OPENCV_RESIZERS) and all("OpenCV" in why for why in skipped.values())
    assert not any(d.resizer in OPENCV_RESIZERS for d in suite)
    only, _ = robustness_suite(with_opencv=True, families=["camera"])
    assert [d.name for d in only] == [f"blur+{r}+jpeg80" for r in SUITE_RESIZERS]
    with pytest.raises(ValueError, match="unknown robustness row families"):
        robustness_suite(families=["blurry"])


def test_camera_rows_blur_by_a_drawn_sigma_and_every_row_is_reproducible(bench_dir):
    """The camera row's blur is a real Gaussian of a sigma drawn in CAMERA_BLUR_SIGMA, and a row's random draws
    depend on the image and the row only: the same LR whether the row runs alone or inside the whole suite."""
    hr = np.asarray(Image.open(sorted(bench_dir.glob("Syn/*.png"))[0]).convert("RGB"))[:40, :40]
    flat = np.full((32, 32, 3), 77, np.uint8)
    assert np.array_equal(gaussian_blur(flat, 1.0), flat)  # a blur keeps a flat image (kernel sums to 1)
    step = np.zeros((32, 32, 3), np.uint8)
    step[:, 16:] = 200
    row = gaussian_blur(step, 1.0)[5, :, 0].astype(float)
    assert 0 < row[15] < 100 < row[16] < 200 and row[:12].max() == 0  # spread over about 3 sigma, no further
    camera = InputDegradation("pil-bicubic", CAMERA_JPEG_QUALITY, blur_sigma=CAMERA_BLUR_SIGMA)
    plain = InputDegradation("pil-bicubic", CAMERA_JPEG_QUALITY)

    def lr(d, seed):
        return d.make_lr(hr, 2, np.random.default_rng(seed))

    assert not np.array_equal(lr(camera, 0), lr(plain, 0))  # the blur is applied
    assert not np.array_equal(lr(camera, 0), lr(camera, 1))  # its sigma is drawn
    noisy = InputDegradation("pil-bicubic", noise_sigma=SUITE_NOISE_SIGMA)
    clean = InputDegradation("pil-bicubic").make_lr(hr, 2, np.random.default_rng(0)).astype(float)
    assert np.std(lr(noisy, 0) - clean) == pytest.approx(SUITE_NOISE_SIGMA, rel=0.15)
    model = BicubicModel(2)
    full, _ = robustness_suite(with_opencv=False)
    alone = [d for d in full if d.family in ("noise", "camera")]
    assert score_inputs(model, hr, 2, alone, seed=5) == [s for d, s in zip(full, score_inputs(model, hr, 2, full, seed=5))
                                                          if d in alone]


def _document(bench_dir, model, families, command):
    suite, skipped = robustness_suite(with_opencv=False, families=families)
    rows = evaluate_robustness(model, [load_benchmark("Syn", bench_dir)], 2, suite, progress=False)
    return results_document("m", 2, rows, skipped, command)


def test_a_new_family_merges_into_the_stored_rows_of_the_same_weights_only(bench_dir, tiny_checkpoint, tmp_path):
    model = BSRModel.from_pretrained(tiny_checkpoint).eval()
    stored = _document(bench_dir, model, ["resize", "jpeg"], "first")
    added = _document(bench_dir, model, ["resize", "camera"], "second")
    merged = merge_documents(stored, added)
    full = _document(bench_dir, model, ["resize", "jpeg", "camera"], "whole")
    assert [r["degradation"] for r in merged["rows"]] == [r["degradation"] for r in full["rows"]]  # suite order
    assert [r["psnr"] for r in merged["rows"]] == pytest.approx([r["psnr"] for r in full["rows"]], abs=1e-9)
    assert merged["commands"] == ["first", "second"] and set(merged["families"]) == {"resize", "jpeg", "camera"}
    other = BSRModel.from_pretrained(tiny_checkpoint).eval()
    with torch.no_grad():
        next(other.parameters()).add_(0.05)
    with pytest.raises(ValueError, match="other weights"):
        merge_documents(stored, _document(bench_dir, other, ["resize", "camera"], "third"))
    with pytest.raises(ValueError, match="no row of this run"):
        merge_documents(stored, _document(bench_dir, model, ["camera"], "fourth"))


def test_families_flag_adds_rows_to_the_card_and_refuses_other_weights(bench_dir, tiny_checkpoint, tmp_path, capsys):
    base = ["--suite", "robustness", "--model", str(tiny_checkpoint), "--benchmarks", "Syn", "--data-dir",
            str(bench_dir), "-q", "--update-card", str(tiny_checkpoint)]
    assert eval_main([*base, "--families", "resize", "jpeg"]) == 0
    assert eval_main([*base, "--families", "noise", "camera"]) == 0  # the MATLAB row is re-measured to check
    stored = json.loads((tiny_checkpoint / "robustness_results.json").read_text())
    assert {r["family"] for r in stored["rows"]} == {"resize", "jpeg", "noise", "camera"}
    assert len(stored["commands"]) == 2 and stored["commands"][1].endswith("--families noise camera")
    card = (tiny_checkpoint / "README.md").read_text()
    assert "| blur+pil-box+jpeg80 |" in card and "| pil-box+jpeg75 |" in card and "Gaussian noise of 3 grey" in card
    assert stored["commands"][0] in card and stored["commands"][1] in card
    model = BSRModel.from_pretrained(tiny_checkpoint)
    with torch.no_grad():
        next(model.parameters()).add_(0.05)
    model.save_pretrained(tmp_path / "changed")
    (tmp_path / "changed" / "robustness_results.json").write_text(json.dumps(stored))
    capsys.readouterr()
    changed = [*base[:-1], str(tmp_path / "changed"), "--families", "camera"]
    changed[changed.index("--model") + 1] = str(tmp_path / "changed")  # a repeated --model would add a second one
    assert eval_main(changed) == 2
    assert "other weights" in capsys.readouterr().err
    assert json.loads((tmp_path / "changed" / "robustness_results.json").read_text()) == stored  # left as it was


def test_matlab_row_is_the_published_protocol_and_bicubic_gains_nothing(bench_dir, tiny_checkpoint):
    """Two checks that tie the suite to the evaluator: its MATLAB-bicubic row is the published number of the
    same model, and the bicubic baseline scored by the suite gains exactly 0 dB over itself on every row."""
    bench = load_benchmark("Syn", bench_dir)
    model = BSRModel.from_pretrained(tiny_checkpoint).eval()
    suite, _ = robustness_suite(with_opencv=False)
    rows = {r.degradation: r for r in evaluate_robustness(model, [bench], 2, suite, progress=False)}
    published = evaluate_benchmark(model, bench, 2, progress=False)
    assert rows["matlab-bicubic"].psnr == pytest.approx(published.psnr, abs=1e-6)
    bicubic = BicubicModel(2)
    assert rows["matlab-bicubic"].bicubic_psnr == pytest.approx(
        evaluate_benchmark(bicubic, bench, 2, progress=False).psnr, abs=1e-6)
    for r in evaluate_robustness(bicubic, [bench], 2, suite, progress=False):
        assert r.gain == pytest.approx(0.0, abs=1e-9), r.degradation
        assert r.blockiness == pytest.approx(r.bicubic_blockiness, abs=1e-9), r.degradation
    # The rows differ from each other: the suite really makes different inputs.
    assert len({round(r.bicubic_psnr, 4) for r in rows.values()}) > len(rows) // 2


def test_suite_command_writes_results_and_the_cards_limitations(bench_dir, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "rob.json"
    rc = eval_main(["--suite", "robustness", "--model", str(tiny_checkpoint), "--benchmarks", "Syn",
                    "--data-dir", str(bench_dir), "-q", "--output", str(out), "--update-card", str(tiny_checkpoint)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| pil-box+jpeg75 |" in printed
    document = json.loads(out.read_text())
    suite, skipped = robustness_suite()
    assert len(document["rows"]) == len(suite) and document["skipped_resizers"] == skipped
    assert document["command"].startswith("python evaluate.py --suite robustness --model ")
    stored = json.loads((tiny_checkpoint / "robustness_results.json").read_text())
    assert stored["rows"] == document["rows"]
    card = (tiny_checkpoint / "README.md").read_text()
    assert "Inputs not made by MATLAB bicubic" in card and "| torch-bicubic+jpeg90 |" in card
    row = next(r for r in document["rows"] if r["degradation"] == "torch-bicubic")
    assert f"| torch-bicubic | {row['bicubic_psnr']:.2f} | {row['psnr']:.2f} |" in card
    # Blockiness next to PSNR, in the JSON, the printed table and the card (with what it means).
    assert all(r["blockiness"] > 0 and r["bicubic_blockiness"] > 0 for r in document["rows"])
    jpeg = next(r for r in document["rows"] if r["degradation"] == "pil-box+jpeg75")
    cells = f"| {jpeg['bicubic_blockiness']:.2f} | {jpeg['blockiness']:.2f} |"
    assert "Syn blockiness bicubic | Syn blockiness model |" in printed and cells in printed
    assert "Syn blockiness model |" in card and cells in card and "Blockiness is how strongly" in card

    # A later published-protocol evaluation re-renders the card from the records: the table stays.
    assert eval_main(["--model", str(tiny_checkpoint), "--benchmarks", "Syn", "--data-dir", str(bench_dir), "-q",
                      "--scale", "2", "--update-card", str(tiny_checkpoint)]) == 0
    again = (tiny_checkpoint / "README.md").read_text()
    assert "| torch-bicubic+jpeg90 |" in again and "Syn" in again


def test_a_record_written_before_blockiness_still_renders(tiny_checkpoint):
    """robustness_results.json files written before the suite measured blockiness show "-" in its columns."""
    from bsr_hub.models.card import update_card

    old_row = {"benchmark": "Set5", "degradation": "pil-box+jpeg75", "resizer": "pil-box", "jpeg_quality": 75,
               "num_images": 5, "psnr": 31.52, "bicubic_psnr": 31.98}
    document = {"model": "tiny", "scale": 2, "command": "python evaluate.py --suite robustness ...",
                "rows": [old_row], "skipped_resizers": {}}
    (tiny_checkpoint / "robustness_results.json").write_text(json.dumps(document))
    card = update_card(tiny_checkpoint, []).read_text()
    assert "| pil-box+jpeg75 | 31.98 | 31.52 | -0.46 **(worse)** | - | - |" in card
    assert "Blockiness (\"-\") was not measured" in card and "Blockiness is how strongly" not in card
    # A family measured on one benchmark only (a merge of runs over different sets) leaves "-" cells, no error.
    document["rows"].append({**old_row, "benchmark": "Set14", "degradation": "pil-box", "jpeg_quality": None})
    (tiny_checkpoint / "robustness_results.json").write_text(json.dumps(document))
    card = update_card(tiny_checkpoint, []).read_text()
    assert "| pil-box+jpeg75 | 31.98 | 31.52 | -0.46 **(worse)** | - | - | - | - | - | - | - |" in card


def test_suite_refuses_flags_it_would_ignore(bench_dir, tiny_checkpoint, capsys):
    rc = eval_main(["--suite", "robustness", "--model", str(tiny_checkpoint), "--benchmarks", "Syn",
                    "--data-dir", str(bench_dir), "-q", "--degradation", "BD"])
    assert rc == 2 and "makes its own LR" in capsys.readouterr().err


def test_the_demo_offers_both_x2_checkpoints_and_says_which_suits_photos():
    pytest.importorskip("gradio")
    from bsr_hub.demo.models import discover_models
    from bsr_hub.models.hub import list_checkpoints

    if "bsr-lite-x2-robust" not in list_checkpoints():
        pytest.fail("bsr-lite-x2-robust is not bundled")
    labels = {e.name: e.label for e in discover_models() if e.scale == 2}
    assert labels["bsr-lite-x2"] == "x2 · bsr-lite-x2"
    assert labels["bsr-lite-x2-robust"] == "x2 · bsr-lite-x2-robust · for real photos"


def test_the_demo_preselects_the_model_for_photos_and_says_why():
    """Issue 24 (2): a user's upload is a photo of unknown origin, so the robust model is the demo's default (as
    in `bsr-hub upscale` without --model), and the model control says why."""
    pytest.importorskip("gradio")
    from bsr_hub.demo.app import build_demo

    demo = build_demo()
    try:
        radio = next(c for c in demo.config["components"] if c["props"].get("elem_id") == "bsr-model")
        assert radio["props"]["value"] == "x2 · bsr-lite-x2-robust · for real photos"
        assert "photos of unknown origin" in radio["props"]["info"] and "MATLAB-bicubic" in radio["props"]["info"]
        assert {c[0] for c in radio["props"]["choices"]} >= {"x2 · bsr-lite-x2", "x4 · bsr-lite-x4"}
    finally:
        demo.close()


def test_bsr_hub_list_says_what_each_checkpoint_is_for(capsys):
    from bsr_hub.commands.main import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    lines = {line[2:].split()[0]: line for line in out.splitlines() if line[2:].startswith("bsr-")}
    assert lines["bsr-lite-x2-robust"].rstrip().endswith("real")
    assert lines["bsr-lite-x2"].rstrip().endswith("benchmark")
    # Issue 24 (2): the default of each scale (the robust model) is marked, and the footnote says why.
    starred = {name for name, line in lines.items() if line.startswith("* ")}
    assert starred == {f"bsr-lite-x{s}-robust" for s in (2, 3, 4)} & set(lines)
    assert "* the default of its scale when no model is named" in out and "unknown origin" in out


def test_a_tiny_image_is_named_and_skipped_and_the_rest_scored(bench_dir, tiny_checkpoint, capsys):
    """Issue 23 (12): a 3x3 image aborted the whole suite without naming the file."""
    from PIL import Image

    before = evaluate_robustness(BicubicModel(2), [load_benchmark("Syn", bench_dir)], 2,
                                 robustness_suite(with_opencv=False)[0], progress=False)
    Image.new("RGB", (3, 3), (10, 20, 30)).save(bench_dir / "Syn" / "speck.png")
    skipped: list[dict[str, str]] = []
    rows = evaluate_robustness(BicubicModel(2), [load_benchmark("Syn", bench_dir)], 2,
                               robustness_suite(with_opencv=False)[0], progress=False, skipped_images=skipped)
    assert skipped == [{"benchmark": "Syn", "name": "speck", "error": "3x3 is too small to score at x2"}]
    assert [(r.num_images, r.psnr) for r in rows] == [(r.num_images, r.psnr) for r in before]  # the others, as before
    assert eval_main(["--suite", "robustness", "--model", str(tiny_checkpoint), "--benchmarks", "Syn", "--data-dir",
                      str(bench_dir), "--quiet"]) == 0
    assert "skipped Syn/speck: 3x3 is too small to score at x2" in capsys.readouterr().err
