"""`backend="onnxruntime-int8"`: `upscale` through an int8 graph calibrated on the bundled photos, built once per
weights, named only (never "auto"), close to float32 on a real photo."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image

from bsr_hub import BSRModel
from bsr_hub.core import example_images

pytest.importorskip("onnx", reason="the export extra is not installed: pip install -e '.[export]'")
pytest.importorskip("onnxruntime", reason="the export extra is not installed: pip install -e '.[export]'")

from bsr_hub.inference import BACKENDS, resolve_backend
from bsr_hub.inference.backends import get_runner


def y_psnr(a: Image.Image, b: Image.Image) -> float:
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(10 * np.log10(255.0**2 / np.mean(diff**2)))


def test_int8_backend_is_close_to_float32_on_a_real_photo():
    """bsr-tiny-x2 on a crop of a bundled photo. The bound: an int8 graph that costs at most 0.1 dB on benchmarks
    where the model is at 31-37 dB adds an error of about 2 % of the model's own, about 50 dB against float32 (49 dB
    measured here); 40 dB is what a graph with a wrong scale, a clipped range or a lost channel does not reach
    (those land below 30)."""
    model = BSRModel.from_pretrained("bsr-tiny-x2")
    with Image.open(example_images()[0]) as img:  # astronaut.png
        photo = img.convert("RGB").crop((100, 40, 260, 200))  # 160x160: face, helmet, flag
    int8 = model.upscale(photo, backend="onnxruntime-int8", tile=0)
    fp32 = model.upscale(photo, backend="eager", tile=0)
    assert int8.size == fp32.size == (320, 320)
    assert 40 < y_psnr(int8, fp32) < 200  # close, and not the float32 graph under another name (inf)


def test_int8_backend_is_named_only_and_built_once_per_weights():
    torch.manual_seed(0)
    model = BSRModel(tiny_config()).eval()
    assert "onnxruntime-int8" in BACKENDS
    assert resolve_backend(model, "onnxruntime-int8") == "onnxruntime-int8"
    assert resolve_backend(model, "auto", pixels=1024 * 1024) != "onnxruntime-int8"  # lossy: never chosen for you
    runner = get_runner(model, "onnxruntime-int8", torch.contiguous_format)
    assert get_runner(model, "onnxruntime-int8", torch.contiguous_format) is runner
    x = torch.rand(1, 3, 20, 24)
    assert runner(x).shape == (1, 3, 40, 48)
    with torch.no_grad():
        model.head.weight.mul_(0.5)  # new weights: a new graph, never the old one
    assert get_runner(model, "onnxruntime-int8", torch.contiguous_format) is not runner


def test_int8_backend_refuses_a_bf16_model():
    model = BSRModel(tiny_config()).eval().to(torch.bfloat16)
    with pytest.raises(ValueError, match="quantizes a float32 model"):
        get_runner(model, "onnxruntime-int8", torch.contiguous_format)  # upscale may refuse bf16 on the CPU sooner
