"""Issue 27: the ONNX graph of `backend="onnxruntime"` is built once per weights on a machine and kept in the cache
folder, so that a later process skips importing `onnx` and tracing. Real exports and real ONNX Runtime sessions;
a "later process" is a second model object with the same weights (the in-process runner cache holds per object)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from bsr_hub import BSRModel
from bsr_hub.core import CACHE_ENV
from bsr_hub.inference import backends, graph_cache

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / graph_cache.FOLDER


def twin(model: BSRModel) -> BSRModel:
    """Another object with the same weights: what a later process loads."""
    other = BSRModel(model.config).eval()
    other.load_state_dict(model.state_dict())
    return other


def run(model: BSRModel, backend: str = "onnxruntime") -> torch.Tensor:
    x = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return backends.get_runner(model, backend, torch.contiguous_format)(x)


def test_a_later_process_reads_the_graph_instead_of_exporting(tiny_model, cache, monkeypatch):
    expected = run(tiny_model)
    (stored,) = cache.glob("onnxruntime-*.onnx")

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(backends, "trace_to_onnx", no_export)
    assert torch.equal(run(twin(tiny_model)), expected)
    assert list(cache.glob("*.onnx")) == [stored]


def test_other_weights_or_another_backend_get_their_own_graph(tiny_model, cache):
    run(tiny_model)
    changed = twin(tiny_model)
    with torch.no_grad():
        next(changed.parameters())[0].add_(0.5)
    other = BSRModel(tiny_config(num_features=12)).eval()
    keys = {graph_cache.graph_key(m, "onnxruntime") for m in (tiny_model, changed, other)}
    assert len(keys) == 3
    assert graph_cache.graph_key(tiny_model, "onnxruntime-int8") not in keys
    assert not torch.allclose(run(changed), run(twin(tiny_model)))  # not the first model's graph
    assert len(list(cache.glob("onnxruntime-*.onnx"))) == 2


def test_a_damaged_graph_is_built_again_and_replaced(tiny_model, cache):
    expected = run(tiny_model)
    (stored,) = cache.glob("*.onnx")
    stored.write_bytes(b"not a graph")
    assert torch.equal(run(twin(tiny_model)), expected)
    assert stored.read_bytes() != b"not a graph"


def test_a_cache_that_cannot_be_written_costs_a_build_not_an_error(tiny_model, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv(CACHE_ENV, str(blocker))
    x = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(run(tiny_model), tiny_model(x), atol=1e-4)
    assert "could not keep the ONNX graph" in caplog.text


def test_only_the_most_recent_graphs_are_kept(tiny_model, cache, monkeypatch):
    monkeypatch.setattr(graph_cache, "MAX_GRAPHS", 2)
    for width in (8, 10, 12):
        run(BSRModel(tiny_config(num_features=width)).eval())
    assert len(list(cache.glob("*.onnx"))) == 2
