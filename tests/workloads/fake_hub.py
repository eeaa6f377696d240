"""A local, hub-shaped HTTP server for offline tests of code that uses ``huggingface_hub``.

It implements the few endpoints ``snapshot_download``/``hf_hub_download`` call (read from the
installed huggingface_hub's source: ``HfApi.model_info``/``repo_info``, ``list_repo_tree`` with
``Link`` pagination, and ``HEAD``/``GET`` on ``resolve``), serving a directory: each
``ROOT/<org>/<name>/`` is a model repo whose only branch is ``main``::

    GET  /api/models/{org}/{name}[/revision/{rev}]      -> {"id", "sha", "siblings", "private"}
    GET  /api/models/{org}/{name}/tree/{rev}[/{path}]    -> [{"type", "path", "size", "oid"}]
    HEAD /{org}/{name}/resolve/{rev}/{file}              -> ETag, X-Repo-Commit, Content-Length
    GET  /{org}/{name}/resolve/{rev}/{file}              -> the bytes (Range: 206 + Content-Range)

Errors carry the hub's ``X-Error-Code`` header (``RepoNotFound``, ``RevisionNotFound``,
``EntryNotFound``), which huggingface_hub maps to its typed exceptions. A repo listed in
``private`` answers 401 ``RepoNotFound`` (as the hub does) unless the request carries
``Authorization: Bearer <token>``. ``interrupt[path] = n`` cuts the next GET of that file after
``n`` bytes (once), to test resumed downloads; ``fail[path] = status`` answers that file's
``HEAD``/``GET`` with an error until removed. ``requests`` logs ``(method, path, headers)``
(header names in lower case).

Use it as a context manager and point the real code at it with ``HF_ENDPOINT=hub.url``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

BRANCH = "main"


def git_blob_oid(path: Path) -> str:
    """The file's git blob id (what the hub reports as ``oid`` and ``ETag`` for non-LFS files)."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class FakeHub:
    root: Path
    token: str | None = None
    private: set[str] = field(default_factory=set)
    page_size: int = 1000
    interrupt: dict[str, int] = field(default_factory=dict)
    fail: dict[str, int] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    _oids: dict[tuple[str, int, int], str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    # --- setup -------------------------------------------------------------------------------

    def add_repo(self, repo_id: str, files: dict[str, bytes | str]) -> Path:
        repo = self.root / repo_id
        for name, content in files.items():
            p = repo / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(content.encode() if isinstance(content, str) else content)
        return repo

    @property
    def url(self) -> str:
        assert self._server is not None, "start the hub first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def gets(self, suffix: str = "") -> list[str]:
        """Paths of file GETs (``resolve``) that end with ``suffix``."""
        return [
            p for m, p, _ in self.requests if m == "GET" and "/resolve/" in p and p.endswith(suffix)
        ]

    # --- repo model --------------------------------------------------------------------------

    def repo_dir(self, repo_id: str) -> Path | None:
        parts = repo_id.split("/")
        if not parts or any(p in ("", ".", "..") for p in parts) or len(parts) > 2:
            return None
        d = self.root.joinpath(*parts)
        return d if d.is_dir() else None

    def files(self, repo: Path) -> list[Path]:
        return sorted(p for p in repo.rglob("*") if p.is_file())

    def oid(self, path: Path) -> str:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        with self._lock:
            cached = self._oids.get(key)
        if cached is None:
            cached = git_blob_oid(path)
            with self._lock:
                self._oids[key] = cached
        return cached

    def warm(self) -> None:
        """Hash every file now (not during the first request)."""
        for repo in self.root.glob("*/*"):
            for f in self.files(repo):
                self.oid(f)

    def sha(self, repo: Path) -> str:
        h = hashlib.sha1()
        for f in self.files(repo):
            h.update(f"{f.relative_to(repo).as_posix()}\0{self.oid(f)}\n".encode())
        return h.hexdigest()


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # --- plumbing ----------------------------------------------------------------------------

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(
            200,
            json.dumps(data).encode(),
            {"Content-Type": "application/json", **(headers or {})},
        )

    def _error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(
            status,
            body,
            {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message},
        )

    def _authorized(self, repo_id: str) -> bool:
        if repo_id not in self.hub.private:
            return True
        return bool(self.hub.token) and (
            self.headers.get("Authorization") == f"Bearer {self.hub.token}"
        )

    def _repo(self, repo_id: str) -> Path | None:
        """The repo's directory, or None after answering with the hub's error."""
        repo = self.hub.repo_dir(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        if not self._authorized(repo_id):
            self._error(401, "RepoNotFound", "Invalid username or password.")
            return None
        return repo

    def _revision(self, repo: Path, rev: str) -> str | None:
        sha = self.hub.sha(repo)
        if rev in (BRANCH, sha):
            return sha
        self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return None

    # --- routes ------------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self._route()

    def do_GET(self) -> None:
        self._route()

    def _route(self) -> None:
        split = urlsplit(self.path)
        path = unquote(split.path)
        self.hub.requests.append(
            (self.command, path, {k.lower(): v for k, v in self.headers.items()})
        )
        query = parse_qs(split.query)
        if path == "/api/agent-harnesses":  # huggingface_hub's best-effort telemetry registry
            return self._json({"standardEnvVars": [], "harnesses": {}})
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+|[^/]+)(?:/revision/([^/]+))?", path)
        if m:
            return self._info(m.group(1), m.group(2) or BRANCH)
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+|[^/]+)/tree/([^/]+)(?:/(.*))?", path)
        if m:
            return self._tree(m.group(1), m.group(2), m.group(3) or "", query)
        m = re.fullmatch(r"/([^/]+/[^/]+|[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            return self._resolve(m.group(1), m.group(2), m.group(3))
        self._error(404, "NotFound", f"no route for {path}")

    def _info(self, repo_id: str, rev: str) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        sha = self._revision(repo, rev)
        if sha is None:
            return
        siblings = [{"rfilename": f.relative_to(repo).as_posix()} for f in self.hub.files(repo)]
        self._json(
            {
                "id": repo_id,
                "modelId": repo_id,
                "sha": sha,
                "private": repo_id in self.hub.private,
                "gated": False,
                "disabled": False,
                "siblings": siblings,
                "tags": [],
            }
        )

    def _tree(self, repo_id: str, rev: str, sub: str, query: dict[str, list[str]]) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        if self._revision(repo, rev) is None:
            return
        base = repo / sub if sub else repo
        if not base.is_dir():
            self._error(404, "EntryNotFound", f"{sub} does not exist")
            return
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        items: list[Path] = sorted(base.rglob("*") if recursive else base.iterdir())
        entries: list[dict[str, Any]] = []
        for p in items:
            rel = p.relative_to(repo).as_posix()
            if p.is_dir():
                entries.append({"type": "directory", "path": rel, "oid": "0" * 40, "size": 0})
            else:
                entries.append(
                    {"type": "file", "path": rel, "size": p.stat().st_size, "oid": self.hub.oid(p)}
                )
        start = int(query.get("cursor", ["0"])[0])
        page = entries[start : start + self.hub.page_size]
        headers: dict[str, str] = {}
        if start + self.hub.page_size < len(entries):
            nxt = (
                f"{self.hub.url}/api/models/{repo_id}/tree/{quote(rev, safe='')}"
                + (f"/{quote(sub)}" if sub else "")
                + f"?recursive={str(recursive).lower()}&cursor={start + self.hub.page_size}"
            )
            headers["Link"] = f'<{nxt}>; rel="next"'
        self._json(page, headers)

    def _resolve(self, repo_id: str, rev: str, name: str) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        sha = self._revision(repo, rev)
        if sha is None:
            return
        if name in self.hub.fail:
            self._error(self.hub.fail[name], "Injected", f"injected failure for {name}")
            return
        f = repo / name
        if any(p in ("", ".", "..") for p in name.split("/")) or not f.is_file():
            self._error(404, "EntryNotFound", f"{name} does not exist on {rev}")
            return
        size = f.stat().st_size
        start, end = 0, size - 1
        status = 200
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if not m or (not m.group(1) and not m.group(2)):
                self._send(416, b"", {"Content-Range": f"bytes */{size}"})
                return
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:  # suffix range: the last N bytes
                start, end = max(size - int(m.group(2)), 0), size - 1
            if start >= size or start > end:
                self._send(416, b"", {"Content-Range": f"bytes */{size}"})
                return
            status = 206
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{self.hub.oid(f)}"')
        self.send_header("X-Repo-Commit", sha)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        cut = self.hub.interrupt.pop(name, None)
        self.wfile.flush()
        sent = 0
        todo = length if cut is None else min(length, cut)
        with f.open("rb") as fh:
            for n in _sendfile(self.connection.fileno(), fh.fileno(), start, todo):
                sent += n
        if cut is not None:
            self.close_connection = True
            self.connection.shutdown(2)


def _sendfile(out_fd: int, in_fd: int, offset: int, count: int) -> Iterator[int]:
    while count > 0:
        n = os.sendfile(out_fd, in_fd, offset, min(count, 1 << 24))
        if n == 0:
            return
        offset += n
        count -= n
        yield n


__all__ = ["BRANCH", "FakeHub", "git_blob_oid"]
