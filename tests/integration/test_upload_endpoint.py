"""The operator's own upload endpoint over real HTTP on loopback, with the client `sub` uses:
URLs it signed accept the declared md5's bytes once stored whole; a tampered, expired or
foreign URL, a wrong Content-MD5 or a body with another md5 is refused and stores nothing."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from substratus.runtimes.kubernetes.uploadserver import UploadEndpoint
from substratus.storage import (
    ArtifactStore,
    StorageError,
    file_md5,
    md5_base64,
    upload_to_signed_url,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[tuple[UploadEndpoint, ArtifactStore]]:
    store = ArtifactStore(f"file://{tmp_path}/bucket")
    ep = UploadEndpoint(store, b"k" * 32, "http://placeholder")
    port = ep.serve("127.0.0.1", 0)
    ep.public_url = f"http://127.0.0.1:{port}"
    try:
        yield ep, store
    finally:
        ep.stop()


def target(store: ArtifactStore, md5: str) -> str:
    return f"{store.base_url}/.uploads/team/models/m/{md5}.tar.gz"


def test_a_signed_url_takes_the_declared_bytes(
    endpoint: tuple[UploadEndpoint, ArtifactStore], tmp_path: Path
) -> None:
    ep, store = endpoint
    src = tmp_path / "ctx.tar.gz"
    src.write_bytes(os.urandom(3 << 20))
    md5 = file_md5(src)
    url = ep.sign(target(store, md5), 600, md5)
    sent: list[int] = []
    upload_to_signed_url(url, src, md5=md5, progress=sent.append)
    assert sum(sent) == src.stat().st_size
    out = tmp_path / "back"
    store.get_file(target(store, md5), out)
    assert file_md5(out) == md5


def test_refusals_store_nothing(
    endpoint: tuple[UploadEndpoint, ArtifactStore], tmp_path: Path
) -> None:
    ep, store = endpoint
    body = b"context bytes"
    src = tmp_path / "ctx.tar.gz"
    src.write_bytes(body)
    md5 = file_md5(src)
    url = ep.sign(target(store, md5), 600, md5)
    good = {"Content-MD5": md5_base64(md5)}
    at = url.index("sig=") + 4
    tampered = url[:at] + ("0" if url[at] != "0" else "1") + url[at + 1 :]
    assert httpx.put(tampered, content=body, headers=good).status_code == 403
    other_object = url.replace(f"{md5}.tar.gz", "other.tar.gz")
    assert httpx.put(other_object, content=body, headers=good).status_code == 403
    assert httpx.put(url, content=body).status_code == 400  # no Content-MD5
    wrong = {"Content-MD5": md5_base64("f" * 32)}
    assert httpx.put(url, content=body, headers=wrong).status_code == 400
    # The header claims the URL's md5, the body is something else.
    assert httpx.put(url, content=b"other bytes!!", headers=good).status_code == 400
    expired = ep.sign(target(store, md5), -1, md5)
    assert httpx.put(expired, content=body, headers=good).status_code == 403
    outside = ep.sign(f"{store.base_url}/team/models/m/v1/x", 600, md5)
    assert httpx.put(outside, content=body, headers=good).status_code == 403
    assert not store.exists(target(store, md5))
    with pytest.raises(StorageError, match="HTTP 403"):
        upload_to_signed_url(tampered, src, md5=md5)
    upload_to_signed_url(url, src, md5=md5)
    assert store.exists(target(store, md5))


def test_expiry_is_checked_when_the_upload_arrives(
    endpoint: tuple[UploadEndpoint, ArtifactStore], tmp_path: Path
) -> None:
    ep, store = endpoint
    src = tmp_path / "ctx.tar.gz"
    src.write_bytes(b"late")
    md5 = file_md5(src)
    url = ep.sign(target(store, md5), 1, md5)
    time.sleep(2.1)
    with pytest.raises(StorageError, match="HTTP 403"):
        upload_to_signed_url(url, src, md5=md5)
