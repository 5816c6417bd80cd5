"""Model cards rendered from the `model_card.md` template and measured numbers, never written by hand."""

from __future__ import annotations

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
    checkout = Path(__file__).resolve().parent.parent / TEMPLATE_NAME
    if checkout.is_file():
        return checkout
    raise FileNotFoundError(f"model card template {TEMPLATE_NAME} is missing from the bsr_hub installation")


def eval_results_for(results: list[dict[str, Any]]) -> list[EvalResult]:
    """model-index entries (one per benchmark, scale and degradation; metrics psnr and ssim)."""
    out = []
    for r in results:
        dataset = f"{r['benchmark']} (x{r['scale']}, {r['degradation']}{', self-ensemble' if r.get('self_ensemble') else ''})"
        for metric in ("psnr", "ssim"):
            out.append(
                EvalResult(
                    task_type="image-to-image",
                    task_name="Image Super-Resolution",
                    dataset_type=r["benchmark"],
                    dataset_name=dataset,
                    dataset_split="test",
                    metric_type=metric,
                    metric_name=metric.upper() + " (Y channel)",
                    metric_value=round(float(r[metric]), 4 if metric == "ssim" else 2),
                )
            )
    return out


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
            `self_ensemble`, `num_images`, `psnr`, `ssim`, optionally `bicubic_psnr`, `bicubic_ssim`).
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
        training=training or {},
        **template_kwargs,
    )
    return card
