"""Bundle a trained model as a package checkpoint (issue 21's replacement step), names and records made consistent.

    python bench/bundle.py outputs/bsr-lite-x2-stage3 bsr-lite-x2     # the run folder (or its model/) -> the package
    python bench/bundle.py bsr_hub/checkpoints/bsr-lite-x3 bsr-lite-x3  # already copied: only the names are fixed

A run writes its model as what it was called while training (`bsr-lite-x3-stage4`); bundled, it is `bsr-lite-x3`. The
card, `eval_results.json` and the last stage of `training.json`'s lineage must all say the bundled name (a later
`init_from: bsr-lite-x3` carries that lineage into its own card, and tests/training/test_train.py checks it). This
script copies the run's model folder and its history into bsr_hub/checkpoints/NAME, sets the three names, re-renders
the card, and removes the old checkpoint's robustness results (they describe the weights that were replaced),
printing the commands that re-measure them. It does not decide whether a run may replace a checkpoint: that is the
rule in issue 21 (every one of Set5 / Set14 / BSD100 better, mean at least +0.10 dB), checked by the person running it,
with the held-out photos of bench/make_heldout_set.py (never trained on, nor tuned on) as a check beside it: the run
should beat the bundled checkpoint there too (`python evaluate.py --model M --data-dir ../extra_data/heldout
--benchmarks lomiri-16.04 --scale S` for both).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from bsr_hub.models.card import update_card
from bsr_hub.models.records import ROBUSTNESS_RESULTS_NAME, TRAINING_INFO_NAME, TrainingRecord

ROOT = Path(__file__).resolve().parents[1]

CHECKPOINTS = ROOT / "bsr_hub" / "checkpoints"
HISTORY_NAME = "training_history.jsonl"


def model_folder(source: Path) -> Path:
    """The folder holding the weights: `source` itself, or the `model/` train.py writes inside a run folder."""
    if (source / "model.safetensors").is_file():
        return source
    if (source / "model" / "model.safetensors").is_file():
        return source / "model"
    raise SystemExit(f"{source} holds no model.safetensors (nor does {source / 'model'})")


def copy_run(model_dir: Path, target: Path) -> list[str]:
    """Replace `target` with the run's model folder and history. The copy is made beside it and swapped in whole; the
    old folder is moved aside until then and put back if the swap fails. Returns the commands of the old checkpoint's
    robustness results (they are not carried over: they describe the weights that were replaced)."""
    old_robustness = target / ROBUSTNESS_RESULTS_NAME
    commands = (json.loads(old_robustness.read_text()).get("commands") or []) if old_robustness.is_file() else []
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    aside = target.with_name(f".{target.name}.replaced")
    try:
        for path in model_dir.iterdir():
            if path.is_file():
                shutil.copy2(path, staging / path.name)
        history = model_dir.parent / "history.jsonl"  # train.py's log, beside model/ in the run folder
        if history.is_file():
            shutil.copy2(history, staging / HISTORY_NAME)
        if target.exists():
            target.rename(aside)
        staging.rename(target)
    except BaseException:
        if aside.exists() and not target.exists():
            aside.rename(target)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return commands


def set_names(target: Path, name: str) -> None:
    """The bundled name in the lineage's last stage, then in eval_results.json and the card (update_card writes both)."""
    record_path = target / TRAINING_INFO_NAME
    if record_path.is_file():
        record = TrainingRecord.load(record_path)
        if record.lineage:
            record.lineage[-1].model = name
            record.save(record_path)
    update_card(target, [], model_name=name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a run folder (outputs/NAME) or a model folder")
    parser.add_argument("name", help="the bundled name, e.g. bsr-lite-x2")
    args = parser.parse_args(argv)

    target = CHECKPOINTS / args.name
    model_dir = model_folder(args.source)
    commands = copy_run(model_dir, target) if model_dir.resolve() != target.resolve() else []
    set_names(target, args.name)
    print(f"bundled {model_dir} as {target}")
    if commands:
        print("the old robustness results described the replaced weights; re-measure them (each adds to the card):")
        for command in commands:
            print(f"  {command} --update-card {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}")
    print("then: evaluate.py --update-card on Set5 Set14 BSD100, python bench/robust_zoo.py, the README's zoo rows, "
          "tests/models/test_bundled.py")


if __name__ == "__main__":
    main()
