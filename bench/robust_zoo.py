"""The benchmark-protocol models next to the robust ones, per scale (issue 24): bench/results/robust_zoo.md.

Two parts, both from files and models anyone can rerun:

- per scale, the robustness suite's table (Set5 and Set14) of bicubic, the benchmark model and the robust model, read
  from the `robustness_results.json` of the two bundled checkpoints (written by `evaluate.py --suite robustness`;
  their commands are in the file);
- one picture of crops: a real photograph (bsr_hub's example `chelsea.png`, CC0) shrunk by OpenCV's `cv2.resize`
  with its default interpolation (INTER_LINEAR: what a script that calls cv2.resize without a flag gets), then
  upscaled by bicubic (MATLAB's), the benchmark model and the robust model, next to the original; one row per
  scale, each crop enlarged 2x with nearest pixels. Y-PSNR of the whole image (the protocol's shave) is printed
  beside each.

    python bench/robust_zoo.py [--photo PATH] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from common import write_result

from bsr_hub import BSRModel, bundled_checkpoints, example_images
from bsr_hub.data import imresize, modcrop
from bsr_hub.data.resizers import require_opencv
from bsr_hub.demo.upscaling import most_structured_point
from bsr_hub.evaluation import psnr_ssim
from bsr_hub.evaluation.robustness import row_family

SCALES = (2, 3, 4)
CROP = 96  # HR pixels of each crop (shown at 2x)
COLUMNS = ("bicubic", "benchmark model", "robust model", "original")


def suite_table(scale: int) -> list[str]:
    """Markdown: per row of the suite and per set, bicubic / benchmark / robust PSNR, from the two bundled records."""
    folders = bundled_checkpoints()
    bench = json.loads((folders[f"bsr-lite-x{scale}"] / "robustness_results.json").read_text())
    robust = json.loads((folders[f"bsr-lite-x{scale}-robust"] / "robustness_results.json").read_text())
    by_key = {name: {(r["benchmark"], r["degradation"]): r for r in doc["rows"]} for name, doc in
              (("benchmark", bench), ("robust", robust))}
    sets = list(dict.fromkeys(r["benchmark"] for r in robust["rows"]))
    lines = [f"| LR made by | " + " | ".join(f"{s} bicubic | {s} bsr-lite-x{scale} | {s} bsr-lite-x{scale}-robust"
                                              for s in sets) + " |",
             "|---|" + "---|" * (3 * len(sets))]
    for degradation in dict.fromkeys(r["degradation"] for r in robust["rows"]):
        cells = []
        for s in sets:
            b, r = by_key["benchmark"].get((s, degradation)), by_key["robust"][(s, degradation)]
            gain_b = "-" if b is None else f"{b['psnr']:.2f} ({b['psnr'] - b['bicubic_psnr']:+.2f})"
            cells += [f"{r['bicubic_psnr']:.2f}", gain_b, f"{r['psnr']:.2f} ({r['psnr'] - r['bicubic_psnr']:+.2f})"]
        lines.append(f"| {degradation} | " + " | ".join(cells) + " |")
    commands = [*bench.get("commands", [bench["command"]]), *robust.get("commands", [robust["command"]])]
    return lines + ["", "Measured by: " + "; ".join(f"`{c}`" for c in commands)]


def which_one_table() -> list[str]:
    """Markdown for the README's "Which one for your images": per bundled bsr-lite model, the published protocol and
    the suite's worst gain over bicubic per row family (Set5 and Set14), from the checkpoints' records."""
    folders = bundled_checkpoints()
    lines = ["| model | for | Set5 / Set14 / BSD100 (published protocol) | worst gain over bicubic (Set5, Set14): "
             "resizer alone / after JPEG / with noise / camera-like |", "|---|---|---|---|"]
    for scale in SCALES:
        for name in (f"bsr-lite-x{scale}-robust", f"bsr-lite-x{scale}"):
            if name not in folders:
                continue
            results = json.loads((folders[name] / "eval_results.json").read_text())["results"]
            bi = {r["benchmark"]: r["psnr"] for r in results if r["degradation"] == "BI" and not r["self_ensemble"]}
            rows = json.loads((folders[name] / "robustness_results.json").read_text())["rows"]
            worst = []
            for family in ("resize", "jpeg", "noise", "camera"):
                gains = [r["psnr"] - r["bicubic_psnr"] for r in rows if row_family(r) == family]
                worst.append(f"{min(gains):+.2f}" if gains else "-")
            purpose = "photos (default)" if name.endswith("robust") else "MATLAB-bicubic LR"
            published = " / ".join(f"{bi[b]:.2f}" for b in ("Set5", "Set14", "BSD100"))
            lines.append(f"| `{name}` | {purpose} | {published} | {' / '.join(worst)} |")
    return lines


def crops_row(photo: np.ndarray, scale: int) -> tuple[list[Image.Image], list[float]]:
    """The four crops of one scale (HR pixels) and the whole-image Y-PSNR of the three upscalers."""
    cv2 = require_opencv()
    hr = modcrop(photo, scale)
    lr = cv2.resize(hr, (hr.shape[1] // scale, hr.shape[0] // scale))  # the default: INTER_LINEAR
    outputs = [imresize(lr, scale)]  # MATLAB bicubic, (H, W, 3) uint8
    for name in (f"bsr-lite-x{scale}", f"bsr-lite-x{scale}-robust"):
        sr = BSRModel.from_pretrained(name).upscale(Image.fromarray(lr))
        outputs.append(np.asarray(sr))
    hr_t = torch.from_numpy(hr).permute(2, 0, 1)[None]
    psnrs = [float(psnr_ssim(torch.from_numpy(o).permute(2, 0, 1)[None], hr_t, shave=scale)[0][0]) for o in outputs]
    fx, fy = most_structured_point(Image.fromarray(hr), region=CROP)
    x0 = int(np.clip(fx * hr.shape[1] - CROP / 2, 0, hr.shape[1] - CROP))
    y0 = int(np.clip(fy * hr.shape[0] - CROP / 2, 0, hr.shape[0] - CROP))
    crops = [Image.fromarray(a[y0:y0 + CROP, x0:x0 + CROP]).resize((2 * CROP, 2 * CROP), Image.Resampling.NEAREST)
             for a in (*outputs, hr)]
    return crops, psnrs


def picture(photo: np.ndarray) -> tuple[Image.Image, dict[int, list[float]]]:
    side, head, gap = 2 * CROP, 18, 4
    sheet = Image.new("RGB", (4 * side + 5 * gap, len(SCALES) * (side + head + gap) + head + gap), "white")
    draw = ImageDraw.Draw(sheet)
    for k, title in enumerate(COLUMNS):
        draw.text((gap + k * (side + gap), 3), title, fill="black")
    figures = {}
    for row, scale in enumerate(SCALES):
        crops, psnrs = crops_row(photo, scale)
        figures[scale] = psnrs
        top = head + gap + row * (side + head + gap)
        for k, crop in enumerate(crops):
            label = f"x{scale}" + (f"  {psnrs[k]:.2f} dB" if k < 3 else "")
            draw.text((gap + k * (side + gap), top), label, fill="black")
            sheet.paste(crop, (gap + k * (side + gap), top + head))
    return sheet, figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photo", default=None, help="an RGB photograph (default: the bundled example chelsea.png)")
    parser.add_argument("--out", default="bench/results", help="folder for robust_zoo.md and robust_zoo.png")
    args = parser.parse_args()
    photo_path = Path(args.photo) if args.photo else next(p for p in example_images() if p.name == "chelsea.png")
    photo = np.asarray(Image.open(photo_path).convert("RGB"))
    out = Path(args.out)
    sheet, figures = picture(photo)
    out.mkdir(parents=True, exist_ok=True)
    sheet.save(out / "robust_zoo.png")
    lines = [
        "# The benchmark models and the robust models, per scale (issue 24)",
        "",
        "Written by `python bench/robust_zoo.py` (its docstring says what it does). Benchmark-protocol models",
        "(`bsr-lite-x<s>`) are trained on MATLAB-bicubic LR alone; the robust ones (`bsr-lite-x<s>-robust`, the default",
        "of `bsr-hub upscale` and the demo) on a mix of resizers, noise and JPEG (their cards' training sections).",
        "",
        f"## A photograph shrunk by `cv2.resize` (default INTER_LINEAR): {photo_path.name}",
        "",
        "![crops](robust_zoo.png)",
        "",
        "| scale | bicubic | benchmark model | robust model |",
        "|---|---|---|---|",
        *(f"| x{s} | {p[0]:.2f} | {p[1]:.2f} | {p[2]:.2f} |" for s, p in figures.items()),
        "",
        "Y-PSNR (dB) of the whole image against the original, the scale's pixels shaved at the border, as the",
        "published protocol.",
    ]
    lines += ["", "## Which one for your images (README)", "", *which_one_table()]
    for scale in SCALES:
        lines += ["", f"## x{scale}: the robustness suite (Y-PSNR in dB; the gain over bicubic of the same LR in brackets)",
                  "", *suite_table(scale)]
    write_result(out / "robust_zoo.md", lines)


if __name__ == "__main__":
    main()
