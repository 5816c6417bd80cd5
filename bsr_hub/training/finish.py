"""The end of a finished run: the saved model and bicubic on the evaluation benchmarks, the results into the
model's card and on the console, then the push to the Hub. `train.py` calls these after `TrainingRun.finish`
has written the model and its training record."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from ..data import load_benchmark
from ..evaluation import BicubicModel, evaluate_benchmark
from ..models import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    BSRModel,
    below_bicubic,
    format_duration,
    push_failure,
    update_card,
)
from .config import TrainConfig
from .run import TrainingRun


def final_evaluation(cfg: TrainConfig, validation: Any, accelerator: Any) -> list[dict]:
    """The saved model and bicubic on the evaluation benchmarks (or the validation set), for the card."""
    benchmarks = [load_benchmark(Path(d).name, Path(d).parent) for d in cfg.validation.eval_dirs]
    if not benchmarks and validation is not None:
        benchmarks = [validation]
    model = saved_model(Path(cfg.output.dir) / "model", accelerator)
    results = []
    for bench in benchmarks:
        ours = evaluate_benchmark(model, bench, cfg.scale, cfg.data.degradation, accelerator=accelerator)
        base = evaluate_benchmark(BicubicModel(cfg.scale), bench, cfg.scale, cfg.data.degradation,
                                  accelerator=accelerator, progress=False)
        entry = ours.to_dict()
        entry.update(bicubic_psnr=base.psnr, bicubic_ssim=base.ssim)
        results.append(entry)
    return results


def saved_model(model_dir: Path, accelerator: Any) -> BSRModel:
    """The model as saved in `model_dir`, on every process. The main process reads the folder; with several
    processes it sends the files to the others, whose machines may not see that folder (a disk of their own), and
    each loads them the same way: every process evaluates the very file that ships."""
    if accelerator.num_processes == 1:
        return BSRModel.from_pretrained(model_dir, map_location=accelerator.device)
    import tempfile

    from accelerate.utils import broadcast_object_list

    files = {name: (model_dir / name).read_bytes() for name in (CONFIG_NAME, WEIGHTS_NAME)} \
        if accelerator.is_main_process else None
    files = broadcast_object_list([files])[0]
    with tempfile.TemporaryDirectory(prefix="bsr-saved-model-") as folder:
        for name, data in files.items():
            (Path(folder) / name).write_bytes(data)
        return BSRModel.from_pretrained(folder, map_location=accelerator.device)


def publish(cfg: TrainConfig, accelerator: Any, run: TrainingRun, model_dir: Path, results: list[dict], command: str) -> None:
    """Main process, at the end: the final results into the model's card and on the console, then the push."""
    update_card(model_dir, results, model_name=cfg.model_name,
                evaluation_command=command + " (evaluation at the end)")
    for r in results:
        below = " -- below bicubic: flagged in the card" if below_bicubic(r) else ""
        accelerator.print(f"{r['benchmark']} x{cfg.scale}: PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.4f} "
                          f"(bicubic {r['bicubic_psnr']:.2f} dB){below}")
    if not results:
        accelerator.print(f"not evaluated (no --validation.dir or --validation.eval_dirs): `python evaluate.py "
                          f"--model {model_dir} --scale {cfg.scale} --update-card {model_dir}` writes results "
                          "into its card")
    accelerator.print(f"saved {model_dir} after {run.step} steps in {format_duration(run.wall_time())}")
    if cfg.output.push_to_hub:
        from huggingface_hub import HfApi

        repo = cfg.output.hub_model_id
        try:
            url = HfApi().upload_folder(repo_id=repo, folder_path=model_dir,
                                        commit_message=f"BSR {cfg.model.preset} x{cfg.scale}, {run.step} steps")
        except Exception as err:  # refused, connection lost: the trained model is saved, say how to push it later
            raise SystemExit(f"error: {push_failure(repo, err)}. The trained model is saved in {model_dir}; push it "
                             f"with `hf upload {repo} {shlex.quote(str(model_dir))}`") from None
        accelerator.print(f"pushed to {url}")
