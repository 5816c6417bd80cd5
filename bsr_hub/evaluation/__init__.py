"""The evaluation layer: the published protocol (MATLAB bicubic LR, Y-channel PSNR/SSIM), its metrics, the
bicubic baseline, the models it scores (BSR, bicubic, ONNX Runtime and OpenCV files: `loading`), the leaderboard of
several of them, and the robustness suite. Its results go into a checkpoint's records (`models.records`).
"""

from .bicubic import BicubicModel
from .leaderboard import LeaderboardEntry, run_leaderboard, score_model, timing_note, write_leaderboard
from .loading import ModelSpec, model_kind, parameter_count
from .metrics import psnr, psnr_ssim, ssim
from .protocol import (
    BICUBIC,
    BenchmarkResult,
    evaluate_benchmark,
    evaluate_benchmarks,
    launch_accelerator,
    load_model,
    markdown_table,
    resolve_device,
    score_image,
)
from .robustness import (
    DEFAULT_SUITE_BENCHMARKS,
    FAMILIES,
    InputDegradation,
    evaluate_robustness,
    merge_documents,
    results_document,
    robustness_suite,
)

__all__ = [
    "BICUBIC",
    "DEFAULT_SUITE_BENCHMARKS",
    "FAMILIES",
    "BenchmarkResult",
    "BicubicModel",
    "InputDegradation",
    "LeaderboardEntry",
    "ModelSpec",
    "evaluate_benchmark",
    "evaluate_benchmarks",
    "evaluate_robustness",
    "launch_accelerator",
    "load_model",
    "markdown_table",
    "merge_documents",
    "model_kind",
    "parameter_count",
    "psnr",
    "psnr_ssim",
    "resolve_device",
    "results_document",
    "robustness_suite",
    "run_leaderboard",
    "score_image",
    "score_model",
    "ssim",
    "timing_note",
    "write_leaderboard",
]
