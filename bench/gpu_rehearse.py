"""The full CPU rehearsal of a GPU lease (issue 28): bench/GPU.md's calls as typed, run by the same scripts with
`--device cpu` on a few images, each in a folder that stands in for the device's checkout as the run tool makes it
(a copy of the tracked and unignored files, the carried paths replacing theirs, ignored outputs kept between calls
on the same machine, $OUT empty before each call, the returned files held to the tool's limits).

    python bench/gpu_rehearse.py            # transcript: bench/results/gpu_cpu_rehearsal.md; exit 1 if a check fails

Steps (each checked):
  1. here: `gpu.py stage` on a few images into a scratch folder (the real staging's code, small parts);
  2. machine A: call 1 (carry wheels, part 1; the lease's budget), call 2 (wheels, part 2; the budget its reply
     would say: budget - START_S - call 1's wall time - XFER_S; the timeout from it, gpu_run.timeout_for); the
     returned files within the tool's limits; the model comes back and unpacks here; the lease's sum fits;
     machine D, the zoo's own lease: call 1, then call 3 (bench/gpu_zoo.py);
  3. machine B, fresh (the warm one went back after an idle gap): call 2 fails in seconds naming device_data/part_1;
     machine C: call 1 without wheels/ fails naming the wheel files;
  4. machine A: call 2 again, killed (as the tool kills at timeout_s) once training runs: what it left in $OUT has
     the stages done and names the one it was in.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent)]
import gpu
import gpu_run

REPO = gpu.REPO
NAME_OK = re.compile(r"^[A-Za-z0-9._-]+$")


class Lease:
    """The device time of a simulated lease: the start counted (not waited for), each call's transfers counted."""

    def __init__(self, budget: float):
        self.budget, self.t0, self.spent = budget, time.monotonic(), gpu_run.START_S

    def left(self) -> float:
        return self.budget - self.spent - (time.monotonic() - self.t0)

    def transfer(self) -> None:
        self.spent += gpu_run.XFER_S


def new_machine(root: Path) -> Path:
    """A fresh device checkout: the tracked and unignored files of this one (what a call sends), nothing else."""
    machine = root / REPO.name
    shutil.rmtree(root, ignore_errors=True)
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for n in names:
        src = REPO / n
        if n and (src.is_file() or src.is_symlink()):
            (machine / n).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, machine / n, follow_symlinks=False)
    return machine


def kill_session(sid: int) -> None:
    """SIGKILL every process of session `sid` (the call this script started, and what that call started)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid:  # field 6 of stat: the session id
            try:
                os.kill(int(stat.parent.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def returned(out: Path) -> tuple[list[str], list[str]]:
    """What the run tool would bring back from $OUT, and what breaks its limits."""
    files, problems = [], []
    for p in sorted(out.rglob("*")):
        if p.is_dir():
            continue
        rel = p.relative_to(out)
        size = p.stat().st_size
        files.append(f"{rel} ({size / 2**20:.2f} MiB)")
        if len(rel.parts) > 3 or not all(NAME_OK.match(x) for x in rel.parts) or size > 16 * 2**20:
            problems.append(f"{rel} would not come back")
    if len(files) > 8:
        problems.append(f"{len(files)} files in $OUT, 8 at most come back")
    return files, problems


class Rehearsal:
    def __init__(self, work: Path, python: str):
        self.work, self.python, self.n, self.lines, self.failed = work, python, 0, [], []

    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def check(self, ok: bool, what: str) -> bool:
        self.say(f"- {'PASS' if ok else 'FAIL'}: {what}")
        if not ok:
            self.failed.append(what)
        return ok

    def call(self, machine: Path, command: str, carry: list[str], timeout_s: float, here: Path,
             kill_when=None) -> dict:
        """One `run` call: carried paths replace theirs, $OUT emptied, the command run in its own session, killed
        whole at timeout_s (or when `kill_when(out)` says so)."""
        self.n += 1
        out = self.work / f"out_{self.n}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for c in carry:
            shutil.rmtree(machine / c, ignore_errors=True)
            if (here / c).exists():
                shutil.copytree(here / c, machine / c)
        self.say(f"\n### Call {self.n}: `{command}`\n")
        self.say(f"`{json.dumps({'command': command, 'carry': carry, 'timeout_s': int(timeout_s)})}`, on "
                 f"`{machine.parent.name}`\n")
        argv = shlex.split(command)
        argv[0] = self.python  # python3 there
        env = {**os.environ, "OUT": str(out), "PYTHONPATH": str(machine), "HF_HUB_OFFLINE": "1",
               "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        t0 = time.monotonic()
        log = self.work / f"call_{self.n}.log"
        with log.open("w") as f:
            proc = subprocess.Popen(argv, cwd=machine, env=env, stdout=f, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            rc, killed = None, False
            while rc is None:
                try:
                    rc = proc.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    if time.monotonic() - t0 > timeout_s or (kill_when is not None and kill_when(out)):
                        kill_session(proc.pid)
                        rc, killed = proc.wait(), True
        kill_session(proc.pid)  # what the call left running goes when it returns, as there
        wall = time.monotonic() - t0
        files, problems = returned(out)
        text = log.read_text(errors="replace")
        self.say(f"rc {rc}{' (killed, as the tool kills at timeout_s)' if killed else ''}, {wall:.1f} s; returned: "
                 + (", ".join(files) or "nothing"))
        self.say("\n```\n" + "\n".join(text.splitlines()[-18:]) + "\n```\n")
        self.check(not problems, "the returned files are within the run tool's limits"
                   + (f" ({'; '.join(problems)})" if problems else ""))
        return {"rc": rc, "wall": wall, "out": out, "text": text, "killed": killed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/gpu-rehearsal", help="scratch folder (emptied first)")
    parser.add_argument("--images", type=int, default=16, help="training images staged (the real staging: all)")
    parser.add_argument("--part-mib", type=float, default=2.0, help="each part's size (the real staging: the room)")
    # Under load this CPU takes 30-120 s to start Python and import torch where the GPU machine takes seconds: by
    # default the simulated lease is 1500 s and call 1's limit 600 s. `--budget 900 --call1-limit 270` are the
    # GPU's own numbers (they pass on a quiet machine). The arithmetic is the device's (gpu_run).
    parser.add_argument("--budget", type=float, default=1500.0, help="each simulated lease's device time")
    parser.add_argument("--call1-limit", type=int, default=600, help="call 1's timeout_s (270 on the GPU)")
    parser.add_argument("--no-zoo", action="store_true", help="skip the zoo's lease (calls 1 and 3)")
    parser.add_argument("--transcript", default=str(REPO / "bench" / "results" / "gpu_cpu_rehearsal.md"))
    args = parser.parse_args(argv)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    r = Rehearsal(work, sys.executable)
    cmdline = "python bench/gpu_rehearse.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else "?"
    r.say("# The GPU lease rehearsed on the CPU (issue 28)\n")
    r.say(f"Command: `{cmdline}` (with `nice -n 15 env OMP_NUM_THREADS=1`), {time.strftime('%Y-%m-%d %H:%M:%S')}; "
          f"`uptime` at the start: `{uptime}` ({os.cpu_count()} cores, {cpu}, Python "
          f"{platform.python_version()}). The calls are bench/GPU.md's, typed as there plus `--device cpu`; the "
          f"lease's device time is simulated: {args.budget:.0f} s (900 s on a GPU), the "
          f"start ({gpu_run.START_S:.0f} s) and each call's transfers ({gpu_run.XFER_S:.0f} s) counted, not "
          f"waited for; call 1's limit {args.call1_limit} s (270 s there).\n")
    t_all = time.monotonic()

    r.say("## 1. Staging here\n")
    here = work / "here"
    if (REPO / "wheels").is_dir():  # the wheels already fetched (else stage downloads them)
        shutil.copytree(REPO / "wheels", here / "wheels")
    t0 = time.monotonic()
    rc = gpu.main(["stage", "--dest", str(here), "--images", str(args.images), "--part-mib", str(args.part_mib)])
    sizes = {p.name: gpu.gpu_stage.dir_bytes(p) / 2**20 for p in sorted((here / "device_data").glob("part_*"))}
    r.say(f"`python bench/gpu.py stage --dest {here} --images {args.images} --part-mib {args.part_mib}`: "
          f"{time.monotonic() - t0:.0f} s, parts " + ", ".join(f"{k} {v:.2f} MiB" for k, v in sizes.items()) + "\n")
    r.check(rc == 0 and len(sizes) == 2, "staging made two parts, each call within 64 MiB with this tree")

    r.say("\n## 2. A lease on machine A: calls 1 and 2\n")
    a = new_machine(work / "machine_a")
    lease = Lease(args.budget)
    c1 = r.call(a, f"python3 bench/gpu.py call1 --budget {args.budget:.0f} --limit {args.call1_limit} --device cpu",
                gpu.gpu_stage.CARRY["call1"], args.call1_limit, here)  # the budget read before the start
    lease.transfer()
    r.check(c1["rc"] == 0 and (c1["out"] / "gpu.md").is_file(), "call 1 ended 0 and returned its report")
    b2 = lease.left()  # what the reply of call 1 would say
    t2 = gpu_run.timeout_for(b2)
    c2 = r.call(a, f"python3 bench/gpu.py call2 --budget {b2:.0f} --limit {t2} --device cpu",
                gpu.gpu_stage.CARRY["call2"], t2, here)
    lease.transfer()
    tar = c2["out"] / "bsr-base-x2.tar"
    r.check(c2["rc"] == 0 and tar.is_file(), "call 2 trained, packed the model and ended 0")
    report = (c2["out"] / "gpu.md").read_text() if (c2["out"] / "gpu.md").is_file() else ""
    r.check("## CUDA tests" in report and "## bsr-base x2" in report,
            "call 2's report holds call 1's results (same warm machine) and its own")
    if tar.is_file():
        back = work / "back" / "bsr-base-x2-gpu"
        r.check(gpu.main(["unpack", str(tar), str(back)]) == 0 and (back / "model.safetensors").is_file(),
                f"back here: `python bench/gpu.py unpack {tar.name} ...` gives the model folder")
    r.say(f"\nSimulated device time left after the calls: {lease.left():.0f} s of {args.budget:.0f} s "
          f"(the give-back, {gpu_run.END_S:.0f} s, still to come).\n")
    r.check(lease.left() >= gpu_run.END_S + gpu_run.SAFETY_S, "the calls fit the lease's device time with the "
            "give-back and the safety margin")

    if not args.no_zoo:
        r.say("\n## 2b. The zoo's own lease on machine D: calls 1 and 3\n")
        d = new_machine(work / "machine_d")
        zoo_lease = Lease(args.budget)
        z1 = r.call(d, f"python3 bench/gpu.py call1 --budget {args.budget:.0f} --limit {args.call1_limit} "
                    "--device cpu", gpu.gpu_stage.CARRY["call1"], args.call1_limit, here)
        zoo_lease.transfer()
        r.check(z1["rc"] == 0, "call 1 ended 0")
        b3 = zoo_lease.left()
        t3 = gpu_run.timeout_for(b3)
        c3 = r.call(d, f"python3 bench/gpu_zoo.py call3 --budget {b3:.0f} --limit {t3} --device cpu",
                    gpu.gpu_stage.CARRY["call3"], t3, here)
        zoo_lease.transfer()
        tars = sorted(p.name for p in c3["out"].glob("*.tar"))
        r.check(c3["rc"] == 0 and len(tars) == 4 and (c3["out"] / "gpu_zoo.md").is_file(),
                f"call 3 (the zoo) ended 0 with its 4 models and report ({', '.join(tars)})")
        r.check(zoo_lease.left() >= gpu_run.END_S + gpu_run.SAFETY_S, "the zoo's calls fit its lease "
                f"({zoo_lease.left():.0f} s left of {args.budget:.0f} s)")

    r.say("\n## 3. Lost parts: fresh machines\n")
    b = new_machine(work / "machine_b")
    lost = r.call(b, f"python3 bench/gpu.py call2 --budget 600 --limit {gpu_run.timeout_for(600)} --device cpu",
                  gpu.gpu_stage.CARRY["call2"], gpu_run.timeout_for(600), here)
    r.check(lost["rc"] not in (0, None) and lost["wall"] < 30 and "device_data/part_1" in lost["text"],
            f"call 2 on a fresh machine failed in {lost['wall']:.1f} s naming device_data/part_1")
    c = new_machine(work / "machine_c")
    nowheels = r.call(c, "python3 bench/gpu.py call1 --budget 900 --limit 270 --device cpu", ["device_data/part_1"],
                      270, here)  # GPU.md's call 1 with its carry less wheels/
    r.check(nowheels["rc"] not in (0, None) and nowheels["wall"] < 30 and "datasets-5.2.0" in nowheels["text"],
            f"call 1 without wheels/ failed in {nowheels['wall']:.1f} s naming the wheel files")

    r.say("\n## 4. Killed midway: call 2 again on machine A, killed once it trains\n")

    def training(out: Path) -> bool:
        f = out / "gpu_results.json"
        try:
            stages = json.loads(f.read_text()).get("stages_call2", {}).get("stages", []) if f.is_file() else []
        except json.JSONDecodeError:
            return False
        return any(s["stage"] == "train" and s["status"] == "running" for s in stages)

    killed = r.call(a, f"python3 bench/gpu.py call2 --budget 600 --limit {gpu_run.timeout_for(600)} --device cpu",
                    gpu.gpu_stage.CARRY["call2"], gpu_run.timeout_for(600), here, kill_when=training)
    text = (killed["out"] / "gpu.md").read_text() if (killed["out"] / "gpu.md").is_file() else ""
    table = text.split("| call | stage |", 1)[-1].split("\n\n", 1)[0] if "| call | stage |" in text else ""
    r.say("The stages in the gpu.md that came back:\n\n| call | stage |" + table + "\n")
    r.check(killed["killed"] and "| call2 | setup |" in text and "| call2 | train_plan |" in text
            and re.search(r"\| call2 \| train \| [0-9:]+ \| running \|", text) is not None,
            "what came back of the killed call: setup and train_plan done, train named as running")

    r.say(f"\n## Result\n\n{'All checks passed' if not r.failed else 'FAILED: ' + '; '.join(r.failed)}; "
          f"{time.monotonic() - t_all:.0f} s in all; `uptime` at the end: "
          f"`{subprocess.run(['uptime'], capture_output=True, text=True, check=False).stdout.strip()}`.")
    Path(args.transcript).write_text("\n".join(r.lines) + "\n")
    print(f"transcript: {args.transcript}")
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
