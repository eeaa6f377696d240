"""Uploads of one build context to a signed URL, as a client outside the cluster makes them.

The URL comes from :meth:`ArtifactStore.signed_upload_url` (an S3 presigned PUT, a GCS V4
signed PUT, an Azure SAS, the operator's own upload endpoint, or ``file://`` locally). The
tarball's md5 travels as ``Content-MD5``: S3 and GCS URLs signed for an md5 refuse any other
header, and every server refuses a body whose md5 differs from the header, so a corrupted or
swapped upload never lands under the name the build will read.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

__all__ = [
    "AZURE_BLOCK_BYTES",
    "AZURE_SINGLE_PUT_BYTES",
    "SignedUploadError",
    "file_md5",
    "md5_base64",
    "redact",
    "upload_parts",
    "upload_to_signed_url",
]

CHUNK = 1 << 20
# Azure: contexts above AZURE_SINGLE_PUT_BYTES go up in blocks of AZURE_BLOCK_BYTES (several at
# once, each checked by its own md5; a single Put Blob is capped at 5000 MiB by the service).
# Below it one PUT is faster (measured against Azurite: 200 MB in 32 MiB blocks ran at 0.68x
# a single PUT; benchmarks/upload_signed.py).
AZURE_SINGLE_PUT_BYTES = 256 << 20
AZURE_BLOCK_BYTES = 32 << 20
AZURE_PARALLEL_BLOCKS = 4  # blocks, or S3 parts, in flight at once

UploadProgress = Callable[[int], None]
"""``progress(bytes_sent_since_last_call)``; called from one thread at a time."""


class SignedUploadError(RuntimeError):
    """The upload failed; the message names the URL without its credentials."""


def md5_base64(md5_hex: str) -> str:
    """``Content-MD5``'s form of an md5 digest written as 32 hex digits."""
    return base64.b64encode(bytes.fromhex(md5_hex)).decode()


def file_md5(path: Path) -> str:
    """The md5 of a file, read in blocks: a context may be larger than memory."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def redact(url: str) -> str:
    """A URL without its query (signed URLs carry credentials there)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _is_azure_sas(url: str) -> bool:
    query = parse_qs(urlsplit(url).query)
    return "sig" in query and "sv" in query


def _body(path: Path, offset: int, length: int, progress: UploadProgress | None) -> Iterator[bytes]:
    with open(path, "rb") as f:
        f.seek(offset)
        left = length
        while left > 0:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                raise SignedUploadError(f"{path} shrank while it was being uploaded")
            left -= len(chunk)
            if progress is not None:
                progress(len(chunk))
            yield chunk


def _put(client: Any, url: str, headers: dict[str, str], body: Iterator[bytes] | bytes) -> None:
    # An explicit Content-Length: httpx then streams the generator without chunked encoding,
    # which S3 and Azure refuse.
    response = client.put(url, content=body, headers=headers)
    if response.status_code >= 300:
        raise SignedUploadError(
            f"cannot upload to {redact(url)}: HTTP {response.status_code}: {response.text[:500]}"
        )


def upload_to_signed_url(
    signed_url: str,
    path: Path,
    *,
    md5: str | None = None,
    progress: UploadProgress | None = None,
) -> None:
    """PUT ``path`` to ``signed_url``, sending ``md5`` (hex) as ``Content-MD5`` when given."""
    import httpx

    path = Path(path)
    size = path.stat().st_size
    if urlsplit(signed_url).scheme not in ("http", "https"):
        raise SignedUploadError(f"cannot upload to {redact(signed_url)}: not an http(s) URL")
    timeout = httpx.Timeout(120.0, connect=30.0)
    with httpx.Client(timeout=timeout) as client:
        try:
            if _is_azure_sas(signed_url) and size > AZURE_SINGLE_PUT_BYTES:
                _azure_blocks(client, signed_url, path, size, md5, progress)
                return
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
            if md5:
                headers["Content-MD5"] = md5_base64(md5)
            if _is_azure_sas(signed_url):
                headers["x-ms-blob-type"] = "BlockBlob"
            _put(client, signed_url, headers, _body(path, 0, size, progress))
        except httpx.HTTPError as e:
            raise SignedUploadError(f"cannot upload {path} to {redact(signed_url)}: {e}") from e


def _azure_blocks(
    client: Any,
    url: str,
    path: Path,
    size: int,
    md5: str | None,
    progress: UploadProgress | None,
) -> None:
    """Put Block for each block (a few at a time), then Put Block List: what a SAS with
    create and write rights allows; the whole blob's md5 is set on the list."""
    import threading

    lock = threading.Lock()

    def report(n: int) -> None:
        if progress is not None:
            with lock:
                progress(n)

    prefix = uuid.uuid4().hex[:16]
    offsets = list(range(0, size, AZURE_BLOCK_BYTES))
    ids = [base64.b64encode(f"{prefix}-{i:06d}".encode()).decode() for i in range(len(offsets))]
    sep = "&" if urlsplit(url).query else "?"

    def put_block(i: int) -> None:
        length = min(AZURE_BLOCK_BYTES, size - offsets[i])
        with open(path, "rb") as f:
            f.seek(offsets[i])
            data = f.read(length)
        digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
        headers = {"Content-Length": str(length), "Content-MD5": md5_base64(digest)}
        block_url = f"{url}{sep}comp=block&blockid={quote(ids[i], safe='')}"
        _put(client, block_url, headers, data)
        report(length)

    with ThreadPoolExecutor(AZURE_PARALLEL_BLOCKS) as pool:
        list(pool.map(put_block, range(len(offsets))))
    listing = "".join(f"<Latest>{i}</Latest>" for i in ids)
    xml = f'<?xml version="1.0" encoding="utf-8"?><BlockList>{listing}</BlockList>'.encode()
    headers = {"Content-Length": str(len(xml)), "x-ms-blob-content-type": "application/gzip"}
    if md5:
        headers["x-ms-blob-content-md5"] = md5_base64(md5)
    _put(client, f"{url}{sep}comp=blocklist", headers, xml)


def upload_parts(
    urls: list[str],
    part_size: int,
    complete_url: str,
    path: Path,
    progress: UploadProgress | None = None,
) -> None:
    """A multipart upload through signed URLs (S3): each ``part_size`` bytes of ``path`` to its
    URL (a few at a time, each with its own Content-MD5), then the parts' ETags POSTed to
    ``complete_url``."""
    import threading

    import httpx

    size = Path(path).stat().st_size
    if not (len(urls) - 1) * part_size < size <= len(urls) * part_size:
        raise SignedUploadError(
            f"{path} is {size} bytes: not what the {len(urls)} signed parts are for "
            "(the context changed after it was packed?)"
        )
    lock = threading.Lock()

    def report(n: int) -> None:
        if progress is not None:
            with lock:
                progress(n)

    def put_part(i: int) -> str:
        offset = i * part_size
        length = min(part_size, size - offset)
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
        headers = {"Content-Length": str(length), "Content-MD5": md5_base64(digest)}
        with httpx.Client(timeout=httpx.Timeout(300.0, connect=30.0)) as client:
            r = client.put(urls[i], content=data, headers=headers)
        if r.status_code >= 300:
            raise SignedUploadError(
                f"cannot upload part {i + 1} to {redact(urls[i])}: HTTP {r.status_code}: "
                f"{r.text[:300]}"
            )
        report(length)
        return str(r.headers.get("ETag", ""))

    try:
        with ThreadPoolExecutor(AZURE_PARALLEL_BLOCKS) as pool:
            etags = list(pool.map(put_part, range(len(urls))))
        parts = "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{tag}</ETag></Part>"
            for n, tag in enumerate(etags, start=1)
        )
        body = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
        r = httpx.post(complete_url, content=body, timeout=300)
    except httpx.HTTPError as e:
        raise SignedUploadError(f"cannot upload {path} in parts: {e}") from e
    # S3 may answer 200 with an error in the body (a failure found while assembling).
    if r.status_code >= 300 or b"<Error>" in r.content:
        raise SignedUploadError(
            f"cannot complete the upload at {redact(complete_url)}: HTTP {r.status_code}: "
            f"{r.text[:300]}"
        )
