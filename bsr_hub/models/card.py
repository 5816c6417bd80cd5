"""Model cards rendered from the `model_card.md` template and measured numbers, never written by hand."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

if TYPE_CHECKING:
    from .modeling import BSRModel

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
    from .records import TrainingRecord, format_duration

    record = TrainingRecord.from_dict(training)
    stages = []
    for stage in record.lineage:
        row = dataclasses.asdict(stage)
        row["init_from"] = stage.init_from or "scratch"
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
    model: BSRModel,
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
