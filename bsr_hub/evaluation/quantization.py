"""What int8 costs: a float32 graph and its int8 version (`bsr-hub export --int8`) scored side by side under the
published protocol (MATLAB bicubic LR, Y-channel PSNR, border cropped by the scale), each in ONNX Runtime as a user
of the files runs them (`OnnxRuntimeModel`, one pass over the whole image).

The result goes into the int8 graph's metadata as it is measured here, per benchmark: fp32 PSNR, int8 PSNR and the
cost (fp32 - int8, dB; positive is a loss).
"""

from __future__ import annotations

import os
from typing import Any

from ..data import Benchmark
from ..inference import OnnxRuntimeModel, read_graph_facts
from .protocol import evaluate_benchmark

PROTOCOL = ("published: HR mod-cropped, LR by MATLAB bicubic (BI), Y-channel PSNR with the border cropped by the "
            "scale, one pass over the whole image in ONNX Runtime (CPU provider)")


def quantization_cost(fp32: str | os.PathLike, int8: str | os.PathLike, benchmarks: list[Benchmark], *,
                      threads: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Score both graphs on every benchmark; per benchmark {fp32_psnr, int8_psnr, cost_db, num_images}, and the
    largest cost over them (`max_cost_db`).

    Raises:
        EvaluationError: a benchmark that cannot be scored (an unreadable image is an error here, not a footnote:
            a cost over fewer images than named would not be the cost on that benchmark).
    """
    from ..data import EvaluationError

    facts = read_graph_facts(fp32)
    if facts.scale is None:
        raise EvaluationError(f"{fp32} does not say its scale: not a bsr-hub export")
    models = {name: OnnxRuntimeModel(path, facts.scale, border_context=facts.border_context, threads=threads)
              for name, path in (("fp32", fp32), ("int8", int8))}
    per_set: dict[str, dict[str, Any]] = {}
    for benchmark in benchmarks:
        scores = {}
        for name, model in models.items():
            result = evaluate_benchmark(model, benchmark, facts.scale, tile=0, progress=progress)
            if result.failed:
                raise EvaluationError(f"{benchmark.name}: {result.failed[0]['name']}: {result.failed[0]['error']}")
            scores[name] = result
        per_set[benchmark.name] = {
            "fp32_psnr": round(scores["fp32"].psnr, 4),
            "int8_psnr": round(scores["int8"].psnr, 4),
            "cost_db": round(scores["fp32"].psnr - scores["int8"].psnr, 4),
            "num_images": scores["fp32"].num_images,
        }
    return {
        "protocol": PROTOCOL,
        "scale": facts.scale,
        "benchmarks": per_set,
        "max_cost_db": max(s["cost_db"] for s in per_set.values()),
    }
