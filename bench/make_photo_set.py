"""Build an extra HR training set of photographs from named Debian packages (project issue 21, item 2).

    nice -n 15 python bench/make_photo_set.py                    # the four default packages -> ../extra_data/debian_photos
    python bench/make_photo_set.py --packages mate-backgrounds --out /tmp/photos --work /tmp/photo_work
    accelerate launch train.py --config configs/tiny_x2_probe_photos.yaml  # train on it beside ../shared/data/train

What it does, in order, printing every decision with its numbers:

1. `apt-get download` each package into `--work` and `dpkg -x` it there (no install, no root). The package
   `lomiri-wallpapers-16.04` is refused by name: its photographs are kept for evaluation.
2. Find the images (JPEG, PNG, WebP; SVG files are vector renders and are skipped, counted).
3. De-duplicate: identical files (same sha256); a KDE wallpaper package (`wallpapers/NAME/contents/images*/WxH.*`)
   holds one picture at several sizes, so the largest of each NAME and folder is kept and its `screenshot.*`
   preview is dropped; elsewhere, the same picture at several resolutions (same aspect ratio within 1 %, 32x32
   grey thumbnails within 4 grey levels on average) keeps its largest copy.
4. Read the licence of every file from the package's `/usr/share/doc/PKG/copyright`: the last DEP-5 `Files:`
   stanza whose pattern matches the installed path (by its end, or by the file name: the patterns name paths in
   the source tree), else the package's `Files: *` stanza.
5. Convert to 8 bits (grey stays grey; partly transparent images are dropped: the colours under their transparent
   pixels are arbitrary) and downsize with Pillow's LANCZOS filter (antialiased) to at most `--max-side` px on the
   long side, as DIV2K's HR images are 2K. A JPEG source whose estimated quality is below `--jpeg-quality-ok` is
   shrunk by at least `--jpeg-min-shrink`, so that its 8x8 blocking is averaged away rather than learnt as detail.
6. Keep photographs, drop flat renders, by the PIC rule below; save the kept ones as PNG under `OUT/images/PKG/`.
7. Write `OUT/manifest.csv` (every image found, kept or not, and why) and `OUT/README.md` (credits and licences).
   The folder loads with `datasets.load_dataset("imagefolder", data_dir=OUT, drop_labels=True)`: the manifest is
   not named `metadata.csv`, which imagefolder would read as per-image metadata.

The photo/render rule (bsr_hub.data.pic, docs/METHOD.md section 2). PIC is measured as the sampler measures it, on LR
patches: the downsized image is reduced x2 (Pillow's 2x2 box, a fast stand-in for the MATLAB bicubic of training)
and the PIC of every 48x48 patch on a 24-pixel grid is computed (`dense_pic`). A render (vector art, a gradient, a
smooth 3-D scene) is mostly patches with no texture at all: sensor noise, grain and fine detail, which every
photograph has, are absent. So an image is a photograph when

    flat share   = share of patches with PIC < --flat-pic (3.0)                 <= --max-flat-share (0.35), and
    texture floor = the 25th percentile of patch PIC                            >= --min-floor-pic (2.5).

The thresholds are flags; every image's numbers are printed and written to the manifest, so the rule can be
audited and rerun with other values. The images land outside git (the default `--out` is beside the repository);
the script refuses an output folder inside it.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import hashlib
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO.parent / "extra_data" / "debian_photos"
DEFAULT_PACKAGES = ("mate-backgrounds", "plasma-workspace-wallpapers", "ukui-wallpapers", "lomiri-wallpapers-20.04")
REFUSED_PACKAGES = {
    "lomiri-wallpapers-16.04": "its photographs are kept for evaluation (docs ENVIRONMENT.md): never train on them",
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
VECTOR_SUFFIXES = (".svg", ".svgz")
MANIFEST_NAME = "manifest.csv"  # not metadata.csv: imagefolder would read that as per-image metadata
# libjpeg's standard luminance quantisation table (quality 50), for estimating a JPEG's quality.
_JPEG_LUMA_50 = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)


class RefusedPackage(ValueError):
    """A package this script must never put into training data."""


@dataclass(frozen=True)
class PhotoRule:
    """Photograph or render, from the PIC of LR patches (module docstring)."""

    flat_pic: float = 3.0
    """A patch whose PIC is below this is flat (no texture: a gradient, a flat colour)."""
    max_flat_share: float = 0.35
    """A photograph has at most this share of flat patches."""
    min_floor_pic: float = 2.5
    """...and its 25th-percentile patch PIC (its texture floor: noise, grain) is at least this."""
    patch_size: int = 48
    stride: int = 24

    def statistics(self, image: np.ndarray) -> dict[str, float]:
        """PIC statistics of an (H, W) or (H, W, 3) uint8 image, on its x2 box-reduced LR."""
        import torch

        from bsr_hub.data.pic import dense_pic

        lr = np.asarray(Image.fromarray(image).reduce(2))
        lr = lr[:, :, None] if lr.ndim == 2 else lr  # (h, w, C)
        if min(lr.shape[:2]) < self.patch_size:
            raise ValueError(f"an LR of {lr.shape[1]}x{lr.shape[0]} is smaller than the {self.patch_size} px patch")
        values = dense_pic(torch.from_numpy(np.ascontiguousarray(lr)).permute(2, 0, 1), self.patch_size,
                           self.stride).flatten().numpy()  # (C, h, w) -> (ny * nx,)
        p25, p50, p90 = np.percentile(values, [25, 50, 90])
        return {"flat_share": float(np.mean(values < self.flat_pic)), "pic_p25": float(p25),
                "pic_median": float(p50), "pic_p90": float(p90), "patches": int(values.size)}

    def decide(self, stats: dict[str, float]) -> tuple[bool, str]:
        """(is a photograph, the reason in numbers)."""
        flat_ok = stats["flat_share"] <= self.max_flat_share
        floor_ok = stats["pic_p25"] >= self.min_floor_pic
        said = (f"flat share {stats['flat_share']:.2f} {'<=' if flat_ok else '>'} {self.max_flat_share}, "
                f"PIC p25 {stats['pic_p25']:.2f} {'>=' if floor_ok else '<'} {self.min_floor_pic}")
        return flat_ok and floor_ok, ("photograph: " if flat_ok and floor_ok else "render: ") + said


@dataclass
class Entry:
    """One image file found in a package: a row of the manifest."""

    package: str
    version: str
    source: str
    """Path inside the package, e.g. usr/share/backgrounds/mate/nature/Wood.jpg."""
    source_sha256: str
    source_size: str
    licence: str = ""
    copyright: str = ""
    jpeg_quality: str = ""
    """Estimated from the luminance quantisation table (libjpeg scaling); empty for other formats."""
    status: str = "candidate"
    """kept, duplicate, render, unusable."""
    reason: str = ""
    output: str = ""
    """Path under the output folder (kept images only)."""
    output_size: str = ""
    output_sha256: str = ""
    flat_share: str = ""
    pic_p25: str = ""
    pic_median: str = ""
    pic_p90: str = ""

    @property
    def pixels(self) -> int:
        w, h = (int(v) for v in self.source_size.split("x"))
        return w * h


# ---------------------------------------------------------------------------------------------------- packages


def refuse(packages: list[str]) -> None:
    """Raise RefusedPackage, naming it, for any package kept out of training data."""
    for name in packages:
        if name in REFUSED_PACKAGES:
            raise RefusedPackage(f"refusing {name}: {REFUSED_PACKAGES[name]}")


def fetch(package: str, work: Path) -> tuple[Path, str]:
    """(the unpacked package's root, its version): `apt-get download` (a .deb already in WORK/debs is reused),
    then `dpkg -x`."""
    debs = work / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        subprocess.run(["apt-get", "download", package], cwd=debs, check=True)
        found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        raise FileNotFoundError(f"apt-get download {package} left no {package}_*.deb in {debs}")
    deb = found[-1]
    version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    root = work / "unpacked" / package
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return root, version


# ---------------------------------------------------------------------------------------------------- licences


@dataclass
class Stanza:
    patterns: list[str]
    licence: str
    copyright: str


def parse_copyright(text: str) -> list[Stanza]:
    """The `Files:` stanzas of a machine-readable (DEP-5) debian/copyright, in order. A file in the old free-form
    format gives none (`licence_of` then falls back to the package-level licence)."""
    stanzas = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        values: dict[str, str] = {}
        key = None
        for line in block.split("\n"):
            if line[:1] in (" ", "\t") and key is not None:
                values[key] += "\n" + line.strip()
            elif ":" in line and not line.startswith("#"):
                key, _, value = line.partition(":")
                key = key.strip().lower()
                values[key] = value.strip()
        if "files" in values and "license" in values:
            copyright_ = " / ".join(p for p in values.get("copyright", "").split("\n") if p)
            stanzas.append(Stanza(values["files"].split(), values["license"].split("\n")[0].strip(), copyright_))
    return stanzas


def package_licence(text: str) -> str:
    """A package-level licence for a copyright file with no matching stanza: its `Files: *` stanza's, else every
    `License:` short name it states."""
    for stanza in parse_copyright(text):
        if "*" in stanza.patterns:
            return stanza.licence
    names = sorted({line.partition(":")[2].strip() for line in text.split("\n") if line.startswith("License:")})
    return " and ".join(n for n in names if n) or "unknown (see the package's copyright file)"


def licence_of(path: str, stanzas: list[Stanza]) -> Stanza | None:
    """The stanza that covers an installed file: the last one (DEP-5's rule) with a pattern matching the path's
    end; failing that, the last one whose pattern's file name matches the file's name (a bare `*` excepted); else
    the `Files: *` stanza. The patterns name source-tree paths (`nature/Wood.jpg`), the path is the installed one
    (`usr/share/backgrounds/mate/nature/Wood.jpg`)."""
    name = path.rsplit("/", 1)[-1]

    def last(match) -> Stanza | None:
        hits = [s for s in stanzas if any(match(p) for p in s.patterns)]
        return hits[-1] if hits else None

    return (
        last(lambda p: p != "*" and (fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(path, "*/" + p)))
        or last(lambda p: p.rsplit("/", 1)[-1] != "*" and not p.startswith("debian/")
                and fnmatch.fnmatchcase(name, p.rsplit("/", 1)[-1]))
        or last(lambda p: p == "*")
    )


# ---------------------------------------------------------------------------------------------------- images


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def jpeg_quality(img: Image.Image) -> int | None:
    """The libjpeg quality that would give this JPEG's luminance table (an estimate; None for other formats)."""
    tables = getattr(img, "quantization", None)
    if img.format != "JPEG" or not tables:
        return None
    s = 100.0 * sum(tables[0]) / sum(_JPEG_LUMA_50)
    return round((200 - s) / 2 if s <= 100 else 5000 / s)


def kde_picture(path: str) -> tuple[str, str] | None:
    """(wallpaper NAME, images folder) for a KDE wallpaper package's picture; ("NAME", "preview") for its
    screenshot; None for any other path."""
    parts = path.split("/")
    if "wallpapers" in parts and "contents" in parts:
        i = parts.index("contents")
        if i + 1 < len(parts) and parts[i - 2] == "wallpapers":
            if parts[i + 1].startswith("screenshot."):
                return parts[i - 1], "preview"
            if parts[i + 1].startswith("images") and i + 3 == len(parts):
                return parts[i - 1], parts[i + 1]
    return None


def thumbnail(path: Path) -> np.ndarray:
    img = Image.open(path)
    img.draft("L", (256, 256))  # JPEG: decode at 1/8 size at most, enough for a 32x32 thumbnail
    return np.asarray(img.convert("L").resize((32, 32), Image.Resampling.BOX), dtype=np.float32)


def deduplicate(entries: list[Entry], files: dict[int, Path]) -> None:
    """Mark duplicates in place (status "duplicate", the reason naming the copy kept). Larger copies win."""
    order = sorted(range(len(entries)), key=lambda i: (-entries[i].pixels, entries[i].source))
    first_of: dict[str, Entry] = {}
    for i in order:
        e = entries[i]
        if e.source_sha256 in first_of:
            e.status, e.reason = "duplicate", f"same file as {first_of[e.source_sha256].source}"
        else:
            first_of[e.source_sha256] = e
    kde_kept: dict[tuple[str, str, str], Entry] = {}
    for i in order:
        e = entries[i]
        kde = kde_picture(e.source)
        if e.status != "candidate" or kde is None:
            continue
        if kde[1] == "preview":
            e.status, e.reason = "duplicate", f"the preview of KDE wallpaper {kde[0]}"
        elif (e.package, *kde) in kde_kept:
            e.status = "duplicate"
            e.reason = f"KDE wallpaper {kde[0]} at a smaller size; kept {kde_kept[(e.package, *kde)].source}"
        else:
            kde_kept[(e.package, *kde)] = e
    seen: list[tuple[Entry, float, np.ndarray]] = []
    for i in order:
        e = entries[i]
        if e.status != "candidate":
            continue
        w, h = (int(v) for v in e.source_size.split("x"))
        thumb = thumbnail(files[i])
        for kept, aspect, kept_thumb in seen:
            if kept.package == e.package and abs(w / h / aspect - 1) < 0.01 and np.abs(thumb - kept_thumb).mean() < 4:
                e.status, e.reason = "duplicate", f"the same picture as {kept.source} (larger)"
                break
        else:
            seen.append((e, w / h, thumb))


def target_size(width: int, height: int, max_side: int, min_shrink: float) -> tuple[int, int]:
    """(width, height) after downsizing: the long side at most max_side, and the image shrunk by at least
    min_shrink (1 = not forced)."""
    factor = min(1.0, max_side / max(width, height), 1.0 / min_shrink)
    return max(1, round(width * factor)), max(1, round(height * factor))


def load_pixels(path: Path) -> tuple[np.ndarray | None, str, Image.Image]:
    """(H, W) or (H, W, 3) uint8 (grey stays grey), or (None, why); and the opened image (for its JPEG tables)."""
    from bsr_hub.core.images import MODES, ImageReadError, straight_mode, to_uint8

    img = Image.open(path)
    try:
        straight = straight_mode(img)
        if MODES[straight.mode].alpha and np.asarray(straight.getchannel("A")).min() < 255:
            return None, "partly transparent (the colours under transparent pixels are arbitrary)", img
        return to_uint8(straight, colour="keep_grey"), "", img
    except (ImageReadError, KeyError) as err:
        return None, f"unusable mode {img.mode}: {err}", img


# ---------------------------------------------------------------------------------------------------- the set


@dataclass
class Settings:
    packages: list[str]
    out: Path
    work: Path
    max_side: int = 2040
    jpeg_quality_ok: int = 95
    jpeg_min_shrink: float = 2.0
    rule: PhotoRule = field(default_factory=PhotoRule)


def collect(package: str, work: Path, files: dict[int, Path], entries: list[Entry]) -> int:
    """Unpack one package and append an Entry per image file to `entries` (its path into `files`); returns the
    number of vector files skipped."""
    root, version = fetch(package, work)
    copyright_file = root / "usr" / "share" / "doc" / package / "copyright"
    text = copyright_file.read_text(errors="replace") if copyright_file.is_file() else ""
    stanzas = parse_copyright(text)
    fallback = package_licence(text) if text else "unknown (no copyright file)"
    vectors = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if path.suffix.lower() in VECTOR_SUFFIXES:
            vectors += 1
            print(f"  skip {rel}: vector graphics (a render by construction)")
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        with Image.open(path) as img:
            size = f"{img.width}x{img.height}"
        stanza = licence_of(rel, stanzas)
        files[len(entries)] = path
        entries.append(Entry(package=package, version=version, source=rel, source_sha256=sha256_of(path),
                             source_size=size, licence=stanza.licence if stanza else fallback,
                             copyright=stanza.copyright if stanza else ""))
    return vectors


def output_name(entry: Entry, taken: set[str]) -> str:
    kde = kde_picture(entry.source)
    stem = Path(entry.source).stem
    if kde is not None:
        stem = kde[0] + ("" if kde[1] == "images" else "_" + kde[1].removeprefix("images_"))
    name, n = f"images/{entry.package}/{stem}.png", 2
    while name in taken:
        name, n = f"images/{entry.package}/{stem}-{n}.png", n + 1
    taken.add(name)
    return name


def process(entry: Entry, path: Path, settings: Settings, taken: set[str]) -> None:
    """Convert, downsize, measure, decide and (if a photograph) save one de-duplicated image; fills the entry."""
    pixels, why, img = load_pixels(path)
    quality = jpeg_quality(img)
    entry.jpeg_quality = "" if quality is None else str(quality)
    if pixels is None:
        entry.status, entry.reason = "unusable", why
        return
    shrink = settings.jpeg_min_shrink if quality is not None and quality < settings.jpeg_quality_ok else 1.0
    h, w = pixels.shape[:2]
    size = target_size(w, h, settings.max_side, shrink)
    if size != (w, h):
        pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS))
    stats = settings.rule.statistics(pixels)
    entry.flat_share, entry.pic_p25, entry.pic_median, entry.pic_p90 = (
        f"{stats[k]:.3f}" for k in ("flat_share", "pic_p25", "pic_median", "pic_p90"))
    photo, reason = settings.rule.decide(stats)
    entry.status, entry.reason = ("kept" if photo else "render"), reason
    entry.output_size = f"{size[0]}x{size[1]}"
    if photo:
        entry.output = output_name(entry, taken)
        target = settings.out / entry.output
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(target, optimize=False, compress_level=6)
        entry.output_sha256 = sha256_of(target)


def write_manifest(entries: list[Entry], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[f.name for f in fields(Entry)])
        writer.writeheader()
        for e in entries:
            writer.writerow(asdict(e))


def write_readme(entries: list[Entry], settings: Settings, command: str, path: Path) -> None:
    kept = [e for e in entries if e.status == "kept"]
    counts = {s: sum(e.status == s for e in entries) for s in ("kept", "duplicate", "render", "unusable")}
    lines = [
        "# Photographs from Debian wallpaper packages (an extra HR training set for bsr_hub)",
        "",
        f"Made by `{command}` (bsr_hub's `bench/make_photo_set.py`). Not part of the bsr_hub repository: the images",
        "stay outside git. Every image is the work of the author named below, under the licence named beside it;",
        "each was converted to PNG and downsized (Pillow LANCZOS) from the file its package installs.",
        "",
        (f"{len(entries)} image files found: {counts['kept']} kept as photographs, {counts['duplicate']} "
         f"duplicates, {counts['render']} renders, {counts['unusable']} unusable. `manifest.csv` lists every one "
         "with its package, version, source path, licence, sha256 (source and output), sizes, PIC statistics and "
         "the decision."),
        "",
        (f"Rule: photograph when flat share (PIC < {settings.rule.flat_pic}) <= {settings.rule.max_flat_share} "
         f"and the 25th-percentile PIC >= {settings.rule.min_floor_pic}, over {settings.rule.patch_size}x"
         f"{settings.rule.patch_size} patches (stride {settings.rule.stride}) of the x2 LR. Long side at most "
         f"{settings.max_side} px; JPEGs of estimated quality < {settings.jpeg_quality_ok} shrunk by at least "
         f"{settings.jpeg_min_shrink}x."),
        "",
        "Load with `datasets.load_dataset(\"imagefolder\", data_dir=THIS_FOLDER, drop_labels=True)`, or train with",
        "`--data.train_dir ../shared/data/train THIS_FOLDER`.",
        "",
        "| image | package (version) | source | author (copyright) | licence |",
        "|---|---|---|---|---|",
    ]
    for e in kept:
        lines.append(f"| {e.output} | {e.package} ({e.version}) | {e.source} | {e.copyright or 'see the package'} "
                     f"| {e.licence} |")
    lines += ["", "The licence texts are in each package's `/usr/share/doc/PACKAGE/copyright`."]
    path.write_text("\n".join(lines) + "\n")


def check_outside_repository(out: Path) -> None:
    """Raise ValueError when the output folder is inside this repository: the images must stay outside git."""
    resolved = out.resolve()
    if resolved == REPO or REPO in resolved.parents:
        raise ValueError(f"{out} is inside the repository {REPO}: the images must stay outside git")


def build(settings: Settings, command: str) -> list[Entry]:
    refuse(settings.packages)
    check_outside_repository(settings.out)
    files: dict[int, Path] = {}
    entries: list[Entry] = []
    vectors = 0
    for package in settings.packages:
        print(f"{package}: downloading and unpacking into {settings.work}")
        vectors += collect(package, settings.work, files, entries)
    print(f"{len(entries)} image files found ({vectors} vector files skipped)")
    deduplicate(entries, files)
    for e in entries:
        if e.status == "duplicate":
            print(f"  duplicate {e.package}: {e.source}: {e.reason}")
    (settings.out / "images").mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    for i, e in enumerate(entries):
        if e.status != "candidate":
            continue
        process(e, files[i], settings, taken)
        print(f"  {e.status:8s} {e.package}: {e.source} {e.source_size} -> {e.output_size or '-'}"
              f"{' (JPEG q' + e.jpeg_quality + ')' if e.jpeg_quality else ''}: {e.reason}; "
              f"PIC median {e.pic_median or '-'}, p90 {e.pic_p90 or '-'}; {e.licence}")
    write_manifest(entries, settings.out / MANIFEST_NAME)
    write_readme(entries, settings, command, settings.out / "README.md")
    return entries


def summary(entries: list[Entry]) -> str:
    kept = [e for e in entries if e.status == "kept"]
    counts = {s: sum(e.status == s for e in entries) for s in ("duplicate", "render", "unusable")}
    megapixels = sum(int(a) * int(b) for a, b in (e.output_size.split("x") for e in kept)) / 1e6
    return (f"{len(entries)} image files, {counts['duplicate']} duplicates, {counts['render']} renders dropped, "
            f"{counts['unusable']} unusable, {len(kept)} photographs kept ({megapixels:.1f} megapixels)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--packages", nargs="+", default=list(DEFAULT_PACKAGES),
                   help=f"Debian packages to read (default: {' '.join(DEFAULT_PACKAGES)})")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="the output folder, outside the repository (default: ../extra_data/debian_photos)")
    p.add_argument("--work", type=Path, default=None,
                   help="where packages are downloaded and unpacked (default: a temporary folder, removed at the end)")
    p.add_argument("--overwrite", action="store_true", help="replace an output folder made before")
    p.add_argument("--max-side", type=int, default=2040, help="long side at most this many pixels (DIV2K: 2040)")
    p.add_argument("--jpeg-quality-ok", type=int, default=95,
                   help="JPEGs of a lower estimated quality are shrunk by at least --jpeg-min-shrink")
    p.add_argument("--jpeg-min-shrink", type=float, default=2.0)
    defaults = PhotoRule()
    p.add_argument("--flat-pic", type=float, default=defaults.flat_pic, help="a patch below this PIC is flat")
    p.add_argument("--max-flat-share", type=float, default=defaults.max_flat_share,
                   help="a photograph has at most this share of flat patches")
    p.add_argument("--min-floor-pic", type=float, default=defaults.min_floor_pic,
                   help="a photograph's 25th-percentile patch PIC is at least this")
    args = p.parse_args(argv)
    try:
        refuse(args.packages)
        check_outside_repository(args.out)
    except ValueError as err:  # RefusedPackage too
        p.error(str(err))
    if args.out.exists() and any(args.out.iterdir()):
        if not args.overwrite:
            p.error(f"{args.out} is not empty; pass --overwrite to replace it")
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    rule = PhotoRule(flat_pic=args.flat_pic, max_flat_share=args.max_flat_share, min_floor_pic=args.min_floor_pic)
    command = " ".join(["python bench/make_photo_set.py", *(argv if argv is not None else sys.argv[1:])])
    with tempfile.TemporaryDirectory(prefix="photo_set_") as tmp:
        settings = Settings(packages=args.packages, out=args.out, work=args.work or Path(tmp),
                            max_side=args.max_side, jpeg_quality_ok=args.jpeg_quality_ok,
                            jpeg_min_shrink=args.jpeg_min_shrink, rule=rule)
        entries = build(settings, command)
    print(summary(entries))
    print(f"wrote {args.out}/{MANIFEST_NAME}, {args.out}/README.md and {args.out}/images/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
