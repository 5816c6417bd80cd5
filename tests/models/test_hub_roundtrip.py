"""Push and pull through the real huggingface_hub client and the test Hub (tests/hub_server.py, the `hub` fixture):
what is pulled in a fresh process is what was pushed, bit for bit and revision by revision; the pushed card is
ours; and a push the Hub refuses, a connection lost mid-upload and a repo without weights each end in an error
that says what happened, with the local folder left as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, folder_bytes, tiny_config
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.utils import HfHubHTTPError
from PIL import Image
from safetensors.torch import load_file, save_file

from bsr_hub import BSRModel, CheckpointError, bundled_checkpoints
from bsr_hub.commands.main import main
from bsr_hub.models import CARRIED_RECORDS, PushError

# Run in a fresh process: loads the repo at `main` and at the first commit, saves their weights and outputs.
PULL = """
import sys
import torch
from safetensors.torch import load_file, save_file
from bsr_hub import BSRModel
x = load_file(sys.argv[1])["x"]
saved = {}
for name, revision in (("main", None), ("first", sys.argv[3])):
    model = BSRModel.from_pretrained("me/bsr-x", revision=revision)
    with torch.no_grad():
        saved[name + ".output"] = model(x).contiguous()
    saved.update({f"{name}.{k}": v for k, v in model.state_dict().items()})
save_file(saved, sys.argv[2])
"""


def seeded(seed: int) -> BSRModel:
    torch.manual_seed(seed)
    return BSRModel(tiny_config()).eval()


def test_a_pushed_model_loads_bit_for_bit_in_a_fresh_process_and_an_old_revision_stays(hub, tmp_path):
    first, second = seeded(0), seeded(1)
    one = first.push_to_hub("me/bsr-x")
    two = second.push_to_hub("me/bsr-x")  # other weights: a new commit, and main moves to it
    assert one.oid != two.oid and hub.store.refs("me/bsr-x")["main"] == two.oid
    assert hub.store.commit_info("me/bsr-x", two.oid)["parent"] == one.oid

    x = torch.rand(1, 3, 12, 10)
    save_file({"x": x}, tmp_path / "x.safetensors")
    fresh = tmp_path / "fresh-home"  # an empty cache: everything comes from the server
    env = {**os.environ, "HF_HOME": str(fresh), "HF_HUB_CACHE": str(fresh / "hub"),
           "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the same threads: the same order of sums
    run = subprocess.run([sys.executable, "-c", PULL, str(tmp_path / "x.safetensors"),
                          str(tmp_path / "out.safetensors"), one.oid],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    pulled = load_file(tmp_path / "out.safetensors")
    for name, model in (("main", second), ("first", first)):
        for key, value in model.state_dict().items():
            assert torch.equal(pulled[f"{name}.{key}"], value), (name, key)
        with torch.no_grad():
            assert torch.equal(pulled[f"{name}.output"], model(x)), name
    assert not torch.equal(pulled["main.output"], pulled["first.output"])
    snapshots = fresh / "hub" / "models--me--bsr-x" / "snapshots"
    assert {p.name for p in snapshots.iterdir()} == {one.oid, two.oid}


def test_the_pushed_card_is_ours_and_a_loaded_checkpoint_carries_its_records(hub, tiny_model):
    tiny_model.push_to_hub("me/bsr-x")
    head = hub.store.resolve("me/bsr-x", "main")
    assert set(hub.store.files("me/bsr-x", head)) == {".gitattributes", "README.md", "config.json", "model.safetensors"}
    card = ModelCard.load("me/bsr-x")  # read back through the Hub, as a visitor's browser would
    assert card.data.library_name == "bsr-hub" and "# me/bsr-x" in card.text  # named after the repo
    assert 'from_pretrained("me/bsr-x")' in card.text and "Not evaluated yet" in card.text
    assert "PytorchModelHubMixin" not in card.text  # not the mixin's default card

    # Issue 20: a bundled checkpoint pushed unchanged keeps its results, lineage and records, under the repo's name.
    source = bundled_checkpoints()["bsr-tiny-x2"]
    BSRModel.from_pretrained("bsr-tiny-x2").push_to_hub("me/tiny-copy")
    head = hub.store.resolve("me/tiny-copy", "main")
    records = [p for pattern in CARRIED_RECORDS for p in source.glob(pattern)]
    assert records
    for record in records:
        pushed = hub.store.read("me/tiny-copy", head, record.name)
        if record.name == "eval_results.json":  # the results under the repo's name, the numbers unchanged
            ours, original = json.loads(pushed), json.loads(record.read_bytes())
            assert ours.pop("model") == "me/tiny-copy" and original.pop("model") == "bsr-tiny-x2" and ours == original
        else:
            assert pushed == record.read_bytes(), record.name
    card, theirs = ModelCard.load("me/tiny-copy"), ModelCard.load(source / "README.md")
    assert card.data.model_name == "me/tiny-copy" and card.data.eval_results == theirs.data.eval_results
    assert 'from_pretrained("me/tiny-copy")' in card.text and "### Lineage" in card.text


def test_a_pulled_robust_model_is_still_the_one_for_photos(hub, tmp_path, monkeypatch):
    """Issue 24 (2): the demo's default and label come from training.json; a pull brings it with the weights."""
    from bsr_hub.demo.models import default_label, discover_models
    from bsr_hub.models import trained_for

    BSRModel.from_pretrained("bsr-lite-x2-robust").push_to_hub("me/robust")
    BSRModel.from_pretrained("bsr-lite-x2").push_to_hub("me/benchmark")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    entries = discover_models(["me/benchmark", "me/robust"])
    assert [trained_for(e.folder) for e in entries] == ["benchmark", "real"]
    assert default_label(entries) == "x2 · me/robust · for real photos"


# ---------------------------------------------------------------------------------------------- failures


def test_a_push_the_hub_refuses_says_so_and_keeps_the_folder(hub, tiny_model, tmp_path):
    hub.refuse("other")
    folder = tmp_path / "bsr-x"
    tiny_model.save_pretrained(folder)
    before = folder_bytes(folder)
    with pytest.raises(HfHubHTTPError, match=r"403 Forbidden: You don't have the rights .* other/bsr-x(.|\n)*token"):
        tiny_model.save_pretrained(folder, push_to_hub=True, repo_id="other/bsr-x")
    assert folder_bytes(folder) == before
    assert not hub.store.exists("other/bsr-x")


@pytest.mark.parametrize("where", [
    "commit",  # the NDJSON commit carrying config.json and the card, after the weights went to storage
    pytest.param("lfs upload", marks=pytest.mark.slow),  # the weights themselves: huggingface_hub retries 5 times, 23 s
])
def test_a_connection_lost_mid_upload_is_one_clear_error_and_pushing_again_completes(hub, tiny_model, tmp_path, where):
    cut = {"commit": r"^POST hub/api/models/me/bsr-x/commit/", "lfs upload": r"^PUT storage/lfs/upload/"}
    hub.drop_connection(cut[where])
    folder = tmp_path / "bsr-x"
    tiny_model.save_pretrained(folder)
    before = folder_bytes(folder)
    with pytest.raises(PushError) as failed:
        tiny_model.save_pretrained(folder, push_to_hub=True, repo_id="me/bsr-x")
    message = str(failed.value)
    assert message.startswith("pushing to me/bsr-x on the Hugging Face Hub failed: ") and "\n" not in message
    assert "Server disconnected" in message and "push again" in message
    assert folder_bytes(folder) == before
    head = hub.store.resolve("me/bsr-x", "main")
    assert set(hub.store.files("me/bsr-x", head)) == {".gitattributes"}  # nothing half-committed

    hub.stop_dropping()
    uploads = sum(r.method == "PUT" and r.status == 200 for r in hub.log)
    tiny_model.push_to_hub("me/bsr-x")
    head = hub.store.resolve("me/bsr-x", "main")
    assert hub.store.read("me/bsr-x", head, "model.safetensors") == before["model.safetensors"]
    # What the message promises: weights that reached storage before the commit was lost are not sent again.
    assert sum(r.method == "PUT" and r.status == 200 for r in hub.log) == uploads + (where == "lfs upload")


def test_a_repo_without_weights_is_an_error_naming_it(hub, tiny_model, tmp_path, capsys):
    folder = tmp_path / "no-weights"
    tiny_model.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    HfApi().create_repo("me/no-weights")
    HfApi().upload_folder(repo_id="me/no-weights", folder_path=folder)
    before = folder_bytes(folder)
    with pytest.raises(CheckpointError, match=r"^the Hub repo 'me/no-weights' \(revision main\) has no model\.safe"):
        BSRModel.from_pretrained("me/no-weights")

    Image.new("RGB", (9, 7), (120, 30, 200)).save(tmp_path / "in.png")
    upscale = ["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"), "--model", "me/no-weights", "-q"]
    assert main(upscale) == 2
    # One line, besides huggingface_hub's own "Fetching 2 files" bars, which `-q` does not reach.
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line and not line.startswith("Fetching ")]
    assert line.startswith("error: the Hub repo 'me/no-weights'") and "push_to_hub" in line
    assert not (tmp_path / "out").exists() and folder_bytes(folder) == before
