"""One file over HTTP(S), for the model loader's ``params.url`` (a GGUF on a web server, a
release asset, a file behind a signed URL).

Its name is the last segment of the URL's path; its size comes from a HEAD request (redirects
followed, as release assets and hub ``resolve`` links redirect), when the server tells it. The
body is streamed to a ``.part`` file in 1 MiB chunks (memory stays flat whatever the size) and
checked against that size, so a dropped connection is an error and never a truncated model. A
user:password in the URL is sent as basic auth and never printed.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from substratus.workloads.contract import ParamError, redact

CHUNK = 1 << 20
TIMEOUT = httpx.Timeout(60.0, connect=30.0)
HEADERS = {"User-Agent": "substratus-model-loader"}


class HttpFileError(RuntimeError):
    """The server could not be reached, or the transfer failed (not the params' fault)."""


def is_http(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def file_name(url: str) -> str:
    """The file's name in ``artifacts/``: the last segment of the URL's path."""
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ParamError(f"params.url: {redact(url)} names no file (its path ends in no name)")
    return name


def _client() -> httpx.Client:
    return httpx.Client(follow_redirects=True, timeout=TIMEOUT, headers=HEADERS)


def _check(url: str, response: httpx.Response) -> None:
    if response.status_code in (401, 403, 404, 410):
        raise ParamError(
            f"params.url: {redact(url)}: HTTP {response.status_code} {response.reason_phrase}"
        )
    if response.status_code >= 400:
        raise HttpFileError(
            f"params.url: {redact(url)}: HTTP {response.status_code} {response.reason_phrase}"
        )


def probe(url: str) -> int | None:
    """The file's size, or None when the server does not say; ParamError when it is not there."""
    try:
        with _client() as client:
            response = client.head(url)
            if response.status_code in (405, 501):  # no HEAD here: the GET will tell
                return None
            _check(url, response)
    except httpx.HTTPError as e:
        raise HttpFileError(f"params.url: {redact(url)}: cannot connect ({e})") from None
    length = response.headers.get("Content-Length", "")
    encoded = response.headers.get("Content-Encoding", "identity") != "identity"
    return int(length) if length.isdigit() and not encoded else None


def download(url: str, target: Path, size: int | None) -> None:
    """Stream the file to ``target`` (through ``target.part``, renamed when complete)."""
    part = target.with_name(target.name + ".part")
    written = 0
    try:
        with _client() as client, client.stream("GET", url) as response:
            _check(url, response)
            with part.open("wb") as out:
                for chunk in response.iter_bytes(CHUNK):
                    out.write(chunk)
                    written += len(chunk)
        if size is not None and written != size:
            raise HttpFileError(
                f"params.url: {redact(url)}: got {written} of {size} bytes (connection dropped?)"
            )
        os.replace(part, target)
    except httpx.HTTPError as e:
        raise HttpFileError(f"params.url: {redact(url)}: download failed ({e})") from None
    finally:
        part.unlink(missing_ok=True)
