"""`bsr-hub space export OUT/`: a Hugging Face Space folder that builds, because it carries what it installs.

A Space installs `requirements.txt` with pip and runs `python app.py`. bsr_hub is on no package index, so a
requirement like `bsr-hub[demo]` cannot build; the exported folder holds instead

    app.py                         the demo (bsr_hub.demo.app), serving the checkpoints in checkpoints/
    README.md                      the Space header (sdk, sdk_version, `models:` with the Hub ids that exist)
    requirements.txt               the CPU torch index, then the wheel below (gradio comes from sdk_version)
    bsr_hub-VERSION-py3-none-any.whl   built from this checkout (or given with --wheel)
    checkpoints/NAME/              config.json, model.safetensors, README.md of every model it serves

Push the folder to a new Gradio Space (`huggingface-cli upload me/my-space OUT/ --repo-type space`) as it is.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
DEPLOY_BENCH = CHECKOUT / "bench" / "results" / "deploy.json"
CHECKPOINT_FILES = ("config.json", "model.safetensors", "README.md", "training.json")
"""What a served checkpoint needs: training.json says what it was trained for (`models.trained_for`), which picks the
demo's default, the model for photos of unknown origin (`demo.models.default_label`)."""
WRITTEN = ("app.py", "README.md", "requirements.txt", "checkpoints")
PYTHON_VERSION = "3.11"  # what the demo is tested with; the wheel itself is pure Python

APP_PY = '''"""This Space: the bsr_hub demo serving the checkpoints in ./checkpoints (written by `bsr-hub space export`).

Spaces runs `python app.py` with GRADIO_SERVER_NAME/PORT set; BSR_DEMO_MODELS, if set, replaces the list.
"""

import os
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no request leaves the machine
CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
os.environ.setdefault("BSR_DEMO_MODELS", ",".join(str(p) for p in sorted(CHECKPOINTS.iterdir()) if p.is_dir()))

from bsr_hub.demo.app import build_demo, serve  # noqa: E402

demo = build_demo()

if __name__ == "__main__":
    serve(demo)
'''


@dataclass(frozen=True)
class ServedModel:
    name: str
    folder: Path
    scale: int
    preset: str
    hub_id: str | None
    """The Hub repo the checkpoint is published as, when known: it goes into the Space's `models:` list."""


@dataclass(frozen=True)
class SpaceExport:
    folder: Path
    wheel: Path
    models: tuple[ServedModel, ...]


def _hub_id_from_training(folder: Path) -> str | None:
    """The `hub_model_id` a train.py run pushed to, from its resolved recipe (read without needing pyyaml): under
    `output:` in a recipe with sections, at the top in one of bsr_hub 0.1."""
    from ..models import TRAINING_CONFIG_NAME

    recipe = folder / TRAINING_CONFIG_NAME
    if not recipe.is_file():
        return None
    text = recipe.read_text(errors="replace")
    pushed = re.search(r"^[ ]*push_to_hub:\s*true\s*$", text, re.MULTILINE)
    repo = re.search(r"^[ ]*hub_model_id:\s*['\"]?([\w.-]+/[\w.-]+)['\"]?\s*$", text, re.MULTILINE)
    return repo.group(1) if pushed and repo else None


def resolve_models(names: tuple[str, ...] | list[str] = ()) -> list[ServedModel]:
    """The checkpoints to serve: the given names (bundled, folder or Hub id), or every bundled one."""
    from ..models import BSRConfig, bundled_checkpoints, resolve_checkpoint

    bundled = bundled_checkpoints()
    if not names and not bundled:
        raise ValueError("no bundled checkpoint to serve; pass --model PATH_OR_REPO_ID")
    served = []
    for name in names or list(bundled):
        folder = resolve_checkpoint(name)
        from_hub = not Path(name).expanduser().is_dir() and name not in bundled
        config = BSRConfig.from_json_file(folder / "config.json")
        served.append(
            ServedModel(
                name=Path(name).name if Path(name).expanduser().is_dir() else name.split("/")[-1],
                folder=folder,
                scale=config.scale,
                preset=config.preset or "custom",
                hub_id=name if from_hub else _hub_id_from_training(folder),
            )
        )
    folder_names = [m.name for m in served]
    if len(set(folder_names)) != len(folder_names):
        raise ValueError(f"two models would share a folder name in checkpoints/: {folder_names}")
    return served


def build_wheel(dest: Path) -> Path:
    """Build bsr_hub's wheel from the checkout this module lives in, into `dest`, offline."""
    if not (CHECKOUT / "pyproject.toml").is_file():
        raise FileNotFoundError(
            f"bsr_hub is installed from a wheel ({CHECKOUT} is not a checkout), so there is nothing to build: "
            "pass the wheel to put in the Space with --wheel PATH"
        )
    try:
        import hatchling  # noqa: F401  # the build backend, used without build isolation (no download)
    except ImportError as err:
        raise ImportError("building the wheel needs hatchling: pip install hatchling (or pass --wheel)") from err
    with tempfile.TemporaryDirectory() as tmp:
        run = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
             "-w", tmp, str(CHECKOUT)],
            capture_output=True,
            text=True,
        )
        wheels = list(Path(tmp).glob("bsr_hub-*.whl"))
        if run.returncode != 0 or len(wheels) != 1:
            raise RuntimeError(f"building the bsr_hub wheel failed:\n{run.stdout}{run.stderr}")
        return Path(shutil.copy2(wheels[0], dest))


def expected_times() -> tuple[list[tuple[int, float]], str] | None:
    """(scale, seconds) for a 1-megapixel photo through the demo on 2 CPU threads, and what else ran then, from
    bench/deploy.py's last run; None where that file is absent (an installed wheel has no bench/ folder)."""
    if not DEPLOY_BENCH.is_file():
        return None
    record = json.loads(DEPLOY_BENCH.read_text())
    return [(row["scale"], row["seconds"]) for row in record["space"]], record["load"]


def space_readme(models: list[ServedModel], gradio_version: str) -> str:
    from .models import card_psnr

    hub_ids = sorted({m.hub_id for m in models if m.hub_id})
    scales = "/".join(f"x{s}" for s in sorted({m.scale for m in models}))
    front = [
        "---",
        "title: BSR Super-Resolution",
        "emoji: 🔎",
        "colorFrom: indigo",
        "colorTo: gray",
        "sdk: gradio",
        f"sdk_version: {gradio_version}",
        f'python_version: "{PYTHON_VERSION}"',
        "app_file: app.py",
        "pinned: false",
        "license: apache-2.0",
        f"short_description: Upscale photos {scales} with BSR (bsr_hub)",
        "# Hub repos of the served checkpoints (bundled or local ones without a Hub repo are not listed).",
        "models:" + ("" if hub_ids else " []"),
        *(f"- {repo}" for repo in hub_ids),
        "---",
    ]
    rows = [
        f"| {m.name} | x{m.scale} | `{m.preset}` | {m.hub_id or 'none (served from checkpoints/)'} | "
        f"{card_psnr(m.folder)} |"
        for m in models
    ]
    measured = expected_times()
    if measured:
        times, load = measured
        timing = (
            "On the free CPU hardware (2 vCPUs), expect a 1-megapixel photo (1000x1000) to take up to "
            + ", ".join(f"{sec:.0f} s at x{scale}" for scale, sec in times)
            + " with a `bsr-lite` model (the demo's default settings). Measured on a 2-core CPU by `python bench/deploy.py` in bsr_hub's repository "
            f"(`bench/results/deploy.md`); other load on that machine then: {load}. Inputs are limited to "
            "2 megapixels."
        )
    else:
        timing = "Expected times were not measured for this export (bench/results/deploy.json was not found)."
    body = [
        "",
        "# BSR super-resolution",
        "",
        "Upload a photo, pick the scale, get a lossless PNG, a bicubic-vs-BSR slider and an enlarged detail of "
        "the region with the most structure. Written by `bsr-hub space export`; this folder is complete: "
        "`pip install -r requirements.txt && python app.py` runs it anywhere.",
        "",
        "| model | scale | preset | Hub repo | benchmark |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "## What to expect",
        "",
        timing,
        "",
        "## API",
        "",
        "```python",
        "from gradio_client import Client, handle_file",
        "",
        'client = Client("OWNER/SPACE")  # or the local URL',
        'png_path, (bicubic_path, bsr_path), info = client.predict(handle_file("photo.jpg"), api_name="/upscale")',
        "```",
        "",
    ]
    return "\n".join(front + body)


def requirements_txt(wheel_name: str) -> str:
    return (
        "# bsr_hub from the wheel in this folder (bsr-hub space export built it), with its demo extra (gradio: on a\n"
        "# Space, sdk_version in README.md already provides it). The CPU index keeps pip from downloading torch's\n"
        "# multi-gigabyte CUDA build.\n"
        "--extra-index-url https://download.pytorch.org/whl/cpu\n"
        f"./{wheel_name}[demo]\n"
    )


MANIFEST = ".bsr-space-export.json"
"""What an export wrote into its folder: a later `--overwrite` replaces those names and nothing else."""


def check_wheel(wheel: str | os.PathLike) -> Path:
    """A bsr_hub wheel to ship: a file named bsr_hub-*.whl that is a wheel of the package (not any file)."""
    import zipfile

    path = Path(wheel)
    if not path.is_file():
        raise FileNotFoundError(f"no such wheel: {wheel}")
    if not (path.name.startswith("bsr_hub-") and path.suffix == ".whl"):
        raise ValueError(f"{wheel} is not a bsr_hub wheel (expected bsr_hub-VERSION-py3-none-any.whl)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except zipfile.BadZipFile as err:
        raise ValueError(f"{wheel} is not a wheel (not a zip archive: {err})") from None
    if "bsr_hub/__init__.py" not in names:
        raise ValueError(f"{wheel} does not hold the bsr_hub package")
    return path


def _ours(out: Path) -> set[str]:
    """The names a previous export recorded in `out`'s manifest (none if it has no readable one)."""
    try:
        listed = json.loads((out / MANIFEST).read_text()).get("written", [])
    except (OSError, ValueError, AttributeError):
        try:  # an export from before the manifest: its app.py is ours, word for word
            legacy = (out / "app.py").read_text() == APP_PY
        except (OSError, ValueError):
            legacy = False
        return ({*WRITTEN, *(p.name for p in out.glob("bsr_hub-*.whl"))} if legacy else set())
    return {name for name in listed if isinstance(name, str) and "/" not in name and name not in ("", ".", "..")}


def export_space(
    out_dir: str | os.PathLike,
    models: tuple[str, ...] | list[str] = (),
    *,
    wheel: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> SpaceExport:
    """Write the Space folder. An existing non-empty `out_dir` is an error unless `overwrite`, which replaces
    what an earlier export recorded writing there (its manifest) and nothing else: a name of ours that exists
    but was not written by an export (a training folder's checkpoints/, a model's own README.md) is refused.
    Everything is made in a temporary folder beside `out_dir` first and moved in at the end, so an interrupted
    or failed export (Ctrl-C while the wheel builds, a full disk) leaves `out_dir` as it was."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file; give a folder for the Space")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty (pass --overwrite to replace the Space files in it)")
    try:
        gradio_version = metadata.version("gradio")
    except metadata.PackageNotFoundError:
        raise ImportError("the Space pins the Gradio version it is tested with: pip install 'bsr-hub[demo]'") from None
    served = resolve_models(tuple(models))
    wheel = check_wheel(wheel) if wheel is not None else None
    resolved = out.resolve()
    for model in served:
        folder = model.folder.resolve()
        if folder == resolved or resolved in folder.parents:
            raise ValueError(f"the model {model.folder} is inside the Space folder {out}: exporting would replace "
                             "its files; export into another folder")
    ours = _ours(out) if out.is_dir() else set()
    present = {p.name for p in out.iterdir()} if out.is_dir() else set()
    foreign = sorted(n for n in present & (set(WRITTEN) | {MANIFEST}) if n not in ours and n != MANIFEST)
    foreign += sorted(n for n in present if n.startswith("bsr_hub-") and n.endswith(".whl") and n not in ours)
    if foreign:
        raise FileExistsError(f"{out} holds {', '.join(foreign)}, which no Space export wrote there: not replacing "
                              "them (move them, or export into another folder)")

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        wheel_path = Path(shutil.copy2(wheel, staging)) if wheel is not None else build_wheel(staging)
        for model in served:
            dest = staging / "checkpoints" / model.name
            dest.mkdir(parents=True)
            for name in CHECKPOINT_FILES:
                if (model.folder / name).is_file():
                    shutil.copy2(model.folder / name, dest / name)
        (staging / "app.py").write_text(APP_PY)
        (staging / "requirements.txt").write_text(requirements_txt(wheel_path.name))
        (staging / "README.md").write_text(space_readme(served, gradio_version))
        written = sorted(p.name for p in staging.iterdir())
        (staging / MANIFEST).write_text(json.dumps({"written": written}, indent=2) + "\n")
        out.mkdir(exist_ok=True)
        for name in sorted(ours):  # what the previous export wrote, and only that
            target = out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
        for name in [*written, MANIFEST]:  # the manifest last: it lists only what is in place
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return SpaceExport(out, out / wheel_path.name, tuple(served))
