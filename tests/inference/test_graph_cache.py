"""Issue 27: the ONNX graph of `backend="onnxruntime"` is built once per weights on a machine and kept in the cache
folder, so that a later process skips importing `onnx` and tracing. Real exports and real ONNX Runtime sessions;
a "later process" is a second model object with the same weights (the in-process runner cache holds per object)."""

from __future__ import annotations

import os

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


def test_only_the_most_recently_used_graphs_are_kept(tiny_model, cache, monkeypatch):
    monkeypatch.setattr(graph_cache, "MAX_GRAPHS", 2)
    models = [BSRModel(tiny_config(num_features=width)).eval() for width in (8, 10, 12)]
    run(models[0])
    run(models[1])
    (first,) = cache.glob(f"*{graph_cache.graph_key(models[0], 'onnxruntime')}*")
    (second,) = cache.glob(f"*{graph_cache.graph_key(models[1], 'onnxruntime')}*")
    os.utime(first, (1, 1))  # written long ago...
    os.utime(second, (2, 2))
    run(twin(models[0]))  # ...but read now
    run(models[2])
    names = {p.name for p in cache.glob("*.onnx")}
    assert names == {f"onnxruntime-{graph_cache.graph_key(m, 'onnxruntime')}.onnx" for m in (models[0], models[2])}


class WithExtraState(torch.nn.Module):
    """A module that keeps non-tensor state beside its weights (Module.get_extra_state)."""

    def __init__(self, note: str):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.note = note

    def get_extra_state(self):
        return {"note": self.note}

    def set_extra_state(self, state):
        self.note = state["note"]


def test_the_key_covers_extra_state_the_code_and_the_int8_runtime(tiny_model):
    assert graph_cache.graph_key(WithExtraState("a"), "onnxruntime") != graph_cache.graph_key(WithExtraState("b"),
                                                                                               "onnxruntime")
    files = graph_cache._source_files(tiny_model, "onnxruntime-int8")
    assert any(f.endswith("network.py") for f in files) and any(f.endswith("onnx.py") for f in files)
    assert any(f.endswith("quantize.py") for f in files)
    assert graph_cache.graph_key(tiny_model, "onnxruntime-int8") != graph_cache.graph_key(tiny_model, "onnxruntime")


def test_a_refused_graph_is_rebuilt_even_where_it_cannot_be_removed(tiny_model, cache, monkeypatch):
    expected = run(tiny_model)
    (stored,) = cache.glob("*.onnx")
    stored.write_bytes(b"not a graph")
    monkeypatch.setattr(graph_cache, "keep", lambda path, graph: None)  # as if the folder were read-only now
    monkeypatch.setattr(backends, "keep_graph", lambda path, graph: None)
    assert torch.equal(run(twin(tiny_model)), expected)
