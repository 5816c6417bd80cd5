"""Writing files: batch file work for the command line (`upscale`, `degrade`: which files, where each output goes,
what must not be written) and `write_atomically`, the one atomic write every module uses (images, weights, ONNX
graphs, a checkpoint's records). One place, so every command refuses the same dangerous cases."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class FileJob:
    source: Path
    target: Path
    failure: str | None = None
    """Why this file must not be processed (the output would replace an input, or another input's output)."""
    skip: str | None = None
    """Why it is left alone without failing (its output exists and overwriting was not asked for)."""


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _walk(inputs: Sequence[str], out_dir: Path) -> list[tuple[Path, Path]]:
    """(file, its path relative to the output folder) for every file given, or found under a given folder.

    A walked folder's files under `out_dir` are left out: `upscale d -o d/out`, run twice, must not take its own
    earlier outputs for inputs (nor then refuse the originals, whose outputs those files are). A file named
    explicitly is always kept.
    """
    outputs = out_dir.resolve()
    found = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found += [
                (f, f.relative_to(path))
                for f in sorted(path.rglob("*"))
                if f.is_file() and not any(part.startswith(".") for part in f.relative_to(path).parts)
                and not _inside(f.resolve(), outputs)
            ]
        else:
            found.append((path, Path(path.name)))
    return found


def plan_jobs(inputs: Sequence[str], out_dir: str | os.PathLike, suffix: str, overwrite: bool) -> list[FileJob]:
    """One job per input file: its output keeps the folder structure and takes `suffix` (e.g. ".png")."""
    walked = _walk(inputs, Path(out_dir))
    inputs_resolved = {src.resolve() for src, _ in walked if src.exists()}
    writers: dict[Path, Path] = {}  # output -> the input that writes it (photo.jpg and photo.png collide)
    jobs = []
    for src, rel in walked:
        target = Path(out_dir) / rel.with_suffix(suffix)
        first = writers.setdefault(target.resolve(), src)
        if first is not src:
            jobs.append(FileJob(src, target, failure=f"its output {target} is also the output of {first} (rename one of them)"))
        elif target.resolve() in inputs_resolved:
            jobs.append(FileJob(src, target, failure="the output would overwrite an input file"))
        elif target.exists() and not overwrite:
            jobs.append(FileJob(src, target, skip=f"{target} exists (pass --overwrite to replace it)"))
        else:
            jobs.append(FileJob(src, target))
    return jobs


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomically(target: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """The one atomic write of the package: `write(tmp)` fills a temporary file beside `target`, which is then
    renamed onto it in one step, with the permissions a plain open() would have given it (mkstemp makes files
    readable by their owner only). A reader never sees half a file; on failure the temporary file is removed and
    `target` is left as it was. A unique temporary name: two writers of one file never write into each other's."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _default_mode())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def write_text_atomically(target: str | os.PathLike, text: str) -> Path:
    return write_atomically(target, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive lock on `path` + ".lock" between processes, held around a read, merge and write of `path`. Where
    fcntl is missing (Windows) nothing is locked: the write is still atomic, but one of two writers' changes may then
    be lost."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = Path(path)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


CACHE_ENV = "BSR_HUB_CACHE"
"""A folder for bsr_hub's cache files; default $XDG_CACHE_HOME/bsr_hub, else ~/.cache/bsr_hub (the XDG layout that
huggingface_hub's ~/.cache/huggingface also follows on every platform)."""


def cache_folder() -> Path:
    """bsr_hub's cache folder (CACHE_ENV): what is measured or built once per machine and reused by later processes
    (the backends' timings, ONNX graphs). Not created here."""
    folder = os.environ.get(CACHE_ENV)
    if not folder:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "bsr_hub")
    return Path(folder)


def append_text(target: str | os.PathLike, text: str) -> None:
    """Append to a log file (history.jsonl) without following a symlink planted under its name, which would have
    us append to whatever file it points at."""
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, _default_mode())
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(text)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block has run, then act as they would have (main thread only; elsewhere
    the block runs as it is): a few renames that belong together are not split by Ctrl-C or a kill."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if received:
            signal.raise_signal(received[0])


def write_texts_together(texts: dict[Path, str], check: Callable[[dict[Path, Path]], None] | None = None) -> None:
    """Several files that describe one thing (a card and the records it is rendered from): each is written in full
    under a temporary name first, `check(temporaries)` may refuse them, and then all are renamed into place with
    SIGINT and SIGTERM deferred, so that an interruption leaves either the old set or the new one, never a mix and
    never a temporary file."""
    temporaries: dict[Path, Path] = {}
    try:
        for target, text in texts.items():
            fd, tmp = tempfile.mkstemp(dir=Path(target).parent, prefix=f".{Path(target).name}.", suffix=".tmp")
            os.close(fd)
            temporaries[Path(target)] = Path(tmp)
            Path(tmp).write_text(text, encoding="utf-8")
            os.chmod(tmp, _default_mode())
        if check is not None:
            check(temporaries)
        with signals_deferred():
            for target, tmp in temporaries.items():
                os.replace(tmp, target)
    finally:
        for tmp in temporaries.values():
            tmp.unlink(missing_ok=True)


def encode_png_16bit(pixels) -> bytes:
    """A PNG with 16 bits per sample from a uint16 array (H, W, C): C = 2 grey + alpha, 3 RGB, 4 RGBA. Pillow
    cannot write these (it has no 16-bit colour modes). Rows use the Up filter, which suits photographs."""
    import struct
    import zlib

    import numpy as np

    height, width, channels = pixels.shape
    colour_type = {2: 4, 3: 2, 4: 6}[channels]
    rows = pixels.astype(">u2").view(np.uint8).reshape(height, width * channels * 2)  # big-endian samples
    up = np.diff(rows, axis=0, prepend=np.zeros((1, rows.shape[1]), np.uint8))  # byte minus the byte above, mod 256
    filtered = np.concatenate([np.full((height, 1), 2, np.uint8), up], axis=1)  # filter type 2 (Up) per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(filtered.tobytes(), 6))
            + chunk(b"IEND", b""))


def save_image_atomic(image, target: Path, fmt: str = "PNG") -> None:
    """Write a PIL image, or a uint16 colour array from `images.read_png_16bit`'s files, under `target`
    atomically: an interrupted run leaves no half image under the real name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not hasattr(image, "mode"):  # (H, W, C) uint16: 16 bits per sample with colour or alpha
        image = _deep_colour_for(image, fmt, target)
        if isinstance(image, bytes):
            write_atomically(target, lambda tmp: Path(tmp).write_bytes(image))
            return
    if fmt in ("JPEG", "WEBP") and image.mode in ("I;16", "I"):
        # 8-bit formats: scale 0..65535 down. Pillow's convert() would clip it (a 16-bit photo saved white).
        import numpy as np
        from PIL import Image

        image = Image.fromarray(np.rint(np.asarray(image).astype(np.float64) / 257.0).astype(np.uint8))
    if fmt == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    write_atomically(target, lambda tmp: image.save(tmp, format=fmt))


def _deep_colour_for(pixels, fmt: str, target: Path):
    """A uint16 colour array as `fmt` wants it: PNG bytes at full depth, or 8 bits for JPEG and WebP (8-bit
    formats, chosen by the caller). Other formats are refused rather than narrowed without a word."""
    import numpy as np
    from PIL import Image

    if fmt == "PNG":
        return encode_png_16bit(pixels)
    if fmt in ("JPEG", "WEBP"):
        narrow = np.rint(pixels.astype(np.float64) / 257.0).astype(np.uint8)
        return Image.fromarray(narrow)  # (H, W, 2) -> LA, 3 -> RGB, 4 -> RGBA
    raise ValueError(f"cannot write {target} as {fmt}: the image has 16 bits per colour sample, which is written "
                     "as PNG (or narrowed to 8 bits as JPEG or WebP); choose one of those formats")
