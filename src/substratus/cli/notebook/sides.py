"""The two sides of a notebook sync: the user's directory and the notebook's working directory,
read and written through Jupyter Server's contents API (the same HTTP API in a local process and
in a pod, reached over a port-forward on a cluster).

Both sides list what they hold as {path: md5}, hashing only files whose change stamp (local:
mtime and size; Jupyter: last_modified and size) moved since the last listing. What is never
synced: hidden files and directories (a name starting with ``.``), what the runtime puts in the
working directory (``model/``, ``data/``, ``artifacts/``, ``params.json``), ``__pycache__``,
what the directory's ``.dockerignore`` excludes, symlinks, and files over ``max_bytes`` (each
named once, then left alone).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from substratus.core.contract import CONTRACT_ENTRIES
from substratus.storage import DockerIgnore

MAX_FILE_BYTES = 64 * 1024 * 1024
Stamp = tuple[Any, int]


class SyncError(Exception):
    """A side could not be read or written; the message says which path and why."""


def synced_path(path: str) -> bool:
    """Whether a relative path is the user's to sync (the rules of this module's docstring,
    but .dockerignore)."""
    parts = path.split("/")
    if parts[0] in CONTRACT_ENTRIES:
        return False
    return not any(p.startswith(".") or p == "__pycache__" for p in parts)


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class _Hashes:
    """Digests by path, kept while the path's stamp stays the same."""

    def __init__(self) -> None:
        self.known: dict[str, tuple[Stamp, str]] = {}

    def digest(self, path: str, stamp: Stamp, read: Callable[[], bytes]) -> str:
        seen = self.known.get(path)
        if seen is not None and seen[0] == stamp:
            return seen[1]
        digest = _md5(read())
        self.known[path] = (stamp, digest)
        return digest

    def keep_only(self, paths: set[str]) -> None:
        for gone in self.known.keys() - paths:
            del self.known[gone]


class LocalTree:
    """The user's directory."""

    def __init__(self, root: Path, max_bytes: int = MAX_FILE_BYTES) -> None:
        self.root = root.resolve()
        self.max_bytes = max_bytes
        self.ignore = DockerIgnore.load(self.root)
        self.hashes = _Hashes()
        self.too_large: set[str] = set()

    def _walk(self) -> Iterator[tuple[str, os.stat_result]]:
        stack = [""]
        while stack:
            prefix = stack.pop()
            try:
                entries = list(os.scandir(self.root / prefix))
            except FileNotFoundError:
                continue
            for entry in entries:
                rel = prefix + entry.name
                if not synced_path(rel) or self.ignore.excluded(rel):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    stack.append(rel + "/")
                elif stat.S_ISREG(st.st_mode):
                    yield rel, st

    def scan(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for rel, st in self._walk():
            if st.st_size > self.max_bytes:
                self.too_large.add(rel)
                continue
            try:
                out[rel] = self.hashes.digest(
                    rel, (st.st_mtime_ns, st.st_size), functools.partial(self.read, rel)
                )
            except FileNotFoundError:
                continue  # deleted while listing: the next scan sees it gone
        self.hashes.keep_only(set(out))
        return out

    def read(self, path: str) -> bytes:
        return (self.root / path).read_bytes()

    def write(self, path: str, data: bytes) -> str:
        """Replace the file atomically (a reader never sees half of it); keep its mode."""
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        mode = 0o644
        with contextlib.suppress(FileNotFoundError):
            mode = stat.S_IMODE(target.stat().st_mode)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".substratus-sync-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        st = target.stat()
        digest = _md5(data)
        self.hashes.known[path] = ((st.st_mtime_ns, st.st_size), digest)
        return digest

    def delete(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / path).unlink()
        self.hashes.known.pop(path, None)
        # Directories the deletion emptied go too, as the notebook side's listing would show.
        parent = (self.root / path).parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent


class JupyterTree:
    """The notebook's working directory through Jupyter Server's contents API."""

    def __init__(
        self,
        base_url: str,
        token: str,
        max_bytes: int = MAX_FILE_BYTES,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.http = httpx.Client(
            base_url=base_url.rstrip("/") + "/api/contents/",
            headers={"Authorization": f"token {token}"},
            timeout=httpx.Timeout(30.0, connect=5.0),
            transport=transport,
        )
        self.max_bytes = max_bytes
        self.hashes = _Hashes()
        self.too_large: set[str] = set()

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, quote(path), **kwargs)
        except httpx.HTTPError as e:
            raise SyncError(f"notebook: {method} {path or '/'}: {e}") from None
        if response.status_code >= 400:
            try:
                reason = response.json().get("message") or response.text
            except ValueError:
                reason = response.text
            raise SyncError(
                f"notebook: {method} {path or '/'}: {response.status_code} {reason}".strip()
            )
        return response

    def _listing(self, directory: str) -> list[dict[str, Any]]:
        try:
            model = self._request("GET", directory, params={"content": "1"}).json()
        except SyncError:
            if directory:  # removed while listing: the next scan sees it gone
                return []
            raise
        return list(model.get("content") or [])

    def scan(self) -> dict[str, str]:
        out: dict[str, str] = {}
        stack = [""]
        while stack:
            directory = stack.pop()
            for item in self._listing(directory):
                rel = str(item["path"]).strip("/")
                if not synced_path(rel):
                    continue
                if item.get("type") == "directory":
                    stack.append(rel)
                    continue
                size = item.get("size")
                if size is not None and size > self.max_bytes:
                    self.too_large.add(rel)
                    continue
                stamp = (item.get("last_modified"), size if size is not None else -1)
                try:
                    out[rel] = self.hashes.digest(rel, stamp, functools.partial(self.read, rel))
                except SyncError:
                    continue  # deleted between the listing and the read
        self.hashes.keep_only(set(out))
        return out

    def read(self, path: str) -> bytes:
        model = self._request(
            "GET", path, params={"type": "file", "format": "base64", "content": "1"}
        ).json()
        content = model.get("content") or ""
        if model.get("format") == "base64":
            data = base64.b64decode(content)
        else:  # a server that answered in text anyway
            data = str(content).encode()
        if len(data) > self.max_bytes:
            raise SyncError(f"notebook: {path}: larger than {self.max_bytes} bytes")
        return data

    def _mkdirs(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            directory = "/".join(parts[:i])
            try:
                self._request("GET", directory, params={"content": "0"})
            except SyncError:
                self._request("PUT", directory, json={"type": "directory"})

    def write(self, path: str, data: bytes) -> str:
        if "/" in path:
            self._mkdirs(path)
        body = {
            "type": "file",
            "format": "base64",
            "content": base64.b64encode(data).decode(),
        }
        model = self._request("PUT", path, json=body).json()
        digest = _md5(data)
        size = model.get("size")
        self.hashes.known[path] = (
            (model.get("last_modified"), size if size is not None else -1),
            digest,
        )
        return digest

    def delete(self, path: str) -> None:
        with contextlib.suppress(SyncError):
            self._request("DELETE", path)
        self.hashes.known.pop(path, None)
