"""`bsr-hub export`: the bundled model as ONNX, run by ONNX Runtime and OpenCV on real images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, requires_shared_data, tiny_config
from PIL import Image

from bsr_hub import BSRModel
from bsr_hub.commands.main import main

onnx = pytest.importorskip("onnx", reason="the export extra is not installed: pip install -e '.[export]'")
ort = pytest.importorskip("onnxruntime", reason="the export extra is not installed: pip install -e '.[export]'")

MODEL = "bsr-lite-x2"
# The x2 LR inputs of the published protocol (MATLAB bicubic of Set5): real photos, at most 256x256.
LR_IMAGES = sorted((SHARED_DATA / "reference_LR" / "RCAN_Set5_x2").glob("*_LRBI_x2.png"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "bsr-lite-x2.onnx"
    assert main(["export", MODEL, "-o", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def session(exported):
    return ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])


def to_uint8(chw: np.ndarray) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8, rounded as bsr_hub rounds."""
    return np.rint(np.clip(chw, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(1, 2, 0)


def test_scale_and_input_convention_are_recorded(exported, session):
    model = BSRModel.from_pretrained(MODEL)
    record = json.loads(exported.with_suffix(".json").read_text())
    assert record["scale"] == model.scale
    assert record["input"] == {
        "name": "input",
        "dtype": "float32",
        "layout": "NCHW",
        "shape": ["batch", 3, "height", "width"],
        "channels": "RGB",
        "range": [0.0, 1.0],
    }
    assert record["config"] == json.loads(json.dumps(model.config.to_dict()))
    # The same facts travel inside the graph, for a user who only has the .onnx file.
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["scale"]) == model.scale
    assert json.loads(meta["input"])["channels"] == "RGB"
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, out.name) == ("input", "tensor(float)", "output")
    assert inp.shape[1] == 3 and all(isinstance(d, str) for d in (inp.shape[0], inp.shape[2], inp.shape[3]))


@requires_shared_data
@pytest.mark.parametrize("path", LR_IMAGES, ids=lambda p: p.stem)
def test_onnx_runtime_matches_pytorch_on_real_images(session, path):
    model = BSRModel.from_pretrained(MODEL)
    with Image.open(path) as img:
        rgb = img.convert("RGB")
    want = np.asarray(model.upscale(rgb))  # (2H, 2W, 3) uint8
    x = (np.asarray(rgb, dtype=np.float32) / 255.0).transpose(2, 0, 1)[None]  # (1, 3, H, W)
    got = to_uint8(session.run(None, {"input": x})[0][0])
    assert got.shape == want.shape == (2 * rgb.height, 2 * rgb.width, 3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


@requires_shared_data
def test_opencv_dnn_loads_and_runs_it(exported, session):
    cv2 = pytest.importorskip("cv2", reason="opencv is not installed (pip install opencv-python-headless)")
    net = cv2.dnn.readNetFromONNX(str(exported))
    for path in LR_IMAGES[:2]:  # two sizes: the graph's height and width are dynamic in OpenCV too
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        net.setInput(cv2.dnn.blobFromImage(bgr, scalefactor=1 / 255, swapRB=True))  # -> RGB, NCHW, [0, 1]
        got = to_uint8(net.forward()[0])
        rgb = (bgr[:, :, ::-1].astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        want = to_uint8(session.run(None, {"input": np.ascontiguousarray(rgb)})[0][0])
        assert got.shape == (2 * bgr.shape[0], 2 * bgr.shape[1], 3)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((1, 4, 8, 8), np.float32), "invalid dimensions for input: input"),
        (np.zeros((3, 8, 8), np.float32), "Invalid rank for input: input"),
        (np.zeros((1, 3, 8, 8), np.uint8), r"Actual: \(tensor\(uint8\)\) , expected: \(tensor\(float\)\)"),
    ],
    ids=["four-channels", "no-batch-axis", "uint8"],
)
def test_wrong_shape_or_dtype_gets_onnx_runtimes_error(session, array, message):
    with pytest.raises(Exception, match=message):
        session.run(None, {"input": array})


def test_a_tiny_model_at_x3_and_x4_keeps_its_scale(tmp_path):
    for scale in (3, 4):
        torch.manual_seed(scale)
        model = BSRModel(tiny_config(scale=scale)).eval()
        from bsr_hub.models.export import export_onnx

        done = export_onnx(model, tmp_path / f"x{scale}.onnx")
        assert done.max_abs_diff is not None and done.max_abs_diff <= 1e-4
        out = ort.InferenceSession(str(done.onnx_path)).run(None, {"input": np.random.rand(2, 3, 7, 5).astype("f")})
        assert out[0].shape == (2, 3, 7 * scale, 5 * scale)


def test_existing_output_is_not_replaced_without_overwrite(exported, capsys):
    before = exported.stat().st_mtime_ns
    assert main(["export", MODEL, "-o", str(exported)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert exported.stat().st_mtime_ns == before


def test_overwrite_never_puts_the_sidecar_over_another_json(tmp_path, capsys):
    """Issue 23 (3): `export m -o m/config.onnx --overwrite` replaced the checkpoint's config.json."""
    checkpoint = tmp_path / "m"
    BSRModel(tiny_config(scale=2)).save_pretrained(checkpoint)
    config = (checkpoint / "config.json").read_bytes()
    assert main(["export", str(checkpoint), "-o", str(checkpoint / "config.onnx"), "--overwrite"]) == 2
    assert "config.json is not an earlier export's config.json" in capsys.readouterr().err
    assert (checkpoint / "config.json").read_bytes() == config and not (checkpoint / "config.onnx").exists()
    out = tmp_path / "m.onnx"  # an export over an export is still replaced
    assert main(["export", str(checkpoint), "-o", str(out)]) == 0
    assert main(["export", str(checkpoint), "-o", str(out), "--overwrite"]) == 0


def test_bad_output_name_and_unknown_model_are_clear_errors(tmp_path, capsys):
    assert main(["export", MODEL, "-o", str(tmp_path / "model.bin")]) == 2
    assert "should end in .onnx" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nowhere"), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "no such checkpoint folder" in capsys.readouterr().err


def test_missing_extra_is_named(tmp_path):
    code = (
        "import sys\n"
        "sys.modules['onnxruntime'] = None\n"
        "from bsr_hub.commands.main import main\n"
        "sys.exit(main(['export', 'bsr-lite-x2', '-o', sys.argv[1]]))\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.onnx")], capture_output=True, text=True,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 2
    assert "bsr-hub[export]" in run.stderr
    assert not (tmp_path / "m.onnx").exists()
