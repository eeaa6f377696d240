"""The manifest of a committed artifact version: every file with its size and sha256.

A version of an object's artifacts is committed when its manifest exists: the store writes it
last, so a reader that finds a manifest finds every file it lists.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MANIFEST_NAME = "substratus-manifest.json"
FORMAT_VERSION = 1
CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class FileEntry:
    path: str
    """Relative path with '/' separators."""
    size: int
    sha256: str
    """Lowercase hex digest."""


@dataclass(frozen=True)
class Manifest:
    files: tuple[FileEntry, ...]
    created: str
    """ISO 8601 time (UTC) when the manifest was made."""

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> str:
        doc = {
            "version": FORMAT_VERSION,
            "created": self.created,
            "totalSize": self.total_size,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
        }
        return json.dumps(doc, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse and validate a manifest; ``ValueError`` says what is wrong."""
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise ValueError(f"manifest is not valid JSON: {e}") from None
        if not isinstance(doc, dict):
            raise ValueError("manifest is not a JSON object")
        if doc.get("version", FORMAT_VERSION) != FORMAT_VERSION:
            raise ValueError(f"unsupported manifest version {doc.get('version')!r}")
        created = doc.get("created")
        files = doc.get("files")
        if not isinstance(created, str) or not isinstance(files, list):
            raise ValueError("manifest needs 'created' (string) and 'files' (list)")
        entries = tuple(_entry(i, f) for i, f in enumerate(files))
        seen: set[str] = set()
        for entry in entries:
            if entry.path in seen:
                raise ValueError(f"manifest lists {entry.path!r} twice")
            seen.add(entry.path)
        return cls(files=entries, created=created)


def _entry(i: int, f: Any) -> FileEntry:
    where = f"manifest files[{i}]"
    if not isinstance(f, dict):
        raise ValueError(f"{where} is not an object")
    path, size, sha = f.get("path"), f.get("size"), f.get("sha256")
    if not isinstance(path, str):
        raise ValueError(f"{where}.path must be a string")
    check_relative_path(path, where=f"{where}.path")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"{where}.size must be a non-negative integer")
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError(f"{where}.sha256 must be 64 lowercase hex digits")
    return FileEntry(path=path, size=size, sha256=sha)


def check_relative_path(path: str, *, where: str = "path") -> None:
    """Reject paths that could escape the directory they are joined to."""
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or any(p in ("", ".", "..") for p in parts)
        or posixpath.normpath(path) != path
    ):
        raise ValueError(f"{where} {path!r} is not a plain relative path")
    if path == MANIFEST_NAME:
        raise ValueError(f"{where} {path!r} is the manifest's own name")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def list_files(local_dir: Path) -> list[tuple[str, Path]]:
    """Files under ``local_dir`` as sorted ``(relative '/' path, path)`` pairs.

    Symbolic links to files are followed; links to directories are not descended into. The
    manifest at the top is left out.
    """
    if not local_dir.is_dir():
        raise NotADirectoryError(f"{local_dir} is not a directory")
    out: list[tuple[str, Path]] = []
    for root, dirs, files in os.walk(local_dir, followlinks=False):
        dirs.sort()
        rel_root = Path(root).relative_to(local_dir).as_posix()
        for name in files:
            rel = name if rel_root == "." else f"{rel_root}/{name}"
            if rel == MANIFEST_NAME:
                continue
            full = Path(root) / name
            if full.is_file():  # skips dangling links, sockets, fifos
                out.append((rel, full))
        # Links to directories appear in `dirs`, and os.walk does not descend into them.
    out.sort(key=lambda x: x[0])
    return out


def hash_file(
    path: Path, on_chunk: Callable[[int], None] | None = None
) -> tuple[int, str]:  # (size, sha256)
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
            if on_chunk is not None:
                on_chunk(len(chunk))
    return size, h.hexdigest()


def build_manifest(local_dir: Path) -> Manifest:
    """Hash every file under ``local_dir`` (not a manifest already there)."""
    entries = []
    for rel, full in list_files(local_dir):
        size, digest = hash_file(full)
        entries.append(FileEntry(path=rel, size=size, sha256=digest))
    return Manifest(files=tuple(entries), created=now_iso())
