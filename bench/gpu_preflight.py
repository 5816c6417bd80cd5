"""The first seconds of every GPU call (issue 28): is everything the call needs on this machine? Standard library
only until the checks pass, so that a call on a fresh machine (the warm one was given back after an idle gap, and
what earlier calls unpacked went with it) fails in seconds, naming each missing wheel, part and file, instead of
minutes later, or never (the old check counted PNG files).

`preflight(call)`: `check_staged` (every wheel, every carried file, every file of each part the call needs: NEEDS,
by size and SHA-256 against the staging's manifest, which every part carries whole), then the wheels installed
(`install_wheels`), the carried parts unpacked into device_data/data (`unpack_parts`), ../shared/data pointed at it
(`link_shared`). bench/gpu_stage.py made the parts here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from gpu_stage import (
    CARRY,
    DEVICE_DATA,
    NEEDS,
    REPO,
    WHEEL_PINS,
    WHEEL_PYTHON,
    WHEELS,
    data_root,
    sha256,
    unpack_tiles,
)


def _plan(device_data: Path, call: str) -> dict:
    manifests = [json.loads(p.read_text()) for p in sorted(device_data.glob("part_*/MANIFEST.json"))]
    if not manifests:
        carry = CARRY.get(call, ["wheels", "device_data/part_N"])
        raise SystemExit(f"error: {call}: no staged part on this machine ({device_data.name}/part_*/MANIFEST.json "
                         f"missing): carry {json.dumps(carry)} as bench/GPU.md lists them")
    ids = {m["id"] for m in manifests}
    if len(ids) > 1:
        raise SystemExit(f"error: parts from different stagings on this machine (plans {sorted(ids)}): stage once "
                         "and carry the parts of that staging")
    return manifests[-1]


def _bad(folder: Path, files: dict[str, dict]) -> list[str]:
    """The files of `files` missing under `folder`, or not of their size and SHA-256."""
    bad = []
    for rel, e in files.items():
        p = folder / rel
        if not p.is_file() or p.stat().st_size != e["bytes"] or sha256(p) != e["sha256"]:
            bad.append(rel)
    return bad


def _first(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def check_staged(call: str, device_data: Path = DEVICE_DATA, wheels: Path = WHEELS) -> dict:
    """Every wheel, carried file and needed part's file present and intact, else SystemExit naming each missing
    one. Standard library only: it runs before anything slow. Returns the plan."""
    plan = _plan(device_data, call)
    problems = []
    bad_wheels = _bad(wheels, plan["wheels"])
    if bad_wheels:
        problems.append(f"{wheels.name}/: {_first(bad_wheels, 9)} missing or altered (every call carries wheels/)")
    for k, files in plan["carried"].items():
        folder = device_data / f"part_{k}"
        if folder.is_dir():
            bad = _bad(folder, files)
            if bad:
                problems.append(f"{device_data.name}/part_{k}: {_first(bad)} missing or altered (a broken carry)")
    root, stamps = data_root(device_data), device_data / "unpacked"
    for k in NEEDS[call]:
        if (device_data / f"part_{k}").is_dir():
            continue  # carried (checked above), unpacked below
        bad = _bad(root, plan["unpacked"][str(k)])
        if bad or not (stamps / f"part_{k}.json").is_file():
            who = next(c for c, carry in CARRY.items() if f"device_data/part_{k}" in carry)
            problems.append(f"{device_data.name}/part_{k} (carried by {who}): not on this machine, and {len(bad)} of "
                            f"the {len(plan['unpacked'][str(k)])} files it unpacks to are not under "
                            f"{root.relative_to(device_data.parent)} ({_first(bad)}): the machine was given back "
                            "since that call (a fresh one)")
    if problems:
        raise SystemExit(f"error: {call} cannot start, missing:\n  - " + "\n  - ".join(problems)
                         + "\nbench/GPU.md, 'When a call fails in its first seconds', says what to run.")
    return plan


def install_wheels(plan: dict, device_data: Path = DEVICE_DATA, wheels: Path = WHEELS, device: str = "cuda") -> Path:
    """pip-install the carried wheels into device_data/site (skipped where this machine already has exactly these,
    each checked by its dist-info); returns the folder. On the CPU (the rehearsal) they are installed for Python
    WHEEL_PYTHON as there, and the venv's own packages are used."""
    site = device_data / "site"
    stamp = site / ".wheels.json"
    names = [n.split("-")[0] + "-" + n.split("-")[1] + ".dist-info" for n in plan["wheels"]]
    if stamp.is_file() and json.loads(stamp.read_text()) == plan["wheels"] and all((site / n).is_dir() for n in names):
        return site
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--upgrade", "--target", str(site), *(str(wheels / n) for n in plan["wheels"])]
    if device == "cpu":
        cmd[4:4] = ["--python-version", WHEEL_PYTHON, "--only-binary=:all:"]
    subprocess.run(cmd, check=True)
    absent = [n for n in names if not (site / n).is_dir()]
    if absent:
        raise SystemExit(f"error: after pip install, {', '.join(absent)} not in {site}")
    stamp.write_text(json.dumps(plan["wheels"]))
    return site


def unpack_parts(plan: dict, device_data: Path = DEVICE_DATA) -> list[int]:
    """Unpack each carried part not unpacked yet from this plan into data_root; returns the parts unpacked."""
    root, stamps, done = data_root(device_data), device_data / "unpacked", []
    for k in sorted(int(k) for k in plan["carried"]):
        folder, stamp = device_data / f"part_{k}", stamps / f"part_{k}.json"
        if not folder.is_dir():
            continue
        if stamp.is_file() and json.loads(stamp.read_text()).get("id") == plan["id"] \
                and not _bad(root, plan["unpacked"][str(k)]):
            continue
        written = unpack_tiles(folder / f"train_{k}.npz", root / "train")
        for rel in plan["carried"][str(k)]:
            if rel.startswith("benchmarks/"):
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(folder / rel, root / rel)
        expected = {n[len("train/"):]: e for n, e in plan["unpacked"][str(k)].items() if n.startswith("train/")}
        if written != expected:
            raise SystemExit(f"error: device_data/part_{k}/train_{k}.npz does not unpack to what its manifest lists")
        stamps.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps({"id": plan["id"], "part": k, "files": len(plan["unpacked"][str(k)])}))
        done.append(k)
    return done


def link_shared(device_data: Path = DEVICE_DATA, log=print) -> Path:
    """../shared/data -> device_data/data, so that the tests read the same paths as here; returns the data root."""
    root = data_root(device_data)
    shared = device_data.parent.parent / "shared" / "data"
    if not shared.exists() and not shared.is_symlink():
        shared.parent.mkdir(parents=True, exist_ok=True)
        shared.symlink_to(root)
    elif shared.resolve() != root.resolve():
        log(f"note: {shared} exists and is not the staged data; the tests read it as it is")
    return root


def preflight(call: str, device: str = "cuda", device_data: Path = DEVICE_DATA, wheels: Path = WHEELS,
              log=print) -> tuple[Path, dict]:
    """The first seconds of a call: check (check_staged), install the wheels, unpack the carried parts, link
    ../shared/data. Returns (the data root, what was done)."""
    t0 = time.perf_counter()
    plan = check_staged(call, device_data, wheels)
    t_check = time.perf_counter() - t0
    site = install_wheels(plan, device_data, wheels, device)
    unpacked = unpack_parts(plan, device_data)
    root = link_shared(device_data, log)
    # This checkout's package first (not one an editable install points at); on the CPU the venv's packages serve
    # (the wheels are for WHEEL_PYTHON).
    paths = [str(REPO)] + ([str(site)] if device != "cpu" else [])
    os.environ["PYTHONPATH"] = os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    sys.path[:0] = paths
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["PYTHONUNBUFFERED"] = "1"
    images = sum(1 for p in (root / "train").rglob("*.webp")) if (root / "train").is_dir() else 0
    done = {"plan": plan["id"], "check_s": round(t_check, 2), "seconds": round(time.perf_counter() - t0, 1),
            "unpacked_now": unpacked, "parts_needed": list(NEEDS[call]), "train_tiles": images,
            "train_tiles_planned": sum(1 for k in NEEDS[call] for n in plan["unpacked"][str(k)] if n.startswith("train/"))}
    log(f"preflight {call}: plan {plan['id']} checked in {t_check:.2f} s; unpacked parts {unpacked or 'none'}; "
        f"{images} training tiles under {root}")
    return root, done


def import_check(pins: list[str] = WHEEL_PINS) -> str | None:
    """None if `datasets` imports, here and now (sys.path as preflight set it), at its pinned version; else why.
    In this process: the call imports it anyway, and a second interpreter costs a minute on a loaded CPU."""
    import importlib

    version = next(p.split("==")[1] for p in pins if p.startswith("datasets=="))
    try:
        datasets = importlib.import_module("datasets")
    except Exception as err:  # noqa: BLE001  (an ImportError, or a dependency's error at import: an old pyarrow)
        return f"import datasets failed: {type(err).__name__}: {err}"
    if datasets.__version__ != version:
        return f"datasets {datasets.__version__} imported (from {datasets.__file__}), not the carried {version}"
    return None
