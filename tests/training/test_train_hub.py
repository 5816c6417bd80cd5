"""`train.py --output.push_to_hub` through the real huggingface_hub client and the test Hub (tests/hub_server.py):
a launched run pushes its model folder, card, results, curve and records and nothing else, and the card reads back
from the Hub with the local results; a push that fails (a namespace or repo the Hub refuses, a connection lost
mid-upload) ends the run in one line that says how to push later, with the output folder left as it was."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, folder_bytes
from huggingface_hub import ModelCard

pytest.importorskip("accelerate")
pytest.importorskip("datasets")
sys.path.insert(0, str(REPO_ROOT))
import train

DEBUG = str(REPO_ROOT / "configs" / "debug_cpu.yaml")
# Two steps with a checkpoint at each: checkpoints exist, so that leaving them out of the push means something.
SHORT = ["--config", DEBUG, "--optim.max_steps", "2", "--output.checkpointing_steps", "1", "--validation.steps", "2"]


@pytest.mark.slow  # a launched process: about 25 s on a loaded 2-core machine
def test_accelerate_launch_pushes_the_model_folder_and_its_card_reads_back(hub, tmp_path):
    out = tmp_path / "run"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "train.py", *SHORT, "--output.dir", str(out),
              "--output.push_to_hub", "--output.hub_model_id", "me/bsr-run"]
    proc = subprocess.run(launch, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"pushed to {hub.url}/me/bsr-run/commit/" in proc.stdout

    head = hub.store.resolve("me/bsr-run", "main")
    pushed = {path: hub.store.read("me/bsr-run", head, path) for path in hub.store.files("me/bsr-run", head)}
    assert pushed.pop(".gitattributes")  # the repo's own, from its creation
    # Exactly the model folder, byte for byte: what a Hub reader needs, and none of the checkpoints or the lock.
    assert pushed == folder_bytes(out / "model")
    assert {"README.md", "config.json", "model.safetensors", "eval_results.json", "training.json",
            "training_config.yaml", "training_curve.png"} <= set(pushed)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_1", "step_2"]

    card, local = ModelCard.load("me/bsr-run"), ModelCard.load(out / "model" / "README.md")
    assert card.data.eval_results and card.data.eval_results == local.data.eval_results
    assert card.data.model_name == "me/bsr-run"  # named by its Hub id, not by the bundled model it resembles
    assert json.loads(pushed["eval_results.json"])["model"] == "me/bsr-run"


@pytest.mark.parametrize("failure", ["forbidden namespace", "read-only repo", "connection lost"])
def test_a_failed_push_ends_the_run_in_one_line_and_keeps_the_output_folder(hub, tmp_path, failure):
    repos = {"forbidden namespace": "other/bsr-run", "read-only repo": "me/locked", "connection lost": "me/bsr-run"}
    repo = repos[failure]
    if failure == "forbidden namespace":  # refused when the run starts: no training for nothing
        hub.refuse("other")
    elif failure == "read-only repo":  # it exists and can be read, so the run starts; writing it is refused at the end
        hub.store.create(repo)
        hub.refuse(repo)
    else:  # the commit is cut halfway, after the weights went to storage
        hub.drop_connection(r"^POST hub/api/models/me/bsr-run/commit/")
    out = tmp_path / "run"
    at_push: dict[str, dict[str, bytes]] = {}

    def snapshot(request) -> None:  # the output folder as the push starts: what must still be there after it fails
        if "/preupload/" in request.path:
            at_push.setdefault("out", folder_bytes(out))

    hub.on_request = snapshot
    with pytest.raises(SystemExit) as stopped:
        train.main([*SHORT, "--output.dir", str(out), "--output.push_to_hub", "--output.hub_model_id", repo])
    message = str(stopped.value.code)
    assert message.startswith("error: ") and "\n" not in message and repo in message
    if failure == "forbidden namespace":
        assert "403 Forbidden" in message and "hf auth login" in message
        assert not out.exists() and not at_push
        return
    assert ("403 Forbidden" if failure == "read-only repo" else "Server disconnected") in message
    # Everything the run wrote is there as it was when the push began; only the lock went, as at any end of a run.
    assert folder_bytes(out) == {k: v for k, v in at_push["out"].items() if k != ".train.lock"}
    assert set(hub.store.files(repo, hub.store.resolve(repo, "main"))) == {".gitattributes"}

    # The command the message gives pushes the saved model, once the Hub lets it.
    command = message.split("push it with `")[1].rstrip("`")
    hub.stop_dropping()
    if failure == "read-only repo":
        return
    hf = os.path.join(os.path.dirname(sys.executable), "hf")
    upload = subprocess.run([hf, *shlex.split(command)[1:]], capture_output=True, text=True, timeout=300)
    assert upload.returncode == 0, upload.stderr[-3000:]
    head = hub.store.resolve(repo, "main")
    assert {p: hub.store.read(repo, head, p) for p in hub.store.files(repo, head) if p != ".gitattributes"} == \
        folder_bytes(out / "model")
