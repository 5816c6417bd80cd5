"""Model cards rendered from the `model_card.md` template and measured numbers, never written by hand."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..core import write_atomically, write_texts_together
from .hub import bundled_checkpoints, load_pretrained
from .network import BSRNetwork
from .records import (
    CARD_NAME,
    CARRIED_RECORDS,
    EVAL_RESULTS_NAME,
    ROBUSTNESS_RESULTS_NAME,
    EvalResults,
    RecordError,
    TrainingRecord,
    format_duration,
    merge_results,
    read_robustness,
    read_training,
    same_weights,
    trained_for_record,
)

TEMPLATE_NAME = "model_card.md"

# The Hub metadata of every BSR model card (also given to PyTorchModelHubMixin in modeling.py).
CARD_METADATA: dict[str, Any] = {
    "library_name": "bsr-hub",
    "pipeline_tag": "image-to-image",
    "license": "apache-2.0",
    "tags": ("super-resolution", "image-super-resolution", "bsr", "pytorch"),
}


def template_path() -> Path:
    """The card template: a copy inside the installed wheel, else the one at the top of a source checkout."""
    packaged = resources.files("bsr_hub") / TEMPLATE_NAME
    if packaged.is_file():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parents[2] / TEMPLATE_NAME
    if checkout.is_file():
        return checkout
    raise FileNotFoundError(f"model card template {TEMPLATE_NAME} is missing from the bsr_hub installation")


METRIC_DECIMALS = {"psnr": 2, "ssim": 4}  # as published tables round them


def _metric_type(metric: str, self_ensemble: bool) -> str:
    return f"{metric}-self-ensemble" if self_ensemble else metric


def below_bicubic(result: dict[str, Any]) -> bool:
    """Whether an evaluation entry's PSNR is below its bicubic baseline's, as the card shows both (rounded): a model
    that makes those images worse than plain bicubic upscaling, which its card must say in words."""
    bicubic = result.get("bicubic_psnr")
    decimals = METRIC_DECIMALS["psnr"]
    return bicubic is not None and round(float(result["psnr"]), decimals) < round(float(bicubic), decimals)


def eval_results_for(results: list[dict[str, Any]]) -> list[EvalResult]:
    """model-index entries: one dataset entry per benchmark, scale and degradation (the dataset `config`, since
    the Hub groups metrics by task, dataset type and config); self-ensemble results are metrics of their own
    (`psnr-self-ensemble`), never a second `psnr` on the same dataset."""
    out = []
    for r in results:
        ensemble = bool(r.get("self_ensemble"))
        for metric in ("psnr", "ssim"):
            out.append(
                EvalResult(
                    task_type="image-to-image",
                    task_name="Image Super-Resolution",
                    dataset_type=r["benchmark"],
                    dataset_name=f"{r['benchmark']} (x{r['scale']}, {r['degradation']})",
                    dataset_config=f"x{r['scale']}-{r['degradation']}",
                    dataset_split="test",
                    metric_type=_metric_type(metric, ensemble),
                    metric_name=metric.upper() + " (Y channel" + (", x8 self-ensemble)" if ensemble else ")"),
                    metric_value=round(float(r[metric]), METRIC_DECIMALS[metric]),
                )
            )
    return out


def model_index_mismatches(card_path: str | Path, results: list[dict[str, Any]]) -> list[str]:
    """What the Hub's own parser reads back from a card's model-index that differs from `results` (the
    `eval_results.json` entries): missing, extra or different values. Empty when the card is right."""
    parsed = ModelCard.load(card_path).data.eval_results or []
    found = {(e.dataset_type, e.dataset_config, e.metric_type): e.metric_value for e in parsed}
    expected = {}
    for r in results:
        for metric, decimals in METRIC_DECIMALS.items():
            key = (r["benchmark"], f"x{r['scale']}-{r['degradation']}", _metric_type(metric, bool(r.get("self_ensemble"))))
            expected[key] = round(float(r[metric]), decimals)
    problems = [f"{k}: card has {found.get(k, 'nothing')}, results have {v}" for k, v in expected.items()
                if found.get(k) != v]
    problems += [f"{k}: in the card but not in the results" for k in found.keys() - expected.keys()]
    if len(parsed) != len(found):
        problems.append(f"the card repeats a metric: {len(parsed)} entries for {len(found)} distinct ones")
    return problems


def training_lineage(training: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The stages a checkpoint was trained in (first to last) and their total, for the card.

    `training` is a `training.json` as `TrainingRecord` reads it (a record written before lineage was kept is a
    single stage).
    """
    record = TrainingRecord.from_dict(training)
    stages = []
    for stage in record.lineage:
        row = dataclasses.asdict(stage)
        row["init_from"] = stage.init_from or "scratch"
        if stage.teacher:
            row["init_from"] += f"; taught by {stage.teacher}"
        row["wall_time"] = format_duration(stage.wall_time_s) if stage.wall_time_s is not None else "not recorded"
        stages.append(row)
    total_s = record.total_wall_time_s
    total = {
        "steps": record.total_steps,
        "wall_time": format_duration(total_s) if total_s is not None else "not recorded for every stage",
        "stages": len(stages),
    }
    return stages, total


def render_model_card(
    model: BSRNetwork,
    *,
    model_name: str | None = None,
    results: list[dict[str, Any]] | None = None,
    training: dict[str, Any] | None = None,
    license: str | None = None,
    datasets: list[str] | None = None,
    **template_kwargs: Any,
) -> ModelCard:
    """Render the card for `model`.

    Args:
        model_name: the name shown in the card and used in the model-index (a Hub repo id or bundled name).
        results: evaluation entries as written by evaluate.py (`benchmark`, `scale`, `degradation`,
            `self_ensemble`, `num_images`, `psnr`, `ssim`, optionally `bicubic_psnr`, `bicubic_ssim`); one below
            its bicubic PSNR is flagged in words under the table (`below_bicubic`).
        training: what training recorded (data, command, steps, wall time, hardware, recipe); absent fields are
            rendered as "not recorded".
    """
    config = model.config
    name = model_name or (f"{config.preset}-x{config.scale}" if config.preset else f"bsr-x{config.scale}")
    results = list(results or [])
    card_data = ModelCardData(
        library_name=CARD_METADATA["library_name"],
        pipeline_tag=CARD_METADATA["pipeline_tag"],
        license=license or CARD_METADATA["license"],
        tags=list(CARD_METADATA["tags"]),
        datasets=datasets,
        model_name=name if results else None,
        eval_results=eval_results_for(results) if results else None,
    )
    lineage, total = training_lineage(training) if training else ([], {})
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path()),
        model_name=name,
        preset=config.preset or "custom",
        scale=config.scale,
        parameters=model.num_parameters(),
        conv_layers=model.num_conv_layers(),
        config_json=json.dumps(config.to_dict(), indent=2, sort_keys=True),
        results=results,
        below_bicubic=[r for r in results if below_bicubic(r)],
        training=training or {},
        lineage=lineage,
        total=total,
        **template_kwargs,
    )
    return card


def robustness_table(document: dict[str, Any]) -> str:
    """Rows: degradations; per benchmark: bicubic, the model, and the difference (dB), then the blockiness of
    bicubic and of the model ("-" in a document written before the suite measured it, or for a row not measured
    on that benchmark)."""
    rows = document["rows"]
    benches = list(dict.fromkeys(r["benchmark"] for r in rows))
    degradations = list(dict.fromkeys(r["degradation"] for r in rows))
    by_key = {(r["benchmark"], r["degradation"]): r for r in rows}
    head = "| LR made by | " + " | ".join(
        f"{b} bicubic | {b} model | {b} gain | {b} blockiness bicubic | {b} blockiness model" for b in benches
    ) + " |"
    lines = [head, "|---|" + "---|" * (5 * len(benches))]
    for d in degradations:
        cells = []
        for b in benches:
            r = by_key.get((b, d))
            if r is None:  # a row family measured on some benchmarks only (a merged document)
                cells += ["-"] * 5
                continue
            gain = r["psnr"] - r["bicubic_psnr"]
            mark = " **(worse)**" if gain < 0 else ""
            cells += [f"{r['bicubic_psnr']:.2f}", f"{r['psnr']:.2f}", f"{gain:+.2f}{mark}",
                      _figure(r.get("bicubic_blockiness")), _figure(r.get("blockiness"))]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def card_eval_results(folder: str | os.PathLike) -> list[Any]:
    """The model-index entries (`huggingface_hub.EvalResult`) of the folder's card, as the Hub reads them; empty
    without a card. Raises what `ModelCard.load` raises for an unreadable one."""
    card = Path(folder) / CARD_NAME
    return (ModelCard.load(card).data.eval_results or []) if card.is_file() else []


def update_card(
    model_dir: str | os.PathLike,
    results: Sequence[dict[str, Any]],
    *,
    model_name: str | None = None,
    evaluation_command: str | None = None,
    robustness: dict[str, Any] | None = None,
) -> Path:
    """Merge `results` into the checkpoint's `eval_results.json` and re-render its `README.md` model card.

    `robustness` (a `robustness.results_document`) replaces the folder's `robustness_results.json`; the card
    shows the folder's robustness table, when it has one, under Limitations.

    Results measured before (other benchmarks, scales, degradations) are kept; an entry with the same
    benchmark, scale, degradation and self-ensemble is replaced. The training section comes from
    `training.json` beside the checkpoint when training wrote one. Each entry keeps the command that measured
    it, and the card lists those commands.

    Returns:
        The path of the written README.md.

    Raises:
        RecordError: results with unreadable images, or results whose scale is not the model's.
    """
    folder = Path(model_dir)
    model, _ = load_pretrained(BSRNetwork, folder)  # the card describes this network; the weights are checked
    for r in results:
        if r.get("failed"):
            names = ", ".join(f["name"] for f in r["failed"])
            raise RecordError(f"not writing {r['benchmark']} into the card: unreadable images ({names})")
        if not r.get("num_images"):  # every image reconstructed exactly: no finite mean to publish
            raise RecordError(f"not writing {r['benchmark']} into the card: no image of it has a finite PSNR "
                              f"(reconstructed exactly: {', '.join(r.get('identical') or []) or 'none'})")
        if int(r["scale"]) != model.scale:
            raise RecordError(f"{r['benchmark']} was measured at x{r['scale']}, but {folder} is a x{model.scale} model")
    if robustness is not None and int(robustness["scale"]) != model.scale:  # checked before anything is written
        raise RecordError(f"the robustness suite ran at x{robustness['scale']}, but {folder} is a x{model.scale} model")
    previous = EvalResults.load(folder)
    name = model_name or previous.model or folder.name
    new = []
    for r in results:
        entry = {k: v for k, v in r.items() if k != "timing_s"}
        if evaluation_command:
            entry["command"] = evaluation_command
        new.append(entry)
    merged = merge_results(previous.results, new)
    texts = {folder / EVAL_RESULTS_NAME: EvalResults(model=name, results=merged).to_text()}
    if robustness is not None:
        texts[folder / ROBUSTNESS_RESULTS_NAME] = json.dumps(robustness, indent=2) + "\n"
    else:
        robustness = read_robustness(folder)
    training = read_training(folder)

    commands = list(dict.fromkeys(r["command"] for r in merged if r.get("command")))
    card_results = [{k: v for k, v in r.items() if k != "per_image"} for r in merged]
    card = render_model_card(
        model, model_name=name, results=card_results, training=training, evaluation_commands=commands,
        **how_to_load(folder, name), robustness=robustness, trained_for=trained_for_record(training),
        robustness_table=robustness_table(robustness) if robustness else "",
    )
    target = folder / CARD_NAME
    texts[target] = str(card)

    def check(temporaries: dict[Path, Path]) -> None:
        # ModelCard.validate() posts to the Hub; offline, check that the Hub's parser reads back what we measured,
        # before anything is replaced.
        problems = model_index_mismatches(temporaries[target], merged)
        if problems:
            raise RuntimeError("the rendered card's model-index does not match the results: " + "; ".join(problems))

    write_texts_together(texts, check)  # the records and the card: all replaced, or none
    return target


LOCAL_LOAD_NOTE = "the folder holding this card; its Hub id once pushed"


def how_to_load(folder: str | os.PathLike, name: str) -> dict[str, str | None]:
    """What the card's "How to use" passes to `from_pretrained` (`load_as`), with a comment on it (`load_note`): the
    bundled name for a bundled checkpoint, a Hub id for a model that has one, and otherwise a placeholder path ending
    in the folder's name. Never the folder's absolute path (the card travels, the path is this machine's), nor a
    bundled name for another folder (a user's model named like a bundled one must not point its readers at the
    bundled weights)."""
    folder = Path(folder)
    bundled = bundled_checkpoints()
    if name in bundled and bundled[name].resolve() == folder.resolve():
        return {"load_as": name, "load_note": None}
    if name not in bundled and name.count("/") == 1:
        return {"load_as": name, "load_note": None}
    return {"load_as": f"path/to/{folder.resolve().name}", "load_note": LOCAL_LOAD_NOTE}


def carry_records(source: str | os.PathLike, target: str | os.PathLike, *, model_name: str | None = None) -> list[Path]:
    """Copy a checkpoint's records (`CARRIED_RECORDS`) into the folder its weights were saved in, and re-render the
    card there: `from_pretrained("bsr-lite-x2").save_pretrained(folder)` keeps bsr-lite-x2's results and lineage.

    The caller has checked that the weights saved in `target` are the ones in `source` (`carried_source`, before
    saving): changed weights are not described by these records. `model_name` renames the copy (a Hub id it is
    pushed to); by default it keeps the source's name. Returns the copied files; none when `source` has no records
    or is `target` itself.
    """
    source, target = Path(source), Path(target)
    if source.resolve() == target.resolve():
        return []
    found = [p for pattern in CARRIED_RECORDS for p in sorted(source.glob(pattern)) if p.is_file()]
    # Each copy is written beside its name and renamed: a link planted in `target` is replaced, not written through.
    copied = [write_atomically(target / p.name, lambda tmp, p=p: shutil.copyfile(p, tmp)) for p in found]
    if copied:
        update_card(target, [], model_name=model_name)
    return copied


def check_card_target(model_dir: str | os.PathLike, model_name: str, model: torch.nn.Module) -> None:
    """Refuse to write one model's numbers into another checkpoint's card.

    Raises:
        RecordError: `model` is the bicubic baseline, or its weights are not those in `model_dir`.
    """
    if not isinstance(model, BSRNetwork):
        raise RecordError(
            f"--update-card {model_dir}: --model {model_name} is not that checkpoint; its numbers would be written "
            "into the card as the checkpoint's own (the bicubic baseline is added to the card automatically)"
        )
    if not same_weights(model, model_dir):
        raise RecordError(
            f"--update-card {model_dir}: that checkpoint is not the evaluated model {model_name} (different config "
            "or weights); pass the same checkpoint to --model and --update-card"
        )
