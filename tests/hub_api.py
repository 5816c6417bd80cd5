"""The endpoints of the test Hub (tests/hub_server.py): one method per route, each answering as huggingface.co
does for what huggingface_hub reads from the answer (hf_api.py, _commit_api.py, lfs.py, file_download.py and
_snapshot_download.py of the pinned client). Anything a route does not cover (pull requests, `expand`, other repo
types, a .gitignore, multipart or Xet transfers) raises `Unimplemented`: answered 501 and failing the test.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import yaml
from hub_store import DEFAULT_BRANCH, FileEntry, RepoStore, StoreError, lfs_pointer

USER = "me"  # whose token it is: a repo created without a namespace goes here, as under a user's name
LFS_JSON = "application/vnd.git-lfs+json"
REPO = r"(?P<repo>[^/]+/[^/]+)"


class Unimplemented(Exception):
    """A request this test Hub does not implement (answered 501 and recorded)."""


@dataclass(frozen=True)
class Request:
    method: str
    params: dict[str, str]
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body or b"{}")

    def flag(self, name: str) -> bool:
        return self.query.get(name, ["false"])[-1].lower() in ("1", "true")

    def header(self, name: str) -> str:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), "")


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, value: object, status: int = 200, headers: dict[str, str] | None = None,
             content_type: str = "application/json") -> Reply:
        return cls(status, json.dumps(value).encode(), {"Content-Type": content_type, **(headers or {})})

    @classmethod
    def error(cls, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None) -> Reply:
        # huggingface_hub reads X-Error-Code to raise RepositoryNotFoundError, RevisionNotFoundError, ...
        extra = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {}), **(headers or {})}
        return cls.json({"error": message}, status, extra)


@dataclass(frozen=True)
class Route:
    host: str  # "hub" or "storage"
    methods: tuple[str, ...]
    template: str
    handler: str

    @cached_property
    def regex(self) -> re.Pattern:
        pattern = re.escape(self.template).replace(re.escape("[/{path}]"), r"(?:/(?P<path>.+))?")
        for name, regex in (("repo", REPO), ("rev", r"(?P<rev>[^/]+)"), ("oid", r"(?P<oid>[0-9a-f]{64})"),
                            ("path", r"(?P<path>.+)")):
            pattern = pattern.replace(re.escape("{" + name + "}"), regex)
        return re.compile(pattern)


ROUTES = (
    Route("hub", ("POST",), "/api/repos/create", "create_repo"),
    Route("hub", ("GET",), "/api/models/{repo}", "model_info"),
    Route("hub", ("GET",), "/api/models/{repo}/revision/{rev}", "model_info"),
    Route("hub", ("GET",), "/api/models/{repo}/tree/{rev}[/{path}]", "tree"),
    Route("hub", ("POST",), "/api/validate-yaml", "validate_yaml"),
    Route("hub", ("POST",), "/api/models/{repo}/preupload/{rev}", "preupload"),
    Route("hub", ("POST",), "/{repo}.git/info/lfs/objects/batch", "lfs_batch"),
    Route("hub", ("POST",), "/{repo}.git/info/lfs/objects/verify", "lfs_verify"),
    Route("hub", ("POST",), "/api/models/{repo}/commit/{rev}", "commit"),
    Route("hub", ("HEAD", "GET"), "/{repo}/resolve/{rev}/{path}", "resolve"),
    Route("hub", ("GET",), "/api/agent-harnesses", "agent_harnesses"),
    Route("storage", ("PUT",), "/lfs/upload/{oid}", "lfs_upload"),
    Route("storage", ("HEAD", "GET"), "/lfs/objects/{oid}", "lfs_download"),
)


def _front_matter(readme: bytes) -> dict | None:
    """A card's YAML header, as the Hub parses it (None without one; ValueError when it is not a mapping)."""
    text = readme.decode("utf-8")
    if not text.startswith("---"):
        return None
    header = text.split("---", 2)[1]
    try:
        data = yaml.safe_load(header)
    except yaml.YAMLError as err:
        raise ValueError(f"the YAML header does not parse: {err}") from None
    if not isinstance(data, dict):
        raise ValueError("the YAML header is not a mapping")
    return data


class HubApi:
    """The routes' behaviour over a `RepoStore`. `url`/`storage_url` are the two hosts' base URLs; `refused`
    says which repos answer 403 to writes."""

    def __init__(self, store: RepoStore, url: str, storage_url: str, refused: Callable[[str], bool]):
        self.store, self.url, self.storage_url, self.refused = store, url, storage_url, refused

    def _writer(self, request: Request, repo_id: str) -> None:
        """A write needs a token (any) and a repo this user may write to."""
        if not request.header("Authorization").startswith("Bearer ") or len(request.header("Authorization")) < 8:
            raise StoreError(401, "Invalid credentials in Authorization header")
        if self.refused(repo_id):
            raise StoreError(403, f"You don't have the rights to create or write to the model {repo_id}")

    # ------------------------------------------------------------------ repos

    def create_repo(self, request: Request) -> Reply:
        payload = request.json()
        if payload.get("type", "model") not in ("model", None) or "template" in payload:
            raise Unimplemented(f"creating a {payload.get('type')} repo")
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        self._writer(request, repo_id)
        url = f"{self.url}/{repo_id}"
        if not self.store.create(repo_id):
            return Reply.json({"error": "You already created this model repo", "url": url}, 409)
        return Reply.json({"url": url, "name": repo_id, "id": repo_id})

    def model_info(self, request: Request) -> Reply:
        if request.query.get("expand") or request.flag("securityStatus"):
            raise Unimplemented("model info with expand or securityStatus")
        repo_id = request.params["repo"]
        sha = self.store.resolve(repo_id, request.params.get("rev", DEFAULT_BRANCH))
        files, commit = self.store.files(repo_id, sha), self.store.commit_info(repo_id, sha)
        siblings = [{"rfilename": path, **(self._blob_info(repo_id, sha, path, entry) if request.flag("blobs") else {})}
                    for path, entry in files.items()]
        card = _front_matter(self.store.read(repo_id, sha, "README.md")) if "README.md" in files else None
        return Reply.json({
            "_id": sha[:24], "id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0], "sha": sha,
            "lastModified": commit["date"], "createdAt": commit["date"], "private": False, "disabled": False,
            "gated": False, "downloads": 0, "likes": 0, "tags": (card or {}).get("tags", []),
            "library_name": (card or {}).get("library_name"), "pipeline_tag": (card or {}).get("pipeline_tag"),
            "cardData": card, "siblings": siblings, "usedStorage": sum(e.size for e in files.values()),
        })

    def _blob_info(self, repo_id: str, sha: str, path: str, entry: FileEntry) -> dict:
        content = None if entry.lfs else self.store.read(repo_id, sha, path)
        info: dict = {"size": entry.size, "blobId": entry.git_oid(content)}
        if entry.lfs:
            info["lfs"] = {"size": entry.size, "sha256": entry.sha256,
                           "pointerSize": len(lfs_pointer(entry.sha256, entry.size))}
        return info

    def tree(self, request: Request) -> Reply:
        if request.flag("expand"):
            raise Unimplemented("tree listing with expand")
        repo_id, prefix = request.params["repo"], request.params.get("path", "").strip("/")
        sha = self.store.resolve(repo_id, request.params["rev"])
        below = prefix + "/" if prefix else ""
        entries, folders = [], set()
        for path, entry in self.store.files(repo_id, sha).items():
            if not path.startswith(below):
                continue
            parts = path[len(below):].split("/")
            folders.update(below + "/".join(parts[:i]) for i in range(1, len(parts)))
            if len(parts) == 1 or request.flag("recursive"):
                blob = self._blob_info(repo_id, sha, path, entry)
                lfs = blob.get("lfs")
                entries.append({"type": "file", "oid": blob["blobId"], "size": entry.size, "path": path,
                                **({"lfs": {"oid": lfs["sha256"], "size": lfs["size"],
                                            "pointerSize": lfs["pointerSize"]}} if lfs else {})})
        if prefix and not entries and not folders:
            return Reply.error(404, f"{prefix} does not exist on {request.params['rev']}", "EntryNotFound")
        shown = sorted(f for f in folders if request.flag("recursive") or "/" not in f[len(below):])
        dirs = [{"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0, "path": f} for f in shown]
        return Reply.json(dirs + entries)

    def validate_yaml(self, request: Request) -> Reply:
        payload = request.json()
        if payload.get("repoType", "model") != "model":
            raise Unimplemented(f"validating a {payload.get('repoType')} card")
        try:
            _front_matter(payload["content"].encode())
        except ValueError as err:
            return Reply.json({"errors": [{"message": str(err)}], "warnings": []}, 400)
        return Reply.json({"errors": [], "warnings": []})

    # ------------------------------------------------------------------ upload: preupload, LFS, commit

    def preupload(self, request: Request) -> Reply:
        repo_id, revision = request.params["repo"], request.params["rev"]
        self._writer(request, repo_id)
        payload = request.json()
        if request.flag("create_pr") or "gitIgnore" in payload:
            raise Unimplemented("preupload for a pull request or with a .gitignore")
        head = self.store.resolve(repo_id, revision)
        present = self.store.files(repo_id, head)
        answers = []
        for f in payload["files"]:
            sample = base64.b64decode(f["sample"])
            mode = self.store.upload_mode(repo_id, revision, f["path"], f["size"], sample)
            entry = present.get(f["path"])
            # The remote oid lets the client skip an unchanged file: sha256 for LFS, the git blob id otherwise.
            oid = None if entry is None else (entry.sha256 if entry.lfs else
                                              entry.git_oid(self.store.read(repo_id, head, f["path"])))
            answers.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return Reply.json({"files": answers, "commitOid": head})

    def lfs_batch(self, request: Request) -> Reply:
        repo_id = request.params["repo"]
        self._writer(request, repo_id)
        payload = request.json()
        if payload.get("operation") != "upload" or "basic" not in payload.get("transfers", ["basic"]):
            raise Unimplemented(f"LFS batch {payload.get('operation')} with transfers {payload.get('transfers')} "
                                "(only 'basic' uploads are served)")
        objects = []
        for obj in payload["objects"]:
            oid, size = obj["oid"], obj["size"]
            answer: dict = {"oid": oid, "size": size}
            if not self.store.lfs_has(oid, size):  # present already: no actions, the client skips the upload
                answer["authenticated"] = True
                answer["actions"] = {
                    "upload": {"href": f"{self.storage_url}/lfs/upload/{oid}?size={size}", "header": {}},
                    "verify": {"href": f"{self.url}/{repo_id}.git/info/lfs/objects/verify", "header": {}},
                }
            objects.append(answer)
        return Reply.json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}, content_type=LFS_JSON)

    def lfs_upload(self, request: Request) -> Reply:
        oid = request.params["oid"]
        self.store.lfs_put(oid, int(request.query["size"][0]), request.body)
        return Reply(200, headers={"ETag": f'"{oid}"'})

    def lfs_verify(self, request: Request) -> Reply:
        self._writer(request, request.params["repo"])
        payload = request.json()
        if not self.store.lfs_has(payload["oid"], payload["size"]):
            return Reply.json({"message": f"object {payload['oid']} not found"}, 404, content_type=LFS_JSON)
        return Reply.json({"success": True}, content_type=LFS_JSON)

    def commit(self, request: Request) -> Reply:
        repo_id, branch = request.params["repo"], request.params["rev"]
        self._writer(request, repo_id)
        if request.flag("create_pr") or request.flag("hot_reload"):
            raise Unimplemented("a commit opening a pull request or hot-reloading a Space")
        if branch not in self.store.refs(repo_id):
            raise StoreError(404, f"Invalid rev id: {branch} (commits go to a branch)", "RevisionNotFound")
        header: dict = {}
        regular: dict[str, bytes] = {}
        lfs: dict[str, tuple[str, int]] = {}
        deleted: list[str] = []
        for line in request.body.splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file" and value.get("encoding") == "base64":
                regular[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile" and value.get("algo") == "sha256" and "size" in value:
                lfs[value["path"]] = (value["oid"], value["size"])
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"].rstrip("/") + ("/" if key == "deletedFolder" else ""))
            else:
                raise Unimplemented(f"commit operation {key} {sorted(value)}")
        message = "\n\n".join(p for p in (header.get("summary"), header.get("description")) if p)
        sha = self.store.commit(repo_id, branch, message, regular, lfs, tuple(deleted), header.get("parentCommit"))
        return Reply.json({"success": True, "commitOid": sha, "commitUrl": f"{self.url}/{repo_id}/commit/{sha}",
                           "hookOutput": "", "pullRequestUrl": None})

    # ------------------------------------------------------------------ download

    def resolve(self, request: Request) -> Reply:
        repo_id, path = request.params["repo"], request.params["path"]
        sha = self.store.resolve(repo_id, request.params["rev"])
        entry = self.store.files(repo_id, sha).get(path)
        if entry is None:  # the commit lets the client cache that the file does not exist there
            return Reply.error(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": sha})
        if entry.lfs:  # as the Hub: a redirect to the storage host, the file's identity in X-Linked-* headers
            return Reply(302, headers={
                "Location": f"{self.storage_url}/lfs/objects/{entry.sha256}", "X-Repo-Commit": sha,
                "ETag": f'"{entry.git_oid()}"', "X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size),
            })
        content = self.store.read(repo_id, sha, path)
        return Reply(200, content, {"ETag": f'"{entry.git_oid(content)}"', "X-Repo-Commit": sha,
                                    "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"})

    def lfs_download(self, request: Request) -> Reply:
        path = self.store.lfs_object(request.params["oid"])
        if not path.is_file():
            return Reply.error(404, "NoSuchKey")
        return Reply(200, path.read_bytes(), {"ETag": f'"{request.params["oid"]}"', "Accept-Ranges": "bytes",
                                              "Content-Type": "application/octet-stream"})

    def agent_harnesses(self, request: Request) -> Reply:
        """The registry huggingface_hub fetches once a day to name the AI agent in its User-Agent: none here."""
        return Reply.json({"standardEnvVars": [], "harnesses": {}})
