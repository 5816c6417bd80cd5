"""A Hugging Face Hub on 127.0.0.1 for tests: the HTTP endpoints huggingface_hub calls to create a model repo,
upload a folder (preupload, the LFS batch API, upload and verify, the NDJSON commit) and download it (repo info,
tree, HEAD/GET on /resolve with the Hub's ETag, X-Repo-Commit and X-Linked-* headers and a redirect to the
storage host), stored on disk with real commits (tests/hub_store.py). Everything else it is asked is answered
501 and recorded in `unimplemented`, which the `hub` fixture (tests/conftest.py) asserts is empty, so a new
client version that calls something new fails the tests instead of being waved through.

Two listening sockets on two free ports, like the Hub and its object storage: `url` serves the API and /resolve,
`storage_url` the LFS uploads and the file bytes /resolve redirects to. Being another origin, the storage host
does not get the Authorization header, as a CDN does not.

How the client is kept off Xet (hf_xet is installed). Downloads: the Hub offers Xet through an X-Xet-Hash header
(with X-Xet-Refresh-Route or a `xet-auth` Link) on the HEAD of /resolve and an `xetHash` in tree entries; this
server sends neither, so `hf_hub_download` takes the plain HTTP GET. Uploads: in huggingface_hub 2.x there is no
server side to that choice: `upload_folder` and `preupload_lfs_files` take the Xet path whenever
`utils.is_xet_available()` (hf_xet importable and HF_HUB_DISABLE_XET unset), before asking the server anything,
and the LFS batch request of the other path offers only ["basic", "multipart"]. So the fixture sets
HF_HUB_DISABLE_XET=1 (and `constants.HF_HUB_DISABLE_XET` in the test process); this server then answers the batch
with `"transfer": "basic"` and no `chunk_size` header (one PUT per object, not multipart). A client that goes to
Xet anyway asks for /api/models/<repo>/xet-write-token/<rev>, which is answered 501 and fails the test, as does
a batch that does not offer "basic".

Failure injection for tests: `refuse(namespace_or_repo)` answers 403 to creating or writing that repo, and
`drop_connection(pattern)` reads half of a matching request's body and closes the socket without an answer.
Tokens: any non-empty bearer token is accepted for writes (user `me`); reads need none.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from hub_api import ROUTES, HubApi, Reply, Request, Unimplemented
from hub_store import RepoStore, StoreError


@dataclass
class LoggedRequest:
    """One request, as the server saw it: which host, what, which route it matched (None: unimplemented), and
    the status answered ("dropped" when the connection was closed on purpose)."""

    host: str
    method: str
    path: str
    route: str | None
    status: int | str | None = None

    def __str__(self) -> str:
        return f"{self.status} {self.method} {self.host}{self.path}"


class HubServer:
    """The Hub and its storage host on two free ports of 127.0.0.1, serving a `RepoStore` in `root`."""

    def __init__(self, root: Path):
        self.store = RepoStore(Path(root))
        self.log: list[LoggedRequest] = []
        self.unimplemented: list[LoggedRequest] = []
        self._refused: set[str] = set()
        self._drops: list[list] = []  # [compiled pattern, remaining count or None]
        self.on_request: Callable[[LoggedRequest], None] | None = None
        """Called with each request before it is answered (a test takes a snapshot of a folder there)."""
        self._lock = threading.Lock()
        self._servers = {role: _Server(role, self) for role in ("hub", "storage")}
        self.url = self._servers["hub"].base_url
        self.storage_url = self._servers["storage"].base_url
        self.api = HubApi(self.store, self.url, self.storage_url, self.refused)
        self._threads: list[threading.Thread] = []

    def start(self) -> HubServer:
        for server in self._servers.values():
            # A short poll: `stop` waits for it, at every test's teardown.
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                      name=f"test-hub-{server.role}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in self._servers.values():
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    # ------------------------------------------------------------------ failures, for tests

    def refuse(self, name: str) -> None:
        """Answer 403 to creating or writing repos of a namespace ("other") or one repo ("me/locked")."""
        self._refused.add(name)

    def refused(self, repo_id: str) -> bool:
        return repo_id in self._refused or repo_id.split("/")[0] in self._refused

    def drop_connection(self, pattern: str, times: int | None = None) -> None:
        """Close the connection halfway through the body of requests matching `pattern` (a regex searched in
        "METHOD host/path", e.g. "PUT storage/lfs/upload/"), `times` times (None: every time)."""
        self._drops.append([re.compile(pattern), times])

    def stop_dropping(self) -> None:
        self._drops.clear()

    def _should_drop(self, request: LoggedRequest) -> bool:
        with self._lock:
            for drop in self._drops:
                if drop[0].search(f"{request.method} {request.host}{request.path}") and drop[1] != 0:
                    drop[1] = None if drop[1] is None else drop[1] - 1
                    return True
        return False

    # ------------------------------------------------------------------ what was asked

    def calls(self) -> list[str]:
        """Each route the client called, once, as "METHOD host route" (unimplemented ones as their path)."""
        return sorted({f"{r.method} {r.host} {r.route or r.path}" for r in self.log})

    def unimplemented_report(self) -> str:
        lines = "\n".join(f"  {r}" for r in self.unimplemented)
        return (f"the client called {len(self.unimplemented)} endpoint(s) the test Hub does not implement "
                f"(answered 501); implement them in tests/hub_api.py if the new client needs them:\n{lines}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, role: str, hub: HubServer):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.role, self.hub = role, hub
        self.base_url = f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    """Reads a request, finds its route in `hub_api.ROUTES`, and writes the `Reply` (HTTP/1.1, kept alive as the
    client's connection pool expects)."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args) -> None:  # HubServer.log is the record, not stderr
        pass

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def _dispatch(self) -> None:
        hub, role = self.server.hub, self.server.role
        parts = urlsplit(self.path)
        route, handler, params = _match(role, self.command, parts.path)
        logged = LoggedRequest(role, self.command, self.path, route)
        hub.log.append(logged)
        if hub.on_request is not None:
            hub.on_request(logged)
        if hub._should_drop(logged):
            logged.status = "dropped"
            self._drop()
            return
        body = self._read_body()
        request = Request(self.command, params, parse_qs(parts.query), dict(self.headers.items()), body)
        try:
            if handler is None:
                raise Unimplemented(f"{self.command} {parts.path}")
            reply = getattr(hub.api, handler)(request)
        except Unimplemented as err:
            hub.unimplemented.append(logged)
            reply = Reply.json({"error": f"not implemented by the test Hub (tests/hub_api.py): {err}"}, 501)
        except StoreError as err:
            reply = Reply.error(err.status, str(err), err.code)
        logged.status = reply.status
        self._send(reply)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after the chunk
                if size == 0:
                    return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _drop(self) -> None:
        """Read about half the body, then close the socket without an answer: a connection lost mid-upload."""
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length // 2)
        elif self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.rfile.readline()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _send(self, reply: Reply) -> None:
        body = reply.body
        status, headers = reply.status, dict(reply.headers)
        ranged = self.headers.get("Range")
        if ranged and status == 200 and self.command == "GET" and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", ranged)):
            start, end = int(m.group(1)), int(m.group(2) or len(body) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(body)}"
            status, body = 206, body[start:end + 1]
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _match(role: str, method: str, path: str) -> tuple[str | None, str | None, dict[str, str]]:
    """(route template, HubApi method name, unquoted parameters) of a request, or (None, None, {})."""
    for route in ROUTES:
        if route.host == role and method in route.methods and (m := route.regex.fullmatch(path)):
            return route.template, route.handler, {k: unquote(v) for k, v in m.groupdict().items() if v is not None}
    return None, None, {}
