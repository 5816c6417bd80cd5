"""The robustness suite (`evaluate.py --suite robustness`): LR made by other resizers and JPEG, scored next to
bicubic upscaling of the same LR, written into the card under Limitations."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("datasets", reason="evaluation needs the train extra (datasets)")

from bsr_hub import BSRModel
from bsr_hub.data.benchmarks import load_benchmark
from bsr_hub.evaluation.bicubic import BicubicModel
from bsr_hub.commands.eval import eval_main
from bsr_hub.evaluation.protocol import evaluate_benchmark
from bsr_hub.data.resizers import OPENCV_RESIZERS
from bsr_hub.evaluation.robustness import SUITE_JPEG_QUALITIES, SUITE_RESIZERS, evaluate_robustness, robustness_suite


def test_the_suite_is_every_resizer_alone_and_with_each_jpeg_quality(monkeypatch):
    suite, skipped = robustness_suite(with_opencv=True)
    assert [d.name for d in suite][:3] == ["matlab-bicubic", "matlab-bicubic+jpeg90", "matlab-bicubic+jpeg75"]
    assert len(suite) == len(SUITE_RESIZERS) * len(SUITE_JPEG_QUALITIES) and not skipped
    suite, skipped = robustness_suite(with_opencv=False)
    assert set(skipped) == set(OPENCV_RESIZERS) and all("OpenCV" in why for why in skipped.values())
    assert not any(d.resizer in OPENCV_RESIZERS for d in suite)


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


def test_bsr_hub_list_says_what_each_checkpoint_is_for(capsys):
    from bsr_hub.commands.main import main

    assert main(["list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("bsr-")}
    assert lines["bsr-lite-x2-robust"].rstrip().endswith("real")
    assert lines["bsr-lite-x2"].rstrip().endswith("benchmark")


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
