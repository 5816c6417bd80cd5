"""What a benchmark's result file says about the machine's load (bench/common.py): a training job that was paused
(SIGSTOP) for a quiet measurement is named as paused, so a reader can tell a quiet run from a loaded one."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))
from common import machine_load

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("pgrep") is None,
                                reason="reads process states from /proc and finds jobs with pgrep")

RECIPE = "configs/load_probe_of_test_bench_load.yaml"


def _state(pid: int) -> str:
    return open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[0]


def _wait_for_state(pid: int, wanted: str) -> None:
    deadline = time.monotonic() + 10
    while _state(pid) != wanted:
        assert time.monotonic() < deadline, f"process {pid} never reached state {wanted}"
        time.sleep(0.01)


def test_a_stopped_training_job_is_named_as_paused_and_a_running_one_is_not():
    # A real process whose command line reads like a training job (machine_load finds them with pgrep).
    job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "train.py", "--config", RECIPE])
    try:
        _wait_for_state(job.pid, "S")
        running = machine_load()
        assert RECIPE in running and f"{RECIPE} (paused" not in running
        os.kill(job.pid, signal.SIGSTOP)
        _wait_for_state(job.pid, "T")
        assert f"{RECIPE} (paused: stopped)" in machine_load()
        os.kill(job.pid, signal.SIGCONT)
        _wait_for_state(job.pid, "S")
        assert f"{RECIPE} (paused" not in machine_load()
    finally:
        job.kill()
        job.wait()
