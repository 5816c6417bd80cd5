"""The CUDA path, on a real GPU: training in bf16 with EMA and channels_last, an exact resume, half-precision
inference, the out-of-memory fallback and evaluation. Skipped, with the reason, where there is no CUDA device
(CI is CPU-only); bench/gpu.py runs this module on a lent GPU (bench/GPU.md says how).

    python -m pytest -m cuda tests/test_cuda.py
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, SHARED_DATA

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI is CPU-only; see bench/GPU.md)"),
]

DEBUG = str(REPO_ROOT / "configs" / "debug_cpu.yaml")
SET5 = SHARED_DATA / "benchmarks" / "Set5"


def missing_set5(data: Path) -> bool:
    """Skip on what the test reads: the data's README.md does not travel to the GPU (bench/gpu.py stages image
    folders), and a skip on it skipped there, where the test matters, so that it could not fail."""
    return not (data / "benchmarks" / "Set5").is_dir()


requires_set5 = pytest.mark.skipif(missing_set5(SHARED_DATA),
                                   reason=f"Set5 not found at {SET5} (bench/gpu.py stages it)")
# evaluate.py in fp32 proper: cuDNN convolutions default to TF32 on Ampere and later (10 mantissa bits), so "CUDA
# equals the CPU" would compare TF32 with fp32.
NO_TF32 = "import torch; torch.backends.cuda.matmul.allow_tf32 = False; torch.backends.cudnn.allow_tf32 = False; "
FP32_EVALUATE = NO_TF32 + "import sys; from bsr_hub.commands.eval import eval_main; sys.exit(eval_main(sys.argv[1:]))"


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **extra}


def train(out: Path, *flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """train.py in its own process: each run gets a fresh Accelerate state and its own CUDA context."""
    cmd = [sys.executable, "train.py", "--config", DEBUG, "--output.dir", str(out), *flags]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env or _env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def test_train_bf16_with_ema_and_channels_last(tmp_path):
    out = tmp_path / "run"
    train(out, "--optim.max_steps", "40", "--optim.mixed_precision", "bf16", "--optim.channels_last",
          "--optim.ema_decay", "0.99", "--rfs.batch_size", "16", "--rfs.patch_size", "32", "--data.num_workers", "2",
          "--validation.steps", "20", "--output.checkpointing_steps", "20")
    record = json.loads((out / "model" / "training.json").read_text())
    assert torch.cuda.get_device_name() in record["hardware"] and "bf16" in record["hardware"]
    assert "cuDNN autotuned" in record["hardware"]  # as bench/gpu.py's throughput grid timed the step
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 40 and all(math.isfinite(v) for v in losses)
    psnrs = [h["val_psnr"] for h in history if "val_psnr" in h]
    assert len(psnrs) == 2 and all(math.isfinite(v) for v in psnrs)


def test_resume_on_cuda_equals_an_uninterrupted_run(tmp_path):
    # Bitwise, with deterministic kernels (--deterministic: cuDNN/cuBLAS pick reproducible algorithms); without
    # them cuDNN may choose other convolution algorithms after the restart and the weights differ in the last bits.
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    flags = ["--optim.max_steps", "12", "--optim.mixed_precision", "bf16", "--optim.channels_last", "--optim.deterministic",
             "--rfs.batch_size", "8", "--rfs.patch_size", "24", "--validation.steps", "1000"]
    env = _env(CUBLAS_WORKSPACE_CONFIG=":4096:8")
    train(straight, *flags, env=env)
    train(resumed, *flags, "--output.checkpointing_steps", "6", env=env)
    import shutil

    shutil.rmtree(resumed / "checkpoints" / "step_12")
    shutil.rmtree(resumed / "model")
    train(resumed, *flags, "--output.checkpointing_steps", "6", "--resume", "latest", env=env)
    from safetensors.torch import load_file

    a, b = load_file(straight / "model" / "model.safetensors"), load_file(resumed / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_upscale_matches_fp32(dtype):
    from PIL import Image

    from bsr_hub import BSRModel
    from bsr_hub.core.examples import example_images

    photo = Image.open(next(p for p in example_images() if p.stem == "chelsea")).convert("RGB")  # a real photo
    model = BSRModel.from_pretrained("bsr-lite-x2", map_location="cuda")
    reference = np.asarray(model.upscale(photo))
    half = np.asarray(model.to(dtype).upscale(photo))
    assert half.shape == reference.shape
    assert psnr(half, reference) >= 40.0


def test_out_of_memory_falls_back_to_tiles_matching_untiled():
    from PIL import Image

    from bsr_hub import BSRModel
    from bsr_hub.core.examples import example_images

    model = BSRModel.from_pretrained("bsr-lite-x2", map_location="cuda")
    photo = Image.open(next(p for p in example_images() if p.stem == "chelsea")).convert("RGB")
    big = photo.resize((1800, 1200), Image.Resampling.LANCZOS)  # a real photo, large enough to need GBs
    reference = np.asarray(model.upscale(big, tile=None))  # one untiled pass, with the whole GPU
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    # The untiled pass needs several GB; allow the process 1.5 GB. The auto-tiler reads the device's free memory
    # (which the fraction does not change), so it tries untiled and the allocator's real OOM is what is caught.
    torch.cuda.set_per_process_memory_fraction(1.5e9 / total)
    try:
        with pytest.warns(UserWarning, match="out of memory"):
            tiled = np.asarray(model.upscale(big, tile=None))  # asks for one pass; the OOM forces tiles
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert tiled.shape == reference.shape
    assert psnr(tiled, reference) >= 50.0


@requires_set5
def test_evaluate_on_cuda_equals_cpu_on_set5(tmp_path):
    results = {}
    for device in ("cuda", "cpu"):
        target = tmp_path / f"{device}.json"
        cmd = [sys.executable, "-c", FP32_EVALUATE, "--model", "bsr-lite-x2", "--benchmarks", "Set5", "--data-dir",
               str(SET5.parent), "--device", device, "--output", str(target), "-q"]
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        results[device] = json.loads(target.read_text())
    cuda, cpu = (r["results"][0] if isinstance(r, dict) else r[0] for r in (results["cuda"], results["cpu"]))
    assert cuda["benchmark"] == cpu["benchmark"] == "Set5"
    assert abs(cuda["psnr"] - cpu["psnr"]) <= 0.01
    assert abs(cuda["ssim"] - cpu["ssim"]) <= 1e-4
