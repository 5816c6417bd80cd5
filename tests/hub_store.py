"""The test Hub's storage (tests/hub_server.py serves it over HTTP): model repos on disk with real commits, and
the LFS object store beside them.

Layout under the root folder, readable by eye when a test fails:

    repos/<namespace>/<name>/refs.json              {"main": "<commit sha>"}: the branch moves, commits stay
    repos/<namespace>/<name>/commits/<sha>.json     parent, message, date and each file's size, sha256, LFS or not
    repos/<namespace>/<name>/revisions/<sha>/<path> every file as of that commit (an old revision still downloads)
    lfs/<sha256>                                    uploaded LFS objects, checked against their oid and size

A new repo gets an initial commit holding the Hub's default `.gitattributes`, as on huggingface.co; its LFS patterns
decide, with size and binary content, which files are uploaded through LFS (`upload_mode`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_BRANCH = "main"
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # the Hub sends larger files through LFS whatever their name

# The `.gitattributes` huggingface.co writes into every new model repo (the LFS part of it).
GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*", "*.mlmodel",
        "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt",
        "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm",
        "*.xz", "*.zip", "*.zst", "*tfevents*",
    )
)


class StoreError(Exception):
    """A request the store refuses: `status` and `code` become the HTTP status and the X-Error-Code header."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True)
class FileEntry:
    """One file of one commit."""

    size: int
    sha256: str
    lfs: bool

    def git_oid(self, content: bytes | None = None) -> str:
        """The git blob id: of the content for a regular file, of the LFS pointer for an LFS one (as git stores
        it). A regular file's id is what the Hub sends as its ETag."""
        data = lfs_pointer(self.sha256, self.size) if self.lfs else content
        assert data is not None, "a regular file's git id needs its content"
        return git_blob_oid(data)


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def lfs_patterns(gitattributes: str) -> list[str]:
    return [line.split()[0] for line in gitattributes.splitlines() if "filter=lfs" in line.split()[1:]]


class RepoStore:
    """Model repos and LFS objects in a folder. Thread-safe: the server answers requests on several threads."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.lock = threading.RLock()
        (self.root / "lfs").mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ repos and revisions

    def repo_dir(self, repo_id: str) -> Path:
        return self.root / "repos" / repo_id

    def exists(self, repo_id: str) -> bool:
        return (self.repo_dir(repo_id) / "refs.json").is_file()

    def create(self, repo_id: str) -> bool:
        """Create the repo with its initial commit; False when it already exists."""
        with self.lock:
            if self.exists(repo_id):
                return False
            (self.repo_dir(repo_id) / "commits").mkdir(parents=True)
            self._write_refs(repo_id, {})
            self.commit(repo_id, DEFAULT_BRANCH, "initial commit", {".gitattributes": GITATTRIBUTES.encode()}, {})
            return True

    def refs(self, repo_id: str) -> dict[str, str]:
        if not self.exists(repo_id):
            raise StoreError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return json.loads((self.repo_dir(repo_id) / "refs.json").read_text())

    def _write_refs(self, repo_id: str, refs: dict[str, str]) -> None:
        (self.repo_dir(repo_id) / "refs.json").write_text(json.dumps(refs, indent=2))

    def resolve(self, repo_id: str, revision: str) -> str:
        """The commit sha a branch name or a full commit sha stands for."""
        refs = self.refs(repo_id)
        if revision in refs:
            return refs[revision]
        if (self.repo_dir(repo_id) / "commits" / f"{revision}.json").is_file():
            return revision
        raise StoreError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def commit_info(self, repo_id: str, sha: str) -> dict:
        return json.loads((self.repo_dir(repo_id) / "commits" / f"{sha}.json").read_text())

    def files(self, repo_id: str, sha: str) -> dict[str, FileEntry]:
        return {path: FileEntry(**entry) for path, entry in self.commit_info(repo_id, sha)["files"].items()}

    def file_path(self, repo_id: str, sha: str, path: str) -> Path:
        return self.repo_dir(repo_id) / "revisions" / sha / path

    def read(self, repo_id: str, sha: str, path: str) -> bytes:
        return self.file_path(repo_id, sha, path).read_bytes()

    # ------------------------------------------------------------------ uploads

    def upload_mode(self, repo_id: str, revision: str, path: str, size: int, sample: bytes) -> str:
        """"lfs" or "regular", as the Hub's preupload decides: `.gitattributes` patterns, size, binary content."""
        head = self.resolve(repo_id, revision)
        attributes = self.files(repo_id, head).get(".gitattributes")
        patterns = lfs_patterns(self.read(repo_id, head, ".gitattributes").decode()) if attributes else []
        name = path.rsplit("/", 1)[-1]
        by_name = any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(name, p) for p in patterns)
        return "lfs" if by_name or size >= LFS_SIZE_THRESHOLD or b"\0" in sample else "regular"

    def lfs_object(self, oid: str) -> Path:
        if len(oid) != 64 or any(c not in "0123456789abcdef" for c in oid):
            raise StoreError(400, f"not a sha256 oid: {oid!r}")
        return self.root / "lfs" / oid

    def lfs_has(self, oid: str, size: int) -> bool:
        path = self.lfs_object(oid)
        return path.is_file() and path.stat().st_size == size

    def lfs_put(self, oid: str, size: int, data: bytes) -> None:
        """Store an uploaded object, refusing bytes that are not the object announced (a truncated upload)."""
        if len(data) != size or hashlib.sha256(data).hexdigest() != oid:
            raise StoreError(400, f"uploaded object does not match its oid {oid} and size {size} "
                                  f"(got {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()})")
        path = self.lfs_object(oid)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)

    def commit(self, repo_id: str, branch: str, message: str, regular: dict[str, bytes],
               lfs: dict[str, tuple[str, int]], deleted: tuple[str, ...] = (), parent: str | None = None) -> str:
        """A new commit on `branch`: the files of its head, with `regular` (path: bytes) and `lfs` (path:
        (sha256, size), already uploaded) added and `deleted` (paths or folders ending in "/") removed. Returns
        its sha; the branch moves to it."""
        with self.lock:
            refs = self.refs(repo_id)
            head = refs.get(branch)
            if head is None and refs:
                raise StoreError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            if parent is not None and parent != head:
                raise StoreError(412, f"A commit has happened since {parent}: the head of {branch} is {head}")
            files = self.files(repo_id, head) if head else {}
            sources = {path: self.file_path(repo_id, head, path) for path in files}
            for gone in deleted:
                for path in [p for p in files if p == gone or (gone.endswith("/") and p.startswith(gone))]:
                    del files[path], sources[path]
            for path, data in regular.items():
                files[path] = FileEntry(len(data), hashlib.sha256(data).hexdigest(), lfs=False)
                sources[path] = data
            for path, (oid, size) in lfs.items():
                if not self.lfs_has(oid, size):
                    raise StoreError(422, f"Your push was rejected because an LFS pointer pointed to a file that "
                                          f"does not exist: {path} ({oid})")
                files[path] = FileEntry(size, oid, lfs=True)
                sources[path] = self.lfs_object(oid)
            return self._write_commit(repo_id, branch, head, message, files, sources)

    def _write_commit(self, repo_id: str, branch: str, parent: str | None, message: str,
                      files: dict[str, FileEntry], sources: dict[str, bytes | Path]) -> str:
        date = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        record = {"parent": parent, "message": message, "date": date,
                  "files": {path: asdict(files[path]) for path in sorted(files)}}
        sha = hashlib.sha1(json.dumps([record, time.time_ns()], sort_keys=True).encode()).hexdigest()
        folder = self.repo_dir(repo_id) / "revisions" / sha
        for path, source in sources.items():
            target = folder / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source if isinstance(source, bytes) else source.read_bytes())
        (self.repo_dir(repo_id) / "commits" / f"{sha}.json").write_text(json.dumps(record, indent=2))
        self._write_refs(repo_id, {**self.refs(repo_id), branch: sha})
        return sha
