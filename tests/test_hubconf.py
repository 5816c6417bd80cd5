"""hubconf.py: torch.hub.load(checkout, "<bundled name>", source="local") for every bundled checkpoint."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import REPO_ROOT

from bsr_hub import BSRModel, bundled_checkpoints

BUNDLED = sorted(bundled_checkpoints())


def _entry(name: str) -> str:
    return name.replace("-", "_")


def test_entry_points_are_exactly_the_bundled_checkpoints():
    assert BUNDLED, "no bundled checkpoint: nothing for torch.hub to offer"
    spec = importlib.util.spec_from_file_location("hubconf_under_test", REPO_ROOT / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # torch.hub.list's own rule (it takes GitHub repos only): public callables of the module.
    listed = [f for f in dir(module) if callable(getattr(module, f)) and not f.startswith("_")]
    assert sorted(listed) == sorted(_entry(n) for n in BUNDLED)


@pytest.mark.parametrize("name", BUNDLED)
def test_hub_load_returns_the_bundled_weights(name):
    model = torch.hub.load(str(REPO_ROOT), _entry(name), source="local")
    reference = BSRModel.from_pretrained(name)
    assert isinstance(model, BSRModel) and not model.training
    assert model.config == reference.config
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        assert model(x).shape == (1, 3, 12 * model.scale, 10 * model.scale)


@pytest.mark.parametrize("name", BUNDLED[:1])
def test_pretrained_false_gives_the_architecture_untrained(name):
    model = torch.hub.load(str(REPO_ROOT), _entry(name), source="local", pretrained=False)
    reference = BSRModel.from_pretrained(name)
    assert model.config == reference.config
    assert not torch.equal(model.head.weight, reference.head.weight)


def test_unknown_entry_point_is_a_clear_error():
    with pytest.raises(RuntimeError, match="Cannot find callable bsr_nope"):
        torch.hub.load(str(REPO_ROOT), "bsr_nope", source="local")


def test_the_docstrings_local_examples_run_as_written():
    """Issue 23 (12): the docstring showed torch.hub.list(path, source="local"), a TypeError (list is GitHub-only).
    Every example line that names a local checkout is run here with this checkout's path."""
    import re

    text = (REPO_ROOT / "hubconf.py").read_text().split('"""')[1]
    calls = [m.group(1) for m in re.finditer(r"^\s+(?:\w+ = )?(torch\.hub\.\w+\(.*\))", text, re.MULTILINE)]
    local = [c for c in calls if '"path/to/bsr_hub"' in c]
    assert local, "the docstring shows no local example"
    for call in local:
        eval(call.replace('"path/to/bsr_hub"', repr(str(REPO_ROOT))), {"torch": torch})
