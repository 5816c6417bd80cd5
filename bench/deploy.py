"""Deployment benchmark: what a Space on 2 vCPUs and an ONNX user see, side by side in one run.

    python bench/deploy.py          # writes bench/results/deploy.md

1. The demo's own path (`bsr_hub.demo.upscaling.upscale_upload` with its default settings, as the Space runs it) on a
   1-megapixel photo (1000x1000) at each scale: the figure the Space README quotes. Speed does not depend on the
   weights, so a scale without a bundled checkpoint runs the `bsr-lite` preset at that scale, freshly initialised.
2. One network, three runtimes: PyTorch `model(x)`, ONNX Runtime and OpenCV dnn running the graph that
   `bsr-hub export bsr-lite-x2` writes, on a 480x320 photo; rounds interleave the runtimes, median of --repeats.

Each runtime gets the same number of threads (--threads, default 2). Real photos come from ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "deploy.md"
RECORD = RESULTS.with_suffix(".json")  # the Space section, read by `bsr-hub space export` for the Space README
SHARED = ROOT.parent / "shared" / "data"
PHOTO_1MP = SHARED / "benchmarks" / "Set14" / "lenna.png"  # 512x512, enlarged to 1000x1000 (bicubic)
PHOTO_SMALL = SHARED / "benchmarks" / "BSD100" / "101085.png"  # 481x321, cropped to 480x320


def space_rows(threads: int) -> tuple[list[str], list[dict]]:
    from bsr_hub import BSRModel, bundled_checkpoints
    from bsr_hub.demo.models import ModelCache, ModelEntry
    from bsr_hub.demo.upscaling import upscale_upload

    bundled = {BSRModel.from_pretrained(n).scale: n for n in bundled_checkpoints() if n.startswith("bsr-lite-")}
    rows, records = [], []
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "photo-1mp.png"
        Image.open(PHOTO_1MP).convert("RGB").resize((1000, 1000), Image.Resampling.BICUBIC).save(photo)
        for scale in (2, 3, 4):
            name = bundled.get(scale)
            if name is None:
                folder = Path(tmp) / f"bsr-lite-x{scale}-untrained"
                BSRModel.from_preset("bsr-lite", scale=scale).save_pretrained(folder)
                label = f"bsr-lite x{scale} (preset, not bundled yet)"
            else:
                folder, label = bundled_checkpoints()[name], name
            entry = ModelEntry(label, folder, scale, "bsr-lite", "bench", "")
            cache = ModelCache([entry], device="cpu")
            cache.get(entry.label)  # loaded once, as the demo does, before any request
            result = upscale_upload(cache, photo, entry.label, max_pixels=2_000_000)
            w, h = result.image.size
            rows.append(f"| {label} | 1000x1000 | {w}x{h} | {result.seconds:.1f} |")
            records.append({"model": label, "scale": scale, "input": "1000x1000", "seconds": round(result.seconds, 1)})
            print(rows[-1], flush=True)
    return rows, records


def runtime_rows(threads: int, repeats: int) -> list[str]:
    import cv2
    import onnxruntime as ort

    from bsr_hub import BSRModel
    from bsr_hub.models.export import export_onnx

    model = BSRModel.from_pretrained("bsr-lite-x2")
    rgb = np.asarray(Image.open(PHOTO_SMALL).convert("RGB"))[:320, :480]
    x = np.ascontiguousarray((rgb.astype(np.float32) / 255.0).transpose(2, 0, 1)[None])  # (1, 3, 320, 480)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "bsr-lite-x2.onnx", source="bsr-lite-x2").onnx_path
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        cv2.setNumThreads(threads)
        net = cv2.dnn.readNetFromONNX(str(path))
        tensor = torch.from_numpy(x)

        def run_torch():
            with torch.no_grad():
                return model(tensor).clamp(0, 1).numpy()

        def run_ort():
            return session.run(None, {"input": x})[0]

        def run_cv2():
            net.setInput(x)
            return net.forward()

        runtimes = {
            f"PyTorch {torch.__version__}": run_torch,
            f"ONNX Runtime {ort.__version__}": run_ort,
            f"OpenCV dnn {cv2.__version__}": run_cv2,
        }
        reference = run_torch()
        times: dict[str, list[float]] = {name: [] for name in runtimes}
        diffs = {}
        for name, fn in runtimes.items():  # warm-up, and the 8-bit agreement with PyTorch
            out = fn()
            diffs[name] = int(np.abs(np.rint(out * 255) - np.rint(reference * 255)).max())
        for _ in range(repeats):
            for name, fn in runtimes.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times[next(iter(runtimes))])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append(
            f"| {name} | {med:.2f} | {960 * 640 / med / 1e6:.2f} | {base / med:.2f}x | {diffs[name]} |"
        )
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--load", default="", help="what else ran on the machine meanwhile (written with the table)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not PHOTO_1MP.is_file():
        print(f"real photos not found under {SHARED}", file=sys.stderr)
        return 2

    space, space_records = space_rows(args.threads)
    runtimes = runtime_rows(args.threads, args.repeats)
    command = "python bench/deploy.py" + "".join(f" {a}" if " " not in a else f' "{a}"' for a in (argv or sys.argv[1:]))
    text = "\n".join(
        [
            "# Deployment benchmark",
            "",
            f"Command: `{command}` (written by the script itself).",
            "",
            f"Machine: {platform.machine()}, {args.threads} threads per runtime, torch {torch.__version__}, "
            f"Python {platform.python_version()}. fp32, batch 1.",
            f"Other load while it ran: {args.load or 'none stated'}.",
            "",
            "## The Space: one 1-megapixel photo through the demo (the demo's default: upscale's automatic tiling and backend)",
            "",
            "| model | input | output | seconds |",
            "|---|---|---|---|",
            *space,
            "",
            "## One network, three runtimes: bsr-lite-x2 on a 480x320 photo (960x640 out)",
            "",
            "| runtime | seconds (median) | output MP/s | speed vs PyTorch | max 8-bit diff vs PyTorch |",
            "|---|---|---|---|---|",
            *runtimes,
            "",
        ]
    )
    RESULTS.write_text(text)
    record = {"command": command, "threads": args.threads, "load": args.load or "none stated", "space": space_records}
    RECORD.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {RESULTS} and {RECORD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
