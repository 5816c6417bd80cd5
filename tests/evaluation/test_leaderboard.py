"""`bsr-hub eval --leaderboard`: what a `--model` value names (bsr_hub/evaluation/loading.py), and several models
scored in one run into one table, one plot and one JSON (bsr_hub/evaluation/leaderboard.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_benchmark_images
from PIL import Image

from bsr_hub.commands.main import main
from bsr_hub.data import EvaluationError
from bsr_hub.evaluation import leaderboard
from bsr_hub.evaluation.loading import ModelSpec

pytest.importorskip("datasets", reason="evaluation needs the train extra (datasets)")


@pytest.mark.parametrize(
    ("text", "kind", "target", "algorithm"),
    [
        ("bicubic", "bicubic", "bicubic", None),
        ("bsr-lite-x2", "bsr", "bsr-lite-x2", None),
        ("me/my-bsr", "bsr", "me/my-bsr", None),
        ("models/x.onnx", "onnxruntime", "models/x.onnx", None),
        ("onnxruntime:models/x.graph", "onnxruntime", "models/x.graph", None),
        ("opencv:x.onnx", "opencv", "x.onnx", None),
        ("dnn_superres:espcn:ESPCN_x2.onnx", "dnn_superres", "ESPCN_x2.onnx", "espcn"),
    ],
)
def test_a_model_value_names_its_runtime(text, kind, target, algorithm):
    assert ModelSpec.parse(text) == ModelSpec(text, kind, target, algorithm)


@pytest.mark.parametrize(
    ("text", "message"),
    [("dnn_superres:ESPCN_x2.onnx", "name a dnn_superres model dnn_superres:ALGORITHM:PATH"),
     ("dnn_superres:srgan:x.onnx", "ALGORITHM one of edsr, espcn, fsrcnn, lapsrn"),
     ("FSRCNN_x2.pb", "OpenCV 5 reads ONNX files only there")],
)
def test_values_that_name_nothing_runnable_say_how_to_name_it(text, message):
    with pytest.raises(EvaluationError, match=message):
        ModelSpec.parse(text)


def test_dnn_superres_models_are_scored_last_and_reported_in_order(monkeypatch, tmp_path):
    """Creating OpenCV's DnnSuperResImpl replaces the DepthToSpace layer of every OpenCV net read after it, so those
    models load and run after the others; the entries keep the order of the command line. Every model is loaded
    before the first is scored: one that cannot load stops the run before any scoring."""
    loaded, scored = [], []

    def fake_load(name, scale, device):
        if name == "broken":
            raise EvaluationError("broken: cannot load")
        loaded.append(name)
        return name

    def fake_score(name, model, benchmarks, scale, **options):
        assert model == name
        scored.append(name)
        return name

    monkeypatch.setattr(leaderboard, "load_model", fake_load)
    monkeypatch.setattr(leaderboard, "score_model", fake_score)
    monkeypatch.chdir(tmp_path)
    for name in ("a.onnx", "b.onnx", "c.onnx"):
        Path(name).touch()
    names = ["dnn_superres:edsr:a.onnx", "b.onnx", "opencv:c.onnx", "bicubic"]
    assert leaderboard.run_leaderboard(names, [], 2) == names
    assert loaded == scored == ["b.onnx", "opencv:c.onnx", "bicubic", "dnn_superres:edsr:a.onnx"]
    with pytest.raises(EvaluationError, match="--model d.onnx: no such file"):  # before any model is scored
        leaderboard.run_leaderboard(["bicubic", "d.onnx"], [], 2)
    with pytest.raises(EvaluationError, match="broken: cannot load"):
        leaderboard.run_leaderboard(["bicubic", "broken"], [], 2)
    assert scored == ["b.onnx", "opencv:c.onnx", "bicubic", "dnn_superres:edsr:a.onnx"]  # nothing more was scored


@pytest.fixture
def bench_and_models(tmp_path, tiny_checkpoint, tiny_model) -> tuple[Path, list[str]]:
    pytest.importorskip("onnxruntime", reason="the export extra is not installed: pip install -e '.[export]'")
    from bsr_hub.models.export import export_onnx

    write_benchmark_images(tmp_path / "benchmarks" / "Syn", count=2)
    onnx_path = export_onnx(tiny_model, tmp_path / "tiny.onnx", verify=False).onnx_path
    models = [str(tiny_checkpoint), str(onnx_path), "bicubic"]
    try:
        import cv2  # noqa: F401

        models.insert(2, f"opencv:{onnx_path}")
    except ImportError:
        pass
    return tmp_path / "benchmarks", models


def test_the_leaderboard_writes_one_table_one_plot_and_the_results(tmp_path, bench_and_models, capsys):
    bench, models = bench_and_models
    out = tmp_path / "board"
    status = main(["eval", "--model", *models, "--scale", "2", "--benchmarks", "Syn", "--data-dir", str(bench),
                   "--leaderboard", str(out), "-q"])
    assert status == 0, capsys.readouterr().err
    table = (out / "leaderboard.md").read_text()
    assert table == capsys.readouterr().out.rstrip("\n") + "\n"  # printed as written
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0] == ("| model | kind | device | scale | parameters | Syn PSNR | Syn SSIM | s / image | "
                        "CPU s / image |")
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[1:])}
    assert set(rows) == set(models)
    checkpoint, graph = rows[models[0]], rows[models[1]]
    assert (checkpoint[1], graph[1], rows["bicubic"][1]) == ("pytorch", "onnxruntime", "bicubic")
    assert checkpoint[4] == graph[4] != "-" and rows["bicubic"][4] == "0"  # the export's initializers: its weights
    assert abs(float(checkpoint[5]) - float(graph[5])) <= 0.01
    assert all(float(row[7]) > 0 and float(row[8]) > 0 for row in rows.values())
    for name, row in rows.items():
        if name.startswith("opencv:"):
            assert row[1] == "opencv-dnn" and abs(float(row[5]) - float(graph[5])) <= 0.01
    assert "thread" in table and "load average" in table and "--leaderboard" in table  # how it was timed and run
    with Image.open(out / "leaderboard.png") as plot:
        assert plot.format == "PNG" and plot.width > 300
    document = json.loads((out / "leaderboard.json").read_text())
    assert [m["model"] for m in document["models"]] == models
    assert all(m["results"][0]["num_images"] == 3 for m in document["models"])  # 2 colour images and a grey one


@pytest.mark.parametrize(
    ("extra", "message"),
    [([], "scoring several models needs --leaderboard DIR"),
     (["--leaderboard", "board", "--output", "r.json"], "drop --output")],
)
def test_several_models_need_the_leaderboard_and_it_writes_its_own_files(bench_dir, extra, message, capsys):
    status = main(["eval", "--model", "bicubic", "bicubic", "--scale", "2", "--data-dir", str(bench_dir),
                   "--benchmarks", "Syn", *extra])
    assert status == 2 and message in capsys.readouterr().err
