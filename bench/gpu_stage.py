"""The GPU lease's data and wheels: packed here so that each call carries under 64 MiB, checked there first (issue 28).

Here, before the lease (no GPU; `python bench/gpu.py stage` calls `stage`):

- `wheels/`: `datasets` and the packages the GPU image lacks (Python 3.12 wheels). Every call carries them.
- `device_data/part_1` and `part_2`: the training images of ../shared/data/train as HR tiles (each image's centred
  crop to a multiple of 12 px, so that x2, x3 and x4 mod-crops keep it whole; shrunk, the same fraction of area for
  every image, only where the whole set would not fit the two calls), stored as lossless WebP in one `.npz` shard
  per part, Set5 as PNG files (validation, the final evaluation, the CUDA tests), and MANIFEST.json: the whole
  plan, every part's files and what they unpack to, with sizes and SHA-256, and the wheels. Set14 and BSD100 stay
  here (measured here on what comes back).

There, in the first seconds of every call and before torch is imported, `preflight` checks every wheel, every
carried file and every file of each part the call needs (NEEDS), names what is missing (a machine given back
between calls is fresh: what an earlier call unpacked is gone), then installs the wheels and unpacks what was
carried into `device_data/data`, which `../shared/data` points at.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "data"  # the data here
DEVICE_DATA = REPO / "device_data"  # git-ignored: the parts travel by `carry`; what is unpacked stays while warm
WHEELS = REPO / "wheels"  # git-ignored
WHEEL_PINS = ["datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19", "fsspec==2026.9.0"]
WHEEL_PYTHON = "3.12"  # the GPU image's python3
TRAIN_SETS = ("T91", "BSD200", "BSDS500_test200")
CARRIED_BENCHMARKS = ("Set5",)
PARTS = 2
CALL_LIMIT_MIB = 64.0  # what one call carries in all, the tree included (the device README)
MARGIN_MIB = 6.0  # for files added to the tree between staging and the lease (`stage --check` says if it grew more)
TILE_MULTIPLE = 12  # lcm(2, 3, 4)
MIN_TILE = 240  # an x4 LR patch of 60 px: a tile is never shrunk below it
WEBP = {"lossless": True, "quality": 50, "method": 2}  # 0.66 of the PNG bytes at 2.5 MP/s of one core
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# The parts each call needs on the machine (carried in it, or left by an earlier call on the same warm machine).
NEEDS = {"call1": (1,), "call2": (1, 2), "call3": (1, 2), "receive": ()}
# Call 3 carries part 2 again: it needs only part 1 from the warm machine, whether call 2 ran or not.
CARRY = {"call1": ["wheels", "device_data/part_1"], "call2": ["wheels", "device_data/part_2"],
         "call3": ["wheels", "device_data/part_2"]}


def data_root(device_data: Path = DEVICE_DATA) -> Path:
    """Where the parts are unpacked there: train/<set>/<image>.webp and benchmarks/Set5/*.png."""
    return device_data / "data"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _entry(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": sha256(path)}


def dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def tree_bytes(repo: Path = REPO) -> int:
    """What every call carries anyway: the checkout's tracked and unignored files."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo, capture_output=True,
                           check=True).stdout.decode().split("\0")
    return sum((repo / n).stat().st_size for n in names if n and (repo / n).is_file())


# ---------------------------------------------------------------------------------------------- tiles


def tile_box(width: int, height: int, shrink: float = 1.0) -> tuple[int, int, int, int]:
    """The centred crop (left, top, right, bottom) kept of a width x height image: sides a multiple of
    TILE_MULTIPLE, `shrink` of the area where the set must shrink to fit, never below MIN_TILE (or the image)."""
    def side(n: int) -> int:
        full = n - n % TILE_MULTIPLE
        want = int(n * math.sqrt(shrink)) // TILE_MULTIPLE * TILE_MULTIPLE
        return min(full, max(want, MIN_TILE))

    w, h = side(width), side(height)
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def encode_tile(pixels) -> bytes:
    """(H, W, 3) uint8 as lossless WebP bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "WEBP", **WEBP)
    return buf.getvalue()


def decode_tile(data: bytes):
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def pack_tiles(tiles: list[tuple[str, object]], target: Path, boxes: list | None = None,
               encoded: list[bytes] | None = None) -> dict[str, dict]:
    """One `.npz` of (name, (H, W, 3) uint8 tile) pairs, each stored as lossless WebP bytes (`encoded`, where the
    caller has them already): `names`, `offsets` into `blob`, `shapes` (and `boxes`, the crops in the source
    images). Each tile is decoded back and compared before it is stored. Returns {name: {bytes, sha256}} of what
    `unpack_tiles` will write."""
    import numpy as np

    blobs, written = [], {}
    for i, (name, pixels) in enumerate(tiles):
        data = encoded[i] if encoded is not None else encode_tile(pixels)
        if not np.array_equal(decode_tile(data), pixels):
            raise ValueError(f"{name}: the WebP encoder did not round-trip (lossless WebP is required)")
        blobs.append(data)
        written[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    arrays = {"names": np.array([n for n, _ in tiles], dtype=str), "offsets": offsets,
              "blob": np.frombuffer(b"".join(blobs), dtype=np.uint8),
              "shapes": np.array([p.shape for _, p in tiles], dtype=np.int32).reshape(-1, 3)}
    if boxes is not None:
        arrays["boxes"] = np.array(boxes, dtype=np.int32).reshape(-1, 4)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as f:
        np.savez(f, **arrays)
    return written


def unpack_tiles(shard: Path, root: Path) -> dict[str, dict]:
    """Write each tile of `shard` as root/<name> (its WebP bytes, unchanged). Returns {name: {bytes, sha256}}."""
    import numpy as np

    with np.load(shard, allow_pickle=False) as z:
        names, offsets, blob = z["names"], z["offsets"], z["blob"]
        written = {}
        for i, name in enumerate(names):
            data = blob[offsets[i]:offsets[i + 1]].tobytes()
            target = root / str(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            written[str(name)] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return written


def read_tiles(shard: Path) -> dict[str, object]:
    """{name: (H, W, 3) uint8} of a shard, decoded (tests, checks)."""
    import numpy as np

    with np.load(shard, allow_pickle=False) as z:
        return {str(n): decode_tile(z["blob"][z["offsets"][i]:z["offsets"][i + 1]].tobytes())
                for i, n in enumerate(z["names"])}


# ---------------------------------------------------------------------------------------------- staging (here)


def fetch_wheels(wheels: Path = WHEELS) -> None:
    wheels.mkdir(parents=True, exist_ok=True)
    platforms = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64",
                                             "manylinux2014_x86_64", "any")]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", WHEEL_PYTHON, "--implementation", "cp", *platforms, "-d", str(wheels),
                    *WHEEL_PINS], check=True)


def wheel_files(wheels: Path = WHEELS) -> dict[str, Path]:
    """The carried wheel of each pinned package, by file name."""
    found = {}
    for pin in WHEEL_PINS:
        name, version = pin.split("==")
        hits = sorted(wheels.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
        if hits:
            found[hits[0].name] = hits[0]
    return found


def _source_images(source: Path, images: int | None) -> list[tuple[str, Path]]:
    files = [(f"{s}/{p.stem}.webp", p) for s in TRAIN_SETS for p in sorted((source / "train" / s).glob("*"))
             if p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise SystemExit(f"error: no training images under {source / 'train'} ({', '.join(TRAIN_SETS)})")
    if images and images < len(files):  # a subset spread over the sets (the rehearsal)
        files = [files[round(i * (len(files) - 1) / max(1, images - 1))] for i in range(images)]
    return files


def _crop(path: Path, shrink: float):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    box = tile_box(rgb.shape[1], rgb.shape[0], shrink)
    return np.ascontiguousarray(rgb[box[1]:box[3], box[0]:box[2]]), box


def stage(source: Path = SOURCE, device_data: Path = DEVICE_DATA, wheels: Path = WHEELS, images: int | None = None,
          part_mib: float | None = None, log=print) -> dict:
    """Make device_data/part_1..PARTS (each at most `part_mib`, by default what a call has room for beside the
    tree and the wheels) and return the plan. Encodes each image once, again after each shrink of the area."""
    if not wheel_files(wheels) or len(wheel_files(wheels)) < len(WHEEL_PINS):
        fetch_wheels(wheels)
    wheel_mib = sum(p.stat().st_size for p in wheel_files(wheels).values()) / 2**20
    bench_files = [p for b in CARRIED_BENCHMARKS for p in sorted((source / "benchmarks" / b).glob("*"))
                   if p.suffix.lower() in IMAGE_SUFFIXES]
    if not bench_files:
        raise SystemExit(f"error: {source / 'benchmarks' / 'Set5'}: no images")
    bench_mib = sum(p.stat().st_size for p in bench_files) / 2**20
    if part_mib is None:  # 0.2: the manifest and the npz's headers
        part_mib = CALL_LIMIT_MIB - MARGIN_MIB - tree_bytes() / 2**20 - wheel_mib - bench_mib - 0.2
    files = _source_images(source, images)
    t0 = time.perf_counter()
    shrink, tiles = 1.0, []
    for attempt in range(4):
        tiles = []
        for name, path in files:
            pixels, box = _crop(path, shrink)
            data = encode_tile(pixels)
            tiles.append({"name": name, "box": box, "bytes": len(data), "pixels": pixels, "data": data})
        total = sum(t["bytes"] for t in tiles) / 2**20
        log(f"{len(tiles)} tiles at {shrink:.3f} of each image's area: {total:.1f} MiB of WebP "
            f"({time.perf_counter() - t0:.0f} s); room: {PARTS} x {part_mib:.1f} MiB")
        if total <= 0.98 * PARTS * part_mib or attempt == 3:
            break
        # Bytes fall slower than area (a centred crop keeps the busier middle): about as area^0.6 on the real set.
        shrink *= (0.97 * PARTS * part_mib / total) ** 1.6
    parts: list[list[dict]] = [[] for _ in range(PARTS)]
    for t in sorted(tiles, key=lambda t: -t["bytes"]):  # the largest first, each into the lighter part
        min(parts, key=lambda p: sum(x["bytes"] for x in p)).append(t)
    over = [k for k, p in enumerate(parts, 1) if sum(x["bytes"] for x in p) > part_mib * 2**20]
    if over:
        raise SystemExit(f"error: part(s) {over} over {part_mib:.1f} MiB after {shrink:.3f} of the area: "
                         "give --part-mib or --images")
    for old in device_data.glob("part_*"):
        shutil.rmtree(old)
    plan = {"parts": PARTS, "shrink": shrink, "webp": WEBP, "source": str(source), "images": len(tiles),
            "wheels": {n: _entry(p) for n, p in wheel_files(wheels).items()}, "carried": {}, "unpacked": {}}
    for k, part in enumerate(parts, 1):
        folder = device_data / f"part_{k}"
        part.sort(key=lambda t: t["name"])
        written = pack_tiles([(t["name"], t["pixels"]) for t in part], folder / f"train_{k}.npz",
                             [t["box"] for t in part], [t["data"] for t in part])
        unpacked = {f"train/{n}": e for n, e in written.items()}
        for p in bench_files:
            rel = p.relative_to(source).as_posix()
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, folder / rel)
            unpacked[rel] = _entry(p)
        plan["carried"][str(k)] = {p.relative_to(folder).as_posix(): _entry(p)
                                   for p in sorted(folder.rglob("*")) if p.is_file()}
        plan["unpacked"][str(k)] = unpacked
    plan["id"] = hashlib.sha256(json.dumps([plan["wheels"], plan["carried"]], sort_keys=True).encode()).hexdigest()[:16]
    for k in range(1, PARTS + 1):
        (device_data / f"part_{k}" / "MANIFEST.json").write_text(json.dumps({**plan, "part": k}, indent=1))
    sizes = {k: dir_bytes(device_data / f"part_{k}") / 2**20 for k in range(1, PARTS + 1)}
    log(f"plan {plan['id']}: " + ", ".join(f"part_{k} {s:.1f} MiB ({len(parts[k - 1])} tiles)"
                                           for k, s in sizes.items()) + f"; wheels {wheel_mib:.1f} MiB")
    return plan


def carry_sizes(device_data: Path = DEVICE_DATA, wheels: Path = WHEELS, repo: Path = REPO) -> dict[str, float]:
    """MiB each call carries, the tree as it is now included."""
    tree = tree_bytes(repo) / 2**20
    sizes = {"wheels": dir_bytes(wheels) / 2**20}
    sizes.update({f"device_data/part_{k}": dir_bytes(device_data / f"part_{k}") / 2**20 for k in range(1, PARTS + 1)})
    return {call: tree + sum(sizes.get(c, 0.0) for c in carry) for call, carry in CARRY.items()}
