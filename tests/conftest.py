"""Shared fixtures. Tests are CPU-only and network-free; the Hub is offline for every test but those that ask for
the `hub` fixture, a Hub on 127.0.0.1 (tests/HUB_SERVER.md)."""

from __future__ import annotations

import os
import sys
import weakref
from pathlib import Path

# Set before anything imports huggingface_hub: offline lookups fail in milliseconds instead of ~23 s of retries.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# upscale's backend="auto" measures the backends on a CPU once per model and shape (inference/autotune.py): seconds
# of builds and timings that would make results depend on the machine's load. Off unless a run asks for it
# (BSR_HUB_AUTOTUNE=1 pytest ...); tests/inference/test_autotune.py turns it on where it is the subject.
os.environ.setdefault("BSR_HUB_AUTOTUNE", "0")

import numpy as np
import pytest
import torch
from PIL import Image

from bsr_hub import BSRConfig, BSRModel

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

requires_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "README.md").is_file(),
    reason=f"real images not found at {SHARED_DATA} (../shared/data beside the checkout)",
)


def tiny_config(scale: int = 2, **overrides) -> BSRConfig:
    """A few thousand parameters: every code path of the real network, in milliseconds."""
    values = dict(scale=scale, num_features=8, num_groups=2, num_blocks=1, attention_kernel_size=3)
    values.update(overrides)
    return BSRConfig(**values)


def write_benchmark_images(folder: Path, count: int = 3, grey: bool = True, seed: int = 0) -> Path:
    """A synthetic benchmark folder: small structured images, one of them grey (mode L), sides not multiples of
    the scale."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        h, w = 45 + 3 * i, 41 + 2 * i
        y, x = np.mgrid[0:h, 0:w]
        base = 128 + 70 * np.sin(x / (3.0 + i) + seed) * np.cos(y / 5.0)
        img = np.clip(base[:, :, None] + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"img{i}.png")
    if grey:  # scored on its own channel, as the protocol does
        Image.fromarray(img[:, :, 1]).save(folder / "grey.png")
    return folder


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative POSIX path: bytes): a folder's state, to compare before and after."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def bench_dir(tmp_path: Path) -> Path:
    """A benchmarks folder holding one synthetic benchmark, "Syn"."""
    write_benchmark_images(tmp_path / "benchmarks" / "Syn")
    return tmp_path / "benchmarks"


@pytest.fixture(scope="session", autouse=True)
def autotune_cache_folder(tmp_path_factory: pytest.TempPathFactory):
    """The autotune cache file (BSR_HUB_CACHE) in a folder of the session's, never the user's own cache; subprocesses
    started by a test inherit it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BSR_HUB_CACHE", str(tmp_path_factory.mktemp("bsr-hub-cache")))
        yield


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps its state in a process-wide singleton. Left set by a test that trains or evaluates in this
    process, the processes a later test forks (accelerate.debug_launcher) inherit one process's state and see
    num_processes == 1; whatever order the tests run in, each starts without it."""
    yield
    if "accelerate" in sys.modules:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A Hugging Face Hub on 127.0.0.1 for this test (tests/hub_server.py), with huggingface_hub pointed at it,
    online, with a (fake) token, Xet off (the server's docstring says why) and its own cache in tmp_path/hf-home.

    huggingface_hub reads HF_ENDPOINT, HF_HUB_OFFLINE, HF_HUB_DISABLE_XET and HF_HOME once, at import, into
    `huggingface_hub.constants`: this process gets those constants (and the /resolve URL template made from the
    endpoint) patched; the environment, also set, is what a subprocess started by the test reads. The rest of the
    suite stays offline. The test fails if the client called anything the server does not implement."""
    from hub_server import HubServer
    from huggingface_hub import constants
    from huggingface_hub.utils import close_session

    server = HubServer(tmp_path / "hub-server").start()
    home = tmp_path / "hf-home"
    for name, value in (("HF_ENDPOINT", server.url), ("HF_HUB_OFFLINE", "0"), ("HF_HUB_DISABLE_XET", "1"),
                        ("HF_TOKEN", "hf_test_hub_token"), ("HF_HOME", str(home)),
                        ("HF_HUB_CACHE", str(home / "hub")), ("NO_PROXY", "127.0.0.1")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(home / ".agent_harnesses.json"))
    close_session()  # the shared HTTP client is made again, reading this environment (no proxy for 127.0.0.1)
    try:
        yield server
    finally:
        server.stop()
        close_session()
    assert not server.unimplemented, server.unimplemented_report()


class OutOfMemoryAbove(torch.nn.Module):
    """A model that runs out of memory on any input larger than `limit` pixels on a side, as a CUDA pass that is
    too large does, and runs `model` otherwise: it first allocates the failing pass's working buffer (a weak
    reference to each is kept in `buffers`), then raises `error`. Any model of the `Upscaler` protocol fits."""

    def __init__(self, model: torch.nn.Module, limit: int, error: type[Exception] = torch.OutOfMemoryError):
        super().__init__()
        self.model, self.limit, self.error = model, limit, error
        self.buffers: list[weakref.ref] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if max(x.shape[-2:]) > self.limit:
            work = torch.empty(1, 64, *x.shape[-2:])  # the feature maps of the pass that fails
            self.buffers.append(weakref.ref(work))
            raise self.error("CUDA out of memory (simulated)")
        return self.model(x)

    def memory_per_input_pixel(self):
        return self.model.memory_per_input_pixel()

    @property
    def scale(self) -> int:
        return self.model.scale

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype


@pytest.fixture
def tiny_model() -> BSRModel:
    torch.manual_seed(0)
    return BSRModel(tiny_config()).eval()


@pytest.fixture
def tiny_checkpoint(tmp_path: Path, tiny_model: BSRModel) -> Path:
    folder = tmp_path / "tiny-bsr"
    tiny_model.save_pretrained(folder)
    return folder
