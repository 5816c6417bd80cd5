"""The runtimes that `bsr-hub eval` scores model files with (bsr_hub/inference/runtimes.py): a bsr-hub export in ONNX
Runtime and in OpenCV's dnn as it runs in PyTorch, graphs of a fixed size, the layouts that cannot be fed, and
OpenCV's dnn_superres where opencv-contrib is installed (its error message where it is not)."""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, tiny_config

from bsr_hub import BSRModel
from bsr_hub.core import MissingExtraError

onnx = pytest.importorskip("onnx", reason="the export extra is not installed: pip install -e '.[export]'")
pytest.importorskip("onnxruntime", reason="the export extra is not installed: pip install -e '.[export]'")

from onnx_graphs import nearest_graph

from bsr_hub.inference import runtimes
from bsr_hub.models.export import export_onnx


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[BSRModel, Path]:
    torch.manual_seed(0)
    model = BSRModel(tiny_config()).eval()
    path = tmp_path_factory.mktemp("runtimes") / "tiny.onnx"
    export_onnx(model, path)
    return model, path


def test_an_export_says_its_scale_and_runs_as_its_pytorch_model(exported):
    """The export's metadata gives the scale and says the graph mirrors its own border, so `upscale` adds none and
    the graph sees what the PyTorch model sees: the same output to float rounding in one pass. In tiles the graph
    also mirrors the tiles' inner sides, which the cross-fade hides: within a grey level of PyTorch's tiles."""
    model, path = exported
    facts = runtimes.read_graph_facts(path)
    assert facts.scale == 2 and facts.border_context == 0
    assert facts.parameters == sum(p.numel() for p in model.parameters())
    graph = runtimes.OnnxRuntimeModel(path, facts.scale, border_context=facts.border_context, threads=1)
    x = torch.rand(1, 3, 37, 45)
    assert (graph.upscale(x, tile=None) - model.upscale(x, tile=None, backend="eager")).abs().max() < 1e-5
    assert (graph.upscale(x, tile=24) - model.upscale(x, tile=24, backend="eager")).abs().max() <= 1 / 255


def test_opencv_dnn_runs_the_export_as_onnx_runtime_does(exported):
    pytest.importorskip("cv2", reason="opencv is not installed (pip install opencv-python-headless)")
    _, path = exported
    x = torch.rand(1, 3, 30, 26)
    ort_model = runtimes.OnnxRuntimeModel(path, 2, border_context=0)
    cv_model = runtimes.OpenCVDnnModel(path, 2, border_context=0)
    assert cv_model.kind == "opencv-dnn" and cv_model.device.type == "cpu"
    assert (cv_model.upscale(x, tile=None) - ort_model.upscale(x, tile=None)).abs().max() < 1e-5


@pytest.mark.parametrize("float16", [False, True], ids=["float32", "float16"])
def test_a_fixed_size_graph_is_covered_in_windows_of_its_size(tmp_path, float16):
    """A graph whose input is fixed at 16x16 scores images of any size: larger ones in 16x16 windows, smaller ones
    mirrored out to 16x16, each output pixel from one window (nearest neighbour, so exactly as a dynamic graph)."""
    path = nearest_graph(tmp_path / "fixed.onnx", 2, shape=[1, 3, 16, 16], float16=float16)
    graph = runtimes.OnnxRuntimeModel(path, 2)
    assert graph.fixed_size == (16, 16)
    for h, w in [(40, 37), (10, 12), (16, 50)]:
        x = torch.rand(1, 3, h, w)
        difference = (graph(x) - F.interpolate(x, scale_factor=2, mode="nearest")).abs().max()
        assert difference <= (2**-11 if float16 else 0), (h, w)  # float16: the input's rounding alone


def test_windows_cover_each_pixel_once_away_from_inner_sides():
    for length, size in [(40, 16), (100, 33), (17, 16), (16, 16), (5, 16)]:
        spans = runtimes._windows(length, size)
        assert spans[0][1] == 0 and spans[-1][2] == length
        assert all(a[2] == b[1] for a, b in itertools.pairwise(spans))  # kept spans meet, no gap and no overlap
        for start, keep_from, keep_to in spans:
            assert start <= keep_from < keep_to <= start + size
            margin = min(runtimes.BORDER_CONTEXT, (size - 1) // 4)
            assert keep_from == 0 or keep_from - start >= margin
            assert keep_to == length or start + size - keep_to >= margin


@pytest.mark.parametrize(
    ("shape", "message"),
    [([1, "h", "w", 3], "NHWC"), ([1, 1, "h", "w"], "a Y-only model is not supported"),
     ([4, 3, "h", "w"], "fixes its batch at 4"), ([3, "h", "w"], "3-D input")],
    ids=["nhwc", "one-channel", "batch-4", "3-d"],
)
def test_inputs_it_cannot_feed_are_clear_errors(tmp_path, shape, message):
    path = nearest_graph(tmp_path / "odd.onnx", 2, shape=shape) if len(shape) == 4 else _three_d_graph(tmp_path)
    with pytest.raises(ValueError, match=message):
        runtimes.OnnxRuntimeModel(path, 2)


def _three_d_graph(tmp_path: Path) -> Path:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "flat",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, "h", "w"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "flat.onnx"))
    return tmp_path / "flat.onnx"


def test_a_wrong_scale_fails_on_loading_and_says_what_came_back(exported):
    _, path = exported
    with pytest.raises(ValueError, match=r"a 32x32 input came back .* \(1, 3, 64, 64\), not \(1, 3, 96, 96\) for x3"):
        runtimes.OnnxRuntimeModel(path, 3)


def test_metadata_without_a_scale_or_with_a_bad_one_is_unknown(tmp_path):
    path = nearest_graph(tmp_path / "m.onnx", 2, metadata={"scale": "two", "border_context": "8"})
    assert runtimes.read_graph_facts(path) == runtimes.GraphFacts(None, 0, 4)  # the scales initializer: 4 values
    assert runtimes.read_graph_facts(nearest_graph(tmp_path / "n.onnx", 3)).scale is None
    zero = nearest_graph(tmp_path / "z.onnx", 2, metadata={"scale": "0"})
    assert runtimes.read_graph_facts(zero).scale is None  # no x0 model: --scale must say it


# ---------------------------------------------------------------------------------------------- OpenCV dnn_superres

CONTRIB_SCRIPT = textwrap.dedent("""
    # Run apart from the test process: a DnnSuperResImpl replaces OpenCV's DepthToSpace for the rest of its process.
    import sys, torch, torch.nn.functional as F
    sys.path[:0] = [sys.argv[1]]
    from onnx_graphs import nearest_graph
    from bsr_hub.inference import runtimes
    folder, export = sys.argv[2], sys.argv[3]
    edsr = runtimes.OpenCVSuperResModel(nearest_graph(f"{folder}/edsr.onnx", 2), "edsr", 2)
    x = torch.randint(0, 256, (1, 3, 20, 24)).float() / 255
    assert torch.equal(edsr(x), F.interpolate(x, scale_factor=2, mode="nearest")), "edsr"
    espcn = runtimes.OpenCVSuperResModel(nearest_graph(f"{folder}/espcn.onnx", 3, nhwc=True), "espcn", 3)
    grey = x[:, :1].expand(1, 3, 20, 24)  # no chroma: the Y model's output is the whole image
    assert (espcn(grey) - F.interpolate(grey, scale_factor=3, mode="nearest")).abs().max() <= 1 / 255 + 1e-6, "espcn"
    for path, algorithm, words in [(f"{folder}/FSRCNN_x2.pb", "fsrcnn", "reads dnn_superres models as ONNX only"),
                                   (export, "edsr", "a bsr-hub export does not follow it")]:
        try:
            runtimes.OpenCVSuperResModel(path, algorithm, 2)
        except ValueError as err:
            assert words in str(err), str(err)
        else:
            raise AssertionError(f"{path} loaded")
    print("ok")
""")


def _has_dnn_superres() -> bool:
    try:
        import cv2
    except ImportError:
        return False
    return hasattr(cv2, "dnn_superres")


@pytest.mark.skipif(not _has_dnn_superres(), reason="cv2.dnn_superres is not installed (it comes with "
                    "opencv-contrib-python-headless, not opencv-python-headless)")
def test_dnn_superres_runs_models_of_its_convention_and_refuses_pb_and_exports(tmp_path, exported):
    """OpenCV 5's dnn_superres reads ONNX only: a graph in the edsr convention (BGR less the mean) and one in the espcn
    convention (NHWC Y) run, exactly as nearest neighbour; a TensorFlow GraphDef (.pb) and a bsr-hub export fail
    with a message that says why."""
    node = b"\n\x01x" + b"\x12\x0bPlaceholder"  # NodeDef {name: "x", op: "Placeholder"}
    (tmp_path / "FSRCNN_x2.pb").write_bytes(b"\n" + bytes([len(node)]) + node)  # a TensorFlow GraphDef holding it
    run = subprocess.run([sys.executable, "-c", CONTRIB_SCRIPT, str(REPO_ROOT / "tests"), str(tmp_path),
                          str(exported[1])], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


@pytest.mark.skipif(_has_dnn_superres(), reason="cv2.dnn_superres is installed: its models are tested above")
def test_without_dnn_superres_the_error_says_what_to_install(tmp_path):
    pytest.importorskip("cv2", reason="opencv is not installed (pip install opencv-python-headless)")
    path = nearest_graph(tmp_path / "edsr.onnx", 2)
    with pytest.raises(MissingExtraError, match=r"cv2.dnn_superres is not in the installed OpenCV .* "
                                                r"pip install opencv-contrib-python-headless"):
        runtimes.OpenCVSuperResModel(path, "edsr", 2)
