"""How a GPU call spends its time and keeps what it did (issue 28): the budget -> deadline arithmetic, the stages
written to $OUT as each ends, and train.py runs held to a deadline in process groups of their own.

The device time of a lease (the device README): a fresh machine's start, each call's transfers, each call's run,
the gaps between calls (the machine is held), and the give-back. A call is passed `--budget`, the
`status.budget_left_s` read before it (or the `lease.budget_left_s` of the previous call's reply) and `--limit`,
the `timeout_s` it was given; it ends its work `STOP_S` before the earlier of its limit and its budget less the
stated margin (`call_window`), so that its report is written and its files come back inside both.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "device_data" / "results"  # the raw results of every call on this machine (kept while warm)

START_S = 150.0  # a fresh machine's start: "a minute or more", a failed try 1-2 min (the device README)
XFER_S = 30.0  # one call's transfers: the tree and carry up (64 MiB at most), $OUT back (64 MiB at most)
GAP_S = 30.0  # from the budget read (the previous reply) to the call's start: the machine is held meanwhile
END_S = 15.0  # the give-back after the last call
STOP_S = 30.0  # from the script's end of work to the call's end: the last report, reaping, Python's exit
SAFETY_S = 20.0  # kept by every call, spent by none: what the estimates above may miss
CALL_LIMIT_S = 600  # the run tool's longest timeout_s
CALL1_LIMIT_S = 270  # call 1's timeout_s: set-up, CUDA tests (<= 170 s), throughput grid, inference
CALL_MIN_S = {"call1": 60.0, "call2": 240.0, "call3": 180.0, "receive": 10.0}  # less than this: not worth starting

LOG_FILE: Path | None = None  # the call's log in $OUT, written as it goes


def log(msg: str) -> None:
    line = f"[gpu {time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    if LOG_FILE is not None:
        with LOG_FILE.open("a") as f:
            f.write(line + "\n")


@dataclass
class Window:
    """The seconds a call may work, from its start (time.monotonic())."""

    call: str
    budget_s: float
    limit_s: float
    margin_s: float
    seconds: float
    started: float = field(default_factory=time.monotonic)

    @property
    def deadline(self) -> float:
        return self.started + self.seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def describe(self) -> str:
        return (f"{self.call}: budget {self.budget_s:.0f} s - margin {self.margin_s:.0f} s = "
                f"{self.budget_s - self.margin_s:.0f} s, limit {self.limit_s:.0f} s; the earlier, less {STOP_S:.0f} s "
                f"to stop: {self.seconds:.0f} s of work")


def margin_for(fresh: bool, reserve_s: float = 0.0) -> float:
    """Device time a call's budget must keep beyond its own run: the start (a call that finds no warm machine),
    its transfers, the gap before it, the give-back, a safety margin, and `reserve_s` for later calls."""
    return (START_S if fresh else 0.0) + XFER_S + GAP_S + END_S + SAFETY_S + reserve_s


def call_window(call: str, budget_s: float, limit_s: float, *, fresh: bool, reserve_s: float = 0.0,
                need_s: float | None = None) -> Window:
    """The seconds `call` may work: min(limit, budget - margin) - STOP_S. Exits at once, saying the numbers, when
    that is under what the call needs (CALL_MIN_S)."""
    margin = margin_for(fresh, reserve_s)
    seconds = min(limit_s, budget_s - margin) - STOP_S
    need = CALL_MIN_S.get(call, 0.0) if need_s is None else need_s
    if seconds < need:
        raise SystemExit(f"error: {call}: budget {budget_s:.0f} s less margin {margin:.0f} s, limit {limit_s:.0f} s: "
                         f"{seconds:.0f} s of work, under the {need:.0f} s it needs; give the machine back")
    return Window(call, budget_s, limit_s, margin, seconds)


def timeout_for(budget_s: float, reserve_s: float = 0.0) -> int:
    """The timeout_s to type for a call on the warm machine, from the budget read before it."""
    return int(min(CALL_LIMIT_S, budget_s - margin_for(False, reserve_s)))


def call1_reserve() -> float:
    """What call 1 leaves for call 2: call 2's least work, its stop, and its transfers (counted in call 2's own
    margin as well: the budget is read again before it)."""
    return CALL_MIN_S["call2"] + STOP_S + XFER_S + GAP_S


# ---------------------------------------------------------------------------------------------- results and stages


def write_atomically(path: Path, text: str) -> None:
    """A reader (the returned files of a call killed now) sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save(name: str, data: dict) -> None:
    write_atomically(RESULTS / f"{name}.json", json.dumps(data, indent=2))


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def load_all() -> dict:
    return {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))} if RESULTS.is_dir() else {}


class Stages:
    """A call's stages, each written with the whole report to $OUT when it starts and when it ends: a call killed at
    its limit returns every stage done before, and names the one it was in."""

    def __init__(self, call: str, out: Path, render, window: Window | None = None, write_out=None):
        """`render(results)` is the report's text (gpu.md); or `write_out(results)` writes $OUT's files itself
        (the zoo, whose call returns 7 files of the 8 allowed)."""
        self.call, self.out, self.render, self.window, self.write_out = call, out, render, window, write_out
        self.records: list[dict] = []
        out.mkdir(parents=True, exist_ok=True)
        if window is not None:
            save(f"window_{call}", {"window": window.describe(), "seconds": window.seconds})

    def write(self) -> None:
        save(f"stages_{self.call}", {"stages": self.records})
        results = load_all()
        if self.write_out is not None:
            self.write_out(results)
            return
        write_atomically(self.out / "gpu_results.json", json.dumps(results, indent=2))
        write_atomically(self.out / "gpu.md", self.render(results))

    def run(self, name: str, fn, *, need_s: float = 0.0, fatal: bool = False):
        """Run stage `name` (fn() returns what to save under `name`, or None); skipped when the window has less
        than `need_s` left. A failing stage is recorded and the call goes on, unless `fatal`."""
        record = {"stage": name, "status": "running", "started": time.strftime("%H:%M:%S")}
        if self.window is not None and self.window.left() < need_s:
            record.update(status="skipped", why=f"{self.window.left():.0f} s left, it needs {need_s:.0f} s")
            self.records.append(record)
            self.write()
            log(f"stage {name}: skipped ({record['why']})")
            return None
        self.records.append(record)
        self.write()
        log(f"stage {name}")
        t0 = time.perf_counter()
        try:
            result = fn()
        except BaseException as err:  # SystemExit too: the report says which stage ended the call
            record.update(status="failed", seconds=round(time.perf_counter() - t0, 1),
                          error="".join(traceback.format_exception_only(type(err), err)).strip()[-2000:])
            self.write()
            log(f"stage {name}: failed: {record['error']}")
            if fatal or not isinstance(err, Exception):
                raise
            return None
        if result is not None:
            save(name, result)
        record.update(status="done", seconds=round(time.perf_counter() - t0, 1))
        self.write()
        return result


# ---------------------------------------------------------------------------------------------- processes


def run_process_group(cmd: list[str], timeout: float) -> tuple[str, int | str]:
    """Run `cmd` in a process group of its own, its output (stdout and stderr) captured; at the timeout, or when it
    ends, kill what is left of the group. A timeout that killed pytest alone left the train.py it had started (and
    that run's data workers) on the GPU, under the throughput grid that came next. Returns (output, returncode or
    "timeout after N s")."""
    with tempfile.TemporaryFile() as out:  # a file, not a pipe: a survivor holding the pipe cannot block the read
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, process_group=0)
        try:
            rc: int | str = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = f"timeout after {timeout:.0f} s"
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group's id is pytest's pid (process_group=0)
        except ProcessLookupError:  # nothing left of the group
            pass
        proc.wait()
        out.seek(0)
        return out.read().decode(errors="replace"), rc


GRACE_S = 30.0  # a run past its deadline in its final evaluation: this much more before it is stopped
TERM_S = 60.0  # from SIGTERM (train.py finishes its step and writes a checkpoint) to SIGKILL of what is left


FINISH_GRACE_S = 10.0  # a finish run (ending a stopped run at the step reached): its grace, as GRACE_S
FINISH_TERM_S = 15.0  # and its SIGTERM-to-SIGKILL time, as TERM_S: 25 s of its time kept for its stop


def wait_for_run(proc: subprocess.Popen, deadline: float, model_written: Path, grace_s: float | None = None,
                 term_s: float | None = None) -> str:
    """Wait for a train.py run until `deadline` (time.monotonic()); returns how it ended: "finished", "stopped"
    (SIGTERM at the deadline) or "killed". A run whose model is written by then is in its final evaluation, where
    train.py no longer answers SIGTERM (it would die of it, the evaluation lost): it gets `grace_s` more first. A
    run still there `term_s` after SIGTERM is killed with its process group (its data workers), so that the call
    goes on and writes what it has. `proc` must lead its own process group (process_group=0)."""
    return wait_for_runs([proc], deadline, [model_written], grace_s, term_s)[0]


def wait_for_runs(procs: list[subprocess.Popen], deadline: float, models_written: list[Path],
                  grace_s: float | None = None, term_s: float | None = None) -> list[str]:
    """wait_for_run for several runs on one clock: each is signalled at the shared deadline (or its grace's end)
    and killed `term_s` after its signal, whatever the others do, so that all have ended by deadline + grace_s +
    term_s at the latest. Waiting for one run after another would give the second its signal only once the first
    had ended, up to grace_s + term_s past the deadline for each run. Returns how each ended, in order."""
    grace_s, term_s = GRACE_S if grace_s is None else grace_s, TERM_S if term_s is None else term_s
    ended: list[str | None] = [None] * len(procs)
    signalled: dict[int, float] = {}  # run -> when SIGTERM was sent
    while None in ended:
        now = time.monotonic()
        for i, proc in enumerate(procs):
            if ended[i] is not None:
                continue
            if proc.poll() is not None:
                ended[i] = "stopped" if i in signalled else "finished"
            elif i in signalled:
                if now >= signalled[i] + term_s:
                    log(f"train.py (pid {proc.pid}) still running {term_s:.0f} s after SIGTERM: killed")
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    proc.wait()
                    ended[i] = "killed"
            elif now >= deadline + (grace_s if models_written[i].is_file() else 0.0):
                log(f"deadline reached: asking train.py (pid {proc.pid}) to checkpoint and stop")
                proc.send_signal(signal.SIGTERM)
                signalled[i] = now
        if None in ended:
            time.sleep(0.1)
    return ended


def start_run(cmd: list[str], log_file) -> subprocess.Popen:
    """Start train.py in a process group of its own (wait_for_run may kill the group), its output to `log_file`. A
    group, not a session (setsid): the device ends what a call leaves running when it returns, except the processes
    of another session, which would train on under the next call."""
    log_file.write("$ " + " ".join(cmd) + "\n")
    log_file.flush()
    return subprocess.Popen(cmd, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT, process_group=0)


def run_with_deadline(cmd: list[str], deadline_s: float, logfile: Path, model_written: Path,
                      grace_s: float | None = None, term_s: float | None = None) -> tuple[int, bool]:
    """Run train.py; at the deadline send SIGTERM (it finishes its step, writes a checkpoint and exits 0), unless
    it has written its model and is evaluating it (wait_for_run). Returns (returncode, stopped at the deadline)."""
    deadline = time.monotonic() + max(1.0, deadline_s)
    with logfile.open("a") as f:
        proc = start_run(cmd, f)
        ended = wait_for_run(proc, deadline, model_written, grace_s, term_s)
    return proc.returncode, ended != "finished"


def last_checkpoint_step(output: Path) -> int | None:
    steps = [int(p.name.split("_")[1]) for p in (output / "checkpoints").glob("step_*")]
    return max(steps) if steps else None


def finish_command(cmd: list[str], step: int) -> list[str]:
    """`cmd`, a train.py run the deadline stopped, ended at the step it reached: a resume with max_steps set to
    `step`, which writes the model, its record and card (the record notes the change)."""
    at = cmd.index("--optim.max_steps") + 1
    return [*cmd[:at], str(step), *cmd[at + 1:], "--resume", "latest", "--resume_allow_changes"]


def read_history(output: Path) -> list[dict]:
    """A run's history.jsonl, whole entries only: a line cut short (a run killed while appending it) is skipped,
    as train.py's own reader does on resume (TrainingRun._read_history)."""
    history_file = output / "history.jsonl"
    entries = []
    for line in history_file.read_text().splitlines() if history_file.is_file() else []:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "step" in entry:
            entries.append(entry)
    return entries


def median_rate(history: list[dict]) -> float | None:
    """The median samples/s of a run's history, without its first logged rate (it includes the start-up)."""
    rates = sorted([h["samples_per_s"] for h in history if "samples_per_s" in h][1:])
    return rates[len(rates) // 2] if rates else None
