"""`bsr-hub eval --model FILE`: an ONNX export scores as its PyTorch model on real Set5, and a file that cannot be
scored as asked (wrong or missing scale, unreadable, no dnn_superres) fails in one line that says why."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA, requires_shared_data

from bsr_hub.commands.main import main

pytest.importorskip("datasets", reason="evaluation needs the train extra (datasets)")
onnx = pytest.importorskip("onnx", reason="the export extra is not installed: pip install -e '.[export]'")
pytest.importorskip("onnxruntime", reason="the export extra is not installed: pip install -e '.[export]'")

MODEL = "bsr-tiny-x2"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """The bundled bsr-tiny-x2, exported by `bsr-hub export`."""
    path = tmp_path_factory.mktemp("eval-onnx") / f"{MODEL}.onnx"
    assert main(["export", MODEL, "-o", str(path), "--no-verify"]) == 0
    return path


def _scores(out: Path, model: str, *extra: str) -> list[dict]:
    status = main(["eval", "--model", model, "--benchmarks", "Set5", "--data-dir", str(SHARED_DATA / "benchmarks"),
                   "--output", str(out), "-q", *extra])
    assert status == 0
    (result,) = json.loads(out.read_text())["results"]
    return result["per_image"]


@requires_shared_data
def test_an_onnx_export_scores_as_its_pytorch_model_on_set5(exported, tmp_path):
    """The same weights through ONNX Runtime and through PyTorch, under the same protocol: every Set5 image within
    0.01 dB (the export mirrors its own border, so the graph sees what the network sees: in practice 1e-5 dB)."""
    torch_scores = _scores(tmp_path / "pytorch.json", MODEL)
    onnx_scores = _scores(tmp_path / "onnx.json", str(exported))  # the scale from the file's metadata
    assert [s["name"] for s in onnx_scores] == [s["name"] for s in torch_scores] and len(torch_scores) == 5
    for mine, theirs in zip(onnx_scores, torch_scores):
        assert abs(mine["psnr"] - theirs["psnr"]) <= 0.01, mine["name"]
        assert abs(mine["ssim"] - theirs["ssim"]) <= 1e-4, mine["name"]
    assert sum(s["psnr"] for s in torch_scores) / 5 > 36  # a trained model, not a blank one


def _without_metadata(exported: Path, folder: Path) -> Path:
    graph = onnx.load(str(exported))
    del graph.metadata_props[:]
    onnx.save(graph, str(folder / "bare.onnx"))
    return folder / "bare.onnx"


def test_files_that_cannot_be_scored_as_asked_fail_in_one_line(exported, bench_dir, tmp_path, capsys):
    (tmp_path / "broken.onnx").write_bytes(b"not an ONNX graph")
    bare = _without_metadata(exported, tmp_path)
    cases = [
        ([str(exported), "--scale", "3"], "is a x2 model (its ONNX metadata says scale 2) but --scale 3 was asked"),
        ([str(bare)], "carries no scale in its metadata (bsr-hub export writes one): pass --scale"),
        ([str(bare), "--scale", "3"], "a 32x32 input came back as an array of shape (1, 3, 64, 64), not (1, 3, 96, 96)"),
        ([str(tmp_path / "broken.onnx"), "--scale", "2"], "broken.onnx is not a readable ONNX model"),
        ([str(tmp_path / "missing.onnx")], "missing.onnx is not a file"),
        ([f"dnn_superres:{exported}"], "name a dnn_superres model dnn_superres:ALGORITHM:PATH"),
    ]
    for argv, message in cases:
        status = main(["eval", "--model", *argv, "--data-dir", str(bench_dir), "--benchmarks", "Syn", "-q"])
        err = capsys.readouterr().err
        assert status == 2 and message in err, (argv, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err  # one line, no traceback


def test_a_bare_graph_scores_with_its_scale_given_and_opencv_runs_it_too(exported, bench_dir, tmp_path, capsys):
    bare = _without_metadata(exported, tmp_path)
    models = [str(bare)]
    try:
        import cv2  # noqa: F401

        models.append(f"opencv:{bare}")
    except ImportError:
        pass
    psnrs = []
    for model in models:
        out = tmp_path / "r.json"
        assert main(["eval", "--model", model, "--scale", "2", "--data-dir", str(bench_dir), "--benchmarks", "Syn",
                     "-q", "--output", str(out)]) == 0, capsys.readouterr().err
        psnrs.append(json.loads(out.read_text())["results"][0]["psnr"])
    assert max(psnrs) - min(psnrs) <= 0.01


def test_a_dnn_superres_model_says_what_opencv_lacks_or_cannot_run(exported, bench_dir, capsys):
    """Without opencv-contrib the error names the package that has dnn_superres; with it, a bsr-hub export is not a
    dnn_superres model (its convention is not edsr's), and the error says to score it as opencv:PATH."""
    cv2 = pytest.importorskip("cv2", reason="opencv is not installed (pip install opencv-python-headless)")
    argv = ["eval", "--model", f"dnn_superres:edsr:{exported}", "--scale", "2", "--data-dir", str(bench_dir),
            "--benchmarks", "Syn", "-q"]
    if hasattr(cv2, "dnn_superres"):  # in a process of its own: it replaces OpenCV's DepthToSpace for the rest of one
        run = subprocess.run([sys.executable, "-m", "bsr_hub.commands.main", *argv], capture_output=True, text=True,
                             timeout=600, check=False)
        status, err, expected = run.returncode, run.stderr, "score that as opencv:PATH"
    else:
        status, err = main(argv), capsys.readouterr().err
        expected = "pip install opencv-contrib-python-headless"
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert status == 2 and len(lines) == 1 and expected in lines[0], err


def test_repeated_model_flags_add_up():
    """`--model a --model b c` names three models (argparse's default would keep only the last flag's values)."""
    import argparse

    from bsr_hub.commands.eval import add_eval_arguments

    assert add_eval_arguments(argparse.ArgumentParser()).parse_args(
        ["--model", "a", "--model", "b", "c"]).model == ["a", "b", "c"]
