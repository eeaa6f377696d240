"""Resolving and opening sources: URLs, local paths, buckets.

``http(s)://`` URLs are fetched with urllib; local paths, ``file://`` and bucket URLs
(``s3://``, ``gs://``, ``az://``) are read through fsspec, and a directory or bucket prefix
stands for the data files in it.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import urlsplit

from substratus.workloads.contract import ParamError, redact
from substratus.workloads.dataset_loader.common import LoaderError
from substratus.workloads.dataset_loader.formats import KNOWN, format_by_path


@dataclass
class Opened:
    """A source's byte stream and what is known about it."""

    label: str
    """How errors name it: the URL as given (credentials removed), plus the file in a dir."""
    stream: IO[bytes]
    path: str
    """The path part, whose extension tells the format."""
    content_type: str | None = None
    size: int | None = None
    local_path: str | None = None
    """A local file's path (parquet reads it directly)."""
    closers: list[Any] = field(default_factory=list)

    def close(self) -> None:
        for c in reversed(self.closers):
            with contextlib.suppress(Exception):
                c.close()


def _is_http(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def _open_http(url: str) -> Opened:
    import urllib.error
    import urllib.request

    label = redact(url)
    request = urllib.request.Request(url, headers={"User-Agent": "substratus-dataset-loader"})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as e:
        raise ParamError(f"params.urls: {label}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise LoaderError(f"params.urls: {label}: cannot connect ({e.reason})") from None
    except (OSError, ValueError) as e:
        raise LoaderError(f"params.urls: {label}: cannot fetch ({e})") from None
    length = response.headers.get("Content-Length")
    ctype = response.headers.get("Content-Type")
    return Opened(
        label,
        response,
        urlsplit(url).path,
        content_type=ctype.split(";")[0].strip().lower() if ctype else None,
        size=int(length) if length and length.isdigit() else None,
        closers=[response],
    )


def expand(url: str) -> list[tuple[str, str, Any]]:
    """A non-HTTP source as ``(label, fsspec path, filesystem)`` per file (a dir: its files)."""
    from substratus.storage.backends import MissingDependency, backend_for, parse_url

    label = redact(url)
    try:
        loc = parse_url(url)
        fs = backend_for(loc).filesystem()
    except (ValueError, MissingDependency) as e:
        raise ParamError(f"params.urls: {label}: {e}") from None
    try:
        if fs.isdir(loc.path):
            prefix = loc.path.rstrip("/") + "/"
            found = sorted(
                p
                for p, info in fs.find(loc.path, detail=True).items()
                if info.get("type", "file") == "file" and format_by_path(p) is not None
            )
            if not found:
                raise ParamError(
                    f"params.urls: {label} is a directory without data files ({KNOWN})"
                )
            return [(f"{label.rstrip('/')}/{p[len(prefix) :]}", p, fs) for p in found]
        if fs.isfile(loc.path):
            return [(label, loc.path, fs)]
    except ParamError:
        raise
    except Exception as e:
        raise LoaderError(f"params.urls: {label}: cannot read ({type(e).__name__}: {e})") from e
    raise ParamError(f"params.urls: {label} does not exist")


def _open_fs(label: str, path: str, fs: Any) -> Opened:
    from fsspec.implementations.local import LocalFileSystem

    try:
        if isinstance(fs, LocalFileSystem):
            f: IO[bytes] = open(path, "rb")  # noqa: SIM115 (closed by Opened.close)
            size: int | None = os.fstat(f.fileno()).st_size
            return Opened(label, f, path, size=size, local_path=path, closers=[f])
        f = fs.open(path, "rb")
        size = int(fs.size(path) or 0) or None
        return Opened(label, f, path, size=size, closers=[f])
    except OSError as e:
        raise LoaderError(f"params.urls: {label}: cannot open ({e})") from None


def openers(url: str) -> list[Callable[[], Opened]]:
    """How to open each file a URL stands for (a directory stands for its data files)."""
    if _is_http(url):
        return [lambda: _open_http(url)]
    return [functools.partial(_open_fs, *part) for part in expand(url)]
