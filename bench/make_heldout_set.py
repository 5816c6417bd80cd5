"""Build the held-out photo set: `lomiri-wallpapers-16.04`'s photographs as an HR benchmark folder (issue 21).

    python bench/make_heldout_set.py                      # -> ../extra_data/heldout/lomiri-16.04/*.png
    python evaluate.py --model bsr-lite-x3 --data-dir ../extra_data/heldout --benchmarks lomiri-16.04 --scale 3

The package is never trained on (make_photo_set.py refuses it by name; docs ENVIRONMENT.md keeps it for evaluation),
so it is the one set of real photographs that a checkpoint replacement can be checked on besides Set5 / Set14 /
BSD100, none of whose images the replacement rule was tuned on. Each JPEG is downsized with Pillow's LANCZOS filter
(antialiased) to at most `--max-side` px on its long side, as the training photos are: that removes most JPEG
artefacts, and keeps an evaluation of the 15 images to about a minute for bsr-lite on two cores. PNGs and a
manifest (file, source sha256, size) are written outside the repository; nothing here is committed.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

from make_photo_set import check_outside_repository, fetch, sha256_of, target_size
from PIL import Image

PACKAGE = "lomiri-wallpapers-16.04"
ROOT = Path(__file__).resolve().parents[1]


def build(out: Path, max_side: int) -> list[dict[str, str]]:
    """Write OUT/lomiri-16.04/NAME.png for each of the package's JPEGs; return the manifest rows."""
    folder = out / "lomiri-16.04"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        root, version = fetch(PACKAGE, Path(work))
        for path in sorted((root / "usr" / "share" / "backgrounds").glob("*.jpg")):
            with Image.open(path) as img:
                rgb = img.convert("RGB")
            size = target_size(*rgb.size, max_side, 1.0)
            if size != rgb.size:
                rgb = rgb.resize(size, Image.Resampling.LANCZOS)
            name = f"{path.stem}.png"
            rgb.save(folder / name)
            rows.append({"file": name, "package": f"{PACKAGE} {version}", "source": path.name,
                         "source_sha256": sha256_of(path), "size": f"{size[0]}x{size[1]}"})
    with open(out / "lomiri-16.04-manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=ROOT.parent / "extra_data" / "heldout",
                        help="folder outside the repository (default ../extra_data/heldout)")
    parser.add_argument("--max-side", type=int, default=1020, help="long side in px after downsizing (default 1020)")
    args = parser.parse_args(argv)
    check_outside_repository(args.out)
    rows = build(args.out, args.max_side)
    print(f"{len(rows)} images -> {args.out / 'lomiri-16.04'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
