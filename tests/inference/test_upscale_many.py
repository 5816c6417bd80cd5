"""`bsr-hub upscale` on many files: batches of equal sizes, and shares over two real CPU processes."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bsr_hub.commands.main import main


def make_folder(root: Path) -> Path:
    """Seven images: five of one size (batchable), two of others, one in a subfolder."""
    rng = np.random.default_rng(0)
    sizes = [(20, 24)] * 5 + [(17, 11), (9, 30)]
    for i, (h, w) in enumerate(sizes):
        target = root / ("sub" if i == 6 else "") / f"img{i}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(target)
    return root


def outputs(folder: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(folder)): np.asarray(Image.open(p)).astype(int) for p in sorted(folder.rglob("*.png"))}


def test_batched_files_match_one_at_a_time(tmp_path, tiny_checkpoint):
    src = make_folder(tmp_path / "in")
    assert main(["upscale", str(src), "-o", str(tmp_path / "one"), "--model", str(tiny_checkpoint), "-q"]) == 0
    assert main(["upscale", str(src), "-o", str(tmp_path / "four"), "--model", str(tiny_checkpoint), "-q",
                 "--batch-size", "4"]) == 0
    one, four = outputs(tmp_path / "one"), outputs(tmp_path / "four")
    assert one.keys() == four.keys() and len(one) == 7
    for name in one:
        assert np.abs(one[name] - four[name]).max() <= 1, name


@pytest.mark.parametrize("flags", [["--tile", "0"], ["--tile", "16"], ["--backend", "jit"]])
def test_tile_and_backend_flags(tmp_path, tiny_checkpoint, flags):
    src = make_folder(tmp_path / "in")
    assert main(["upscale", str(src), "-o", str(tmp_path / "out"), "--model", str(tiny_checkpoint), "-q", *flags]) == 0
    assert len(outputs(tmp_path / "out")) == 7


@pytest.mark.parametrize("flags", [["--tile", "-4"], ["--tile", "big"], ["--batch-size", "0"], ["--backend", "trt"]])
def test_bad_flags_are_usage_errors(tmp_path, tiny_checkpoint, flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["upscale", str(tmp_path), "-o", str(tmp_path / "out"), "--model", str(tiny_checkpoint), *flags])
    assert exit_info.value.code == 2


def test_plain_upscale_does_not_import_accelerate(tmp_path, tiny_checkpoint):
    make_folder(tmp_path / "in")
    code = (
        "import sys\n"
        "sys.modules['accelerate'] = None\n"  # as if not installed
        "from bsr_hub.commands.main import main\n"
        "sys.exit(main(['upscale', sys.argv[1], '-o', sys.argv[2], '--model', sys.argv[3], '-q']))\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "in"), str(tmp_path / "out"), str(tiny_checkpoint)],
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr
    assert len(outputs(tmp_path / "out")) == 7


@pytest.mark.slow
def test_two_cpu_processes_share_the_files(tmp_path, tiny_checkpoint):
    """accelerate launch, two real processes on the CPU (ENVIRONMENT.md: --multi_gpu with ACCELERATE_USE_CPU=1):
    every file done once (the processes' counts add up to the number of files), one progress bar, the same outputs
    as one process."""
    src = make_folder(tmp_path / "in")
    assert main(["upscale", str(src), "-o", str(tmp_path / "one"), "--model", str(tiny_checkpoint), "-q"]) == 0
    bsr_hub_command = Path(sys.executable).parent / "bsr-hub"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
              str(bsr_hub_command), "upscale", str(src), "-o", str(tmp_path / "two"), "--model", str(tiny_checkpoint)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(launch, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "7 upscaled into" in run.stderr and "by 2 processes" in run.stderr, run.stderr[-3000:]
    bars = [line for line in run.stderr.replace("\r", "\n").splitlines() if "upscaling x2" in line]
    assert bars and all("process 1 of 2, 7 files in all" in line for line in bars)  # only the main process draws
    one, two = outputs(tmp_path / "one"), outputs(tmp_path / "two")
    assert one.keys() == two.keys() and len(one) == 7
    for name in one:
        assert np.array_equal(one[name], two[name]), name


@pytest.mark.slow
def test_two_processes_with_a_failed_file_end_in_words_not_a_traceback(tmp_path, tiny_checkpoint):
    """Issue 23 (12): a broken file among the inputs of a 2-process upscale gave exit status 1 under a launcher
    Python traceback that read like a crash. Launched as the README says (`--quiet`): the failed file, the total,
    and a line naming the launcher's report as that status; no traceback; the other files all written."""
    src = make_folder(tmp_path / "in")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a PNG")
    bsr_hub_command = Path(sys.executable).parent / "bsr-hub"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
              str(bsr_hub_command), "upscale", str(src), "-o", str(tmp_path / "out"), "--model", str(tiny_checkpoint),
              "-q"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(launch, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 1, run.stderr[-3000:]
    assert "Traceback (most recent call last)" not in run.stderr, run.stderr[-3000:]
    assert f"failed {src / 'broken.png'}" in run.stderr and "7 upscaled into" in run.stderr and "1 failed" in run.stderr
    assert "the launcher's FAILED report below is that status, not a crash" in run.stderr
    assert len(outputs(tmp_path / "out")) == 7


@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_a_batched_tensor_keeps_every_image_at_every_batch_size(batch_size):
    """Issue 23 (6): a (2, 3, H, W) tensor among the inputs came back as (1, 3, sH, sW), its second image dropped."""
    import torch
    from conftest import tiny_config

    from bsr_hub import BSRModel
    from bsr_hub.inference.api import upscale_many

    torch.manual_seed(0)
    model = BSRModel(tiny_config(2)).eval()
    inputs = [torch.rand(2, 3, 16, 12), torch.rand(3, 16, 12), torch.rand(2, 3, 16, 12), torch.rand(1, 3, 8, 8)]
    results = upscale_many(model, inputs, batch_size=batch_size, backend="eager")
    assert [tuple(r.shape) for r in results] == [(2, 3, 32, 24), (3, 32, 24), (2, 3, 32, 24), (1, 3, 16, 16)]
    for x, y in zip(inputs, results):
        assert torch.allclose(y, model.upscale(x, backend="eager"), atol=1e-5)
