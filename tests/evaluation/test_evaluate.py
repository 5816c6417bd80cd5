"""The evaluator: the published bicubic baseline, self-ensemble, errors, JSON, model cards, two processes."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from conftest import write_benchmark_images
from PIL import Image

pytest.importorskip("datasets", reason="evaluation needs the train extra (datasets)")

from bsr_hub import BSRConfig, BSRModel
from bsr_hub.commands.eval import eval_main as main
from bsr_hub.data.benchmarks import EvaluationError, load_benchmark
from bsr_hub.evaluation.bicubic import BicubicModel
from bsr_hub.evaluation.protocol import evaluate_benchmark
from bsr_hub.models.card import update_card
from bsr_hub.models.records import RecordError, merge_results

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
BENCHMARKS = SHARED_DATA / "benchmarks"
requires_benchmarks = pytest.mark.skipif(
    not (BENCHMARKS / "Set5").is_dir(), reason=f"benchmark images not found at {BENCHMARKS} (../shared/data)"
)

# METHOD.md section 7: the published bicubic baseline, and the tolerance an evaluator must meet.
PUBLISHED_BICUBIC = {
    ("Set5", 2): (33.66, 0.9299),
    ("Set5", 3): (30.39, 0.8682),
    ("Set5", 4): (28.42, 0.8104),
    ("Set14", 2): (30.24, 0.8688),
}
PSNR_TOL, SSIM_TOL = 0.02, 0.002


def _tiny_model(scale: int = 2, seed: int = 0) -> BSRModel:
    torch.manual_seed(seed)
    config = BSRConfig(scale=scale, num_features=8, num_groups=2, num_blocks=1, attention_kernel_size=3)
    return BSRModel(config).eval()


@pytest.fixture(autouse=True)
def _one_thread():
    # These workloads are small; on a shared 2-core machine, two OpenMP threads competing with another busy
    # process make elementwise ops tens of times slower (measured: SSIM of 500x480 0.21 s vs 0.05 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_ckpt(tmp_path: Path) -> Path:
    folder = tmp_path / "ckpt"
    _tiny_model().save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------------------ the published table


@requires_benchmarks
@pytest.mark.parametrize("benchmark, scale", list(PUBLISHED_BICUBIC))
def test_bicubic_baseline_reproduces_the_published_table(benchmark: str, scale: int) -> None:
    # Set14 x2 includes the grey bridge.png trap: with YCbCr scaling it would come out ~0.09 dB high.
    result = evaluate_benchmark(BicubicModel(scale), load_benchmark(benchmark, BENCHMARKS), scale, progress=False)
    psnr, ssim = PUBLISHED_BICUBIC[(benchmark, scale)]
    assert result.num_images == len(list((BENCHMARKS / benchmark).glob("*.png")))
    assert abs(result.psnr - psnr) <= PSNR_TOL, f"{benchmark} x{scale}: {result.psnr:.3f} vs {psnr}"
    assert abs(result.ssim - ssim) <= SSIM_TOL, f"{benchmark} x{scale}: {result.ssim:.4f} vs {ssim}"


# ------------------------------------------------------------------------------------------ self-ensemble


def test_self_ensemble_of_the_bicubic_model_changes_nothing(bench_dir: Path) -> None:
    # Float bicubic commutes with flips and 90-degree rotations: if the 8 transforms are inverted correctly,
    # their mean is the plain output, so the numbers agree.
    bench = load_benchmark("Syn", bench_dir)
    model = BicubicModel(2, uint8=False)
    plain = evaluate_benchmark(model, bench, 2, progress=False)
    ensemble = evaluate_benchmark(model, bench, 2, self_ensemble=True, progress=False)
    for a, b in zip(plain.per_image, ensemble.per_image):
        assert a["psnr"] == pytest.approx(b["psnr"], abs=1e-6), a["name"]
        assert a["ssim"] == pytest.approx(b["ssim"], abs=1e-8), a["name"]


def test_self_ensemble_of_a_random_network_differs(tmp_path: Path) -> None:
    bench = load_benchmark("One", write_benchmark_images(tmp_path / "One", count=1, grey=False).parent)
    model = _tiny_model()
    plain = evaluate_benchmark(model, bench, 2, progress=False)
    ensemble = evaluate_benchmark(model, bench, 2, self_ensemble=True, progress=False)
    assert abs(plain.psnr - ensemble.psnr) > 1e-3


# ------------------------------------------------------------------------------------------ the command


def test_saved_images_replace_a_planted_link_instead_of_writing_through_it(bench_dir: Path, tiny_ckpt: Path,
                                                                           tmp_path: Path) -> None:
    """Issue 23: every file written into a user's folder is written beside its name and renamed. A link planted
    at an output's name (--save-images into a shared folder) must not make evaluation overwrite its target."""
    victim = tmp_path / "victim.txt"
    victim.write_text("not yours")
    save = tmp_path / "sr"
    (save / "Syn" / "x2").mkdir(parents=True)
    (save / "Syn" / "x2" / "img0.png").symlink_to(victim)
    argv = ["--model", str(tiny_ckpt), "--benchmarks", "Syn", "--data-dir", str(bench_dir), "--scale", "2",
            "--save-images", str(save), "-q"]
    assert main(argv) == 0
    assert victim.read_text() == "not yours"
    written = save / "Syn" / "x2" / "img0.png"
    assert not written.is_symlink() and Image.open(written).size == (40, 44)


def test_json_output_has_the_documented_shape(bench_dir: Path, tiny_ckpt: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "results.json"
    save = tmp_path / "sr"
    argv = ["--model", str(tiny_ckpt), "--benchmarks", "Syn", "--data-dir", str(bench_dir), "--scale", "2",
            "--output", str(out), "--save-images", str(save), "-q"]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert data["model"] == str(tiny_ckpt)
    (r,) = data["results"]
    assert {k: r[k] for k in ("benchmark", "scale", "degradation", "self_ensemble", "num_images")} == {
        "benchmark": "Syn", "scale": 2, "degradation": "BI", "self_ensemble": False, "num_images": 4
    }
    assert [p["name"] for p in r["per_image"]] == ["grey", "img0", "img1", "img2"]
    assert r["psnr"] == pytest.approx(np.mean([p["psnr"] for p in r["per_image"]]))
    assert r["ssim"] == pytest.approx(np.mean([p["ssim"] for p in r["per_image"]]))
    assert "| Syn | x2 | BI | no | 4 |" in capsys.readouterr().out
    saved = Image.open(save / "Syn" / "x2" / "img0.png")
    assert saved.size == (40, 44)  # 41x45 mod-cropped to multiples of 2


def test_bd_and_tiling_run(tmp_path: Path, tiny_ckpt: Path) -> None:
    bench = load_benchmark("One", write_benchmark_images(tmp_path / "One", count=1, grey=False).parent)
    model = BSRModel.from_pretrained(tiny_ckpt)
    whole = evaluate_benchmark(model, bench, 2, "BD", progress=False)
    tiled = evaluate_benchmark(model, bench, 2, "BD", tile=12, progress=False)
    assert whole.degradation == "BD" and whole.num_images == 1
    assert tiled.psnr == pytest.approx(whole.psnr, abs=0.05)  # tiles are blended, within 8-bit rounding


def test_model_of_another_scale_is_an_error(bench_dir: Path, tiny_ckpt: Path, capsys) -> None:
    status = main(["--model", str(tiny_ckpt), "--benchmarks", "Syn", "--data-dir", str(bench_dir), "--scale", "3"])
    assert status == 2
    err = capsys.readouterr().err
    assert "x2 model" in err and "--scale 3" in err


def test_missing_and_empty_benchmark_folders_are_named(tmp_path: Path, capsys) -> None:
    (tmp_path / "Empty").mkdir()
    (tmp_path / "Empty" / "notes.txt").write_text("no images here")
    for name in ("Missing", "Empty"):
        status = main(["--model", "bicubic", "--benchmarks", name, "--data-dir", str(tmp_path), "--scale", "2"])
        assert status == 2
        err = capsys.readouterr().err
        assert str(tmp_path / name) in err
    with pytest.raises(EvaluationError, match="holds no image files"):
        load_benchmark("Empty", tmp_path)


def test_unreadable_images_are_reported_not_skipped(bench_dir: Path, tmp_path: Path, capsys) -> None:
    (bench_dir / "Syn" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    out = tmp_path / "r.json"
    status = main(["--model", "bicubic", "--benchmarks", "Syn", "--data-dir", str(bench_dir), "--scale", "2",
                   "--output", str(out), "-q"])
    assert status == 1
    assert "broken" in capsys.readouterr().err
    (r,) = json.loads(out.read_text())["results"]
    assert r["num_images"] == 4 and [f["name"] for f in r["failed"]] == ["broken"]


def test_bicubic_needs_a_scale(bench_dir: Path, capsys) -> None:
    assert main(["--model", "bicubic", "--benchmarks", "Syn", "--data-dir", str(bench_dir)]) == 2
    assert "--scale" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ model cards


def test_update_card_rerun_replaces_values_and_keeps_the_rest(bench_dir: Path, tiny_ckpt: Path) -> None:
    from huggingface_hub import ModelCard

    (tiny_ckpt / "training.json").write_text(json.dumps({"data": "T91 (91 images)", "steps": 1234}))
    write_benchmark_images(bench_dir / "Other", count=2, grey=False, seed=5)
    base = ["--model", str(tiny_ckpt), "--data-dir", str(bench_dir), "--scale", "2", "-q", "--update-card", str(tiny_ckpt)]
    assert main([*base, "--benchmarks", "Syn", "Other"]) == 0
    first = json.loads((tiny_ckpt / "eval_results.json").read_text())["results"]
    first_syn = next(r for r in first if r["benchmark"] == "Syn")

    # New images under the same benchmark name: the re-run must replace Syn's numbers and keep Other's.
    for f in (bench_dir / "Syn").iterdir():
        f.unlink()
    write_benchmark_images(bench_dir / "Syn", count=2, grey=False, seed=9)
    assert main([*base, "--benchmarks", "Syn"]) == 0

    stored = json.loads((tiny_ckpt / "eval_results.json").read_text())["results"]
    assert sorted(r["benchmark"] for r in stored) == ["Other", "Syn"]
    syn = next(r for r in stored if r["benchmark"] == "Syn")
    assert syn["num_images"] == 2 and syn["psnr"] != first_syn["psnr"]
    assert syn["bicubic_psnr"] is not None and "--benchmarks Syn" in syn["command"]

    card = ModelCard.load(tiny_ckpt / "README.md")
    values = {(e.dataset_name, e.metric_type): e.metric_value for e in card.data.eval_results}
    assert len(values) == 4  # two benchmarks x (psnr, ssim), no stale duplicates
    assert values[("Syn (x2, BI)", "psnr")] == round(syn["psnr"], 2)
    assert all(e.task_type == "image-to-image" for e in card.data.eval_results)
    text = (tiny_ckpt / "README.md").read_text()
    assert "T91 (91 images)" in text and "1234" in text  # training info survives the re-render
    assert f"{syn['psnr']:.2f}" in text and f"{first_syn['psnr']:.2f}" not in text


def test_update_card_refuses_failed_or_mismatched_results(tiny_ckpt: Path) -> None:
    entry = {"benchmark": "Syn", "scale": 2, "degradation": "BI", "self_ensemble": False, "num_images": 1,
             "psnr": 30.0, "ssim": 0.9, "per_image": []}
    with pytest.raises(RecordError, match="unreadable"):
        update_card(tiny_ckpt, [{**entry, "failed": [{"name": "x", "error": "bad"}]}])
    with pytest.raises(RecordError, match="x3"):
        update_card(tiny_ckpt, [{**entry, "scale": 3}])


def test_self_ensemble_results_are_their_own_metrics_in_the_model_index(tiny_ckpt: Path) -> None:
    from huggingface_hub import ModelCard

    from bsr_hub.models.card import model_index_mismatches

    plain = {"benchmark": "Set5", "scale": 2, "degradation": "BI", "self_ensemble": False, "num_images": 5,
             "psnr": 37.2237, "ssim": 0.95752, "per_image": []}
    ensemble = {**plain, "self_ensemble": True, "psnr": 37.4101, "ssim": 0.95831}
    bd = {**plain, "degradation": "BD", "psnr": 33.1, "ssim": 0.91}
    card_path = update_card(tiny_ckpt, [plain, ensemble, bd], model_name="me/tiny")

    parsed = ModelCard.load(card_path).data.eval_results  # the Hub's own parser
    values = {(e.dataset_type, e.dataset_config, e.metric_type): e.metric_value for e in parsed}
    assert len(values) == len(parsed) == 6  # nothing merged into another entry, nothing repeated
    assert values[("Set5", "x2-BI", "psnr")] == 37.22 and values[("Set5", "x2-BI", "psnr-self-ensemble")] == 37.41
    assert values[("Set5", "x2-BD", "psnr")] == 33.1
    stored = json.loads((tiny_ckpt / "eval_results.json").read_text())["results"]
    assert model_index_mismatches(card_path, stored) == []
    # The check has teeth: a value edited in the card by hand is found.
    card_path.write_text(card_path.read_text().replace("37.41", "37.5", 1))
    assert any("37.5" in p for p in model_index_mismatches(card_path, stored))


def test_card_lineage_total_and_how_to_use_point_at_the_right_weights(tmp_path: Path, tiny_ckpt: Path) -> None:
    entry = {"benchmark": "Syn", "scale": 2, "degradation": "BI", "self_ensemble": False, "num_images": 1,
             "psnr": 30.0, "ssim": 0.9, "per_image": []}
    stages = [
        {"model": "bsr-lite-x2", "init_from": None, "steps": 7000, "batch": 16, "wall_time_s": 4980,
         "hardware": "2 CPU cores", "command": "train a"},
        {"model": "bsr-lite-x3", "init_from": "bsr-lite-x2", "steps": 3000, "batch": 16, "wall_time_s": 3600,
         "hardware": "2 CPU cores", "command": "train b"},
    ]
    changes = [{"step": 1500, "field": "max_steps", "old": 4000, "new": 3000}]
    (tiny_ckpt / "training.json").write_text(json.dumps({"data": "T91 (91 images)", "steps": 3000, "lineage": stages,
                                                         "resume_changes": changes}))
    # A user's model saved under a bundled checkpoint's name must not send its readers to the bundled weights, nor
    # to this machine's absolute path: the card travels.
    text = update_card(tiny_ckpt, [entry], model_name="bsr-lite-x2").read_text()
    assert 'from_pretrained("path/to/ckpt")  # the folder holding this card' in text and "--model path/to/ckpt" in text
    assert str(tiny_ckpt) not in text and "pypi.org" not in text and "pip install -e ." in text
    assert "10,000 steps, 2 h 23 min, in 2 stages" in text
    assert "at step 1500: `max_steps` 4000 -> 3000" in text
    assert "| 1 | bsr-lite-x2 | scratch | 7,000 | 16 | 1 h 23 min |" in text
    assert "| 2 | bsr-lite-x3 | bsr-lite-x2 | 3,000 | 16 | 1 h 00 min |" in text
    hub = update_card(tiny_ckpt, [entry], model_name="me/my-bsr").read_text()
    assert 'from_pretrained("me/my-bsr")' in hub


def test_a_result_below_bicubic_is_flagged_in_the_card(tiny_ckpt: Path) -> None:
    """Issue 20: a model worse than bicubic on a benchmark says so in words, naming the set and both numbers."""
    entry = {"benchmark": "Set5", "scale": 2, "degradation": "BI", "self_ensemble": False, "num_images": 5,
             "psnr": 33.634, "ssim": 0.93, "bicubic_psnr": 33.686, "bicubic_ssim": 0.9299, "per_image": []}
    above = {**entry, "benchmark": "Set14", "psnr": 30.5, "bicubic_psnr": 30.2}
    tie = {**entry, "benchmark": "BSD100", "psnr": 29.561, "bicubic_psnr": 29.558}  # 29.56 both, as the card shows
    text = update_card(tiny_ckpt, [entry, above, tie], model_name="my-run").read_text()
    evaluation = text[text.index("## Evaluation"):text.index("## Limitations")]
    assert "**Below bicubic on Set5** (x2, BI): PSNR 33.63 dB against 33.69 dB for plain bicubic" in evaluation
    assert evaluation.count("Below bicubic") == 1  # not Set14 (above), not BSD100 (equal as shown)
    text = update_card(tiny_ckpt, [{**entry, "psnr": 34.0}]).read_text()
    assert "Below bicubic" not in text  # measured again, above bicubic: the flag goes


def test_merge_results_keys() -> None:
    a = {"benchmark": "Set5", "scale": 2, "degradation": "BI", "self_ensemble": False, "psnr": 1.0}
    b = {**a, "self_ensemble": True, "psnr": 2.0}
    c = {**a, "psnr": 3.0}
    merged = merge_results([a, b], [c])
    assert sorted(r["psnr"] for r in merged) == [2.0, 3.0]


# ------------------------------------------------------------------------------------------ two processes


def _two_process_eval(bench_dir: str, ckpt: str, out: str) -> None:
    from accelerate import Accelerator

    # debug_launcher forks; a child entering the OpenMP pool its parent already used hangs in its first conv.
    # One thread per process keeps torch off that pool (two processes share two cores anyway). Accelerate
    # sets the thread count when its state is created, so this goes after that, and in OMP_NUM_THREADS.
    os.environ["OMP_NUM_THREADS"] = "1"
    assert Accelerator(cpu=True).num_processes == 2  # really two synchronised processes, not one alone
    torch.set_num_threads(1)
    status = main(["--model", ckpt, "--benchmarks", "Syn", "--data-dir", bench_dir, "--scale", "2",
                   "--output", out, "-q"])
    assert status == 0


def test_two_processes_give_the_numbers_of_one(bench_dir: Path, tiny_ckpt: Path, tmp_path: Path) -> None:
    from accelerate import debug_launcher

    write_benchmark_images(bench_dir / "Syn", count=5, grey=True, seed=3)  # 6 images: uneven shares are exercised too
    (bench_dir / "Syn" / "img4.png").unlink()  # 5 images over 2 processes: Accelerate pads one, gather drops it
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    assert main(["--model", str(tiny_ckpt), "--benchmarks", "Syn", "--data-dir", str(bench_dir), "--scale", "2",
                 "--output", str(one), "-q"]) == 0
    debug_launcher(_two_process_eval, args=(str(bench_dir), str(tiny_ckpt), str(two)), num_processes=2)
    r1 = json.loads(one.read_text())["results"][0]
    r2 = json.loads(two.read_text())["results"][0]
    assert r2["num_images"] == r1["num_images"] == 5
    assert [p["name"] for p in r2["per_image"]] == [p["name"] for p in r1["per_image"]]
    for a, b in zip(r1["per_image"], r2["per_image"]):
        assert a["psnr"] == pytest.approx(b["psnr"], abs=1e-9) and a["ssim"] == pytest.approx(b["ssim"], abs=1e-12)
    assert r2["psnr"] == pytest.approx(r1["psnr"], abs=1e-9)
    assert not math.isnan(r2["ssim"])


def test_bsr_hub_eval_subcommand(bench_dir: Path, capsys) -> None:
    from bsr_hub.commands.main import main as cli_main

    assert cli_main(["eval", "--model", "bicubic", "--benchmarks", "Syn", "--data-dir", str(bench_dir), "--scale", "3", "-q"]) == 0
    assert "| bicubic | Syn | x3 | BI | no | 4 |" in capsys.readouterr().out


def test_update_card_refuses_another_models_numbers(bench_dir: Path, tiny_ckpt: Path, tmp_path: Path, capsys) -> None:
    # The numbers of --model must never land in a different checkpoint's card (nor bicubic's in any card).
    other = tmp_path / "other"
    _tiny_model(seed=123).save_pretrained(other)  # same architecture and scale, other weights
    card_before = (tiny_ckpt / "README.md").read_text()
    common = ["--benchmarks", "Syn", "--data-dir", str(bench_dir), "--scale", "2", "-q", "--update-card", str(tiny_ckpt)]
    assert main(["--model", str(other), *common]) == 2
    assert "not the evaluated model" in capsys.readouterr().err
    assert main(["--model", "bicubic", *common]) == 2
    assert "is not that checkpoint" in capsys.readouterr().err
    assert (tiny_ckpt / "README.md").read_text() == card_before
    assert not (tiny_ckpt / "eval_results.json").exists()


def test_an_image_reconstructed_exactly_is_flagged_and_kept_out_of_the_means(tmp_path):
    """Issue 23 (9): one flat image gave the benchmark an infinite mean PSNR (`.inf` in the model-index,
    `Infinity` in eval_results.json, which is not JSON), hiding every other image's score."""
    import json

    import numpy as np
    from PIL import Image

    from bsr_hub.data.benchmarks import load_benchmark
    from bsr_hub.evaluation.bicubic import BicubicModel
    from bsr_hub.evaluation.protocol import evaluate_benchmark, markdown_table

    folder = tmp_path / "Flat"
    folder.mkdir()
    Image.new("RGB", (48, 48), (120, 130, 140)).save(folder / "flat.png")  # bicubic gives it back exactly
    textured = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    Image.fromarray(textured).save(folder / "noise.png")
    result = evaluate_benchmark(BicubicModel(2), load_benchmark("Flat", tmp_path), 2, progress=False).to_dict()
    assert result["identical"] == ["flat"] and result["num_images"] == 1
    assert [r["name"] for r in result["per_image"]] == ["noise"]
    assert np.isfinite(result["psnr"]) and result["psnr"] == result["per_image"][0]["psnr"]
    json.loads(json.dumps(result, allow_nan=False))  # valid JSON: no Infinity
    assert "(+1 reconstructed exactly, not in the means: flat)" in markdown_table("bicubic", [result])
