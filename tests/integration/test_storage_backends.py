"""ArtifactStore against real servers: SeaweedFS (s3://), fake-gcs-server (gs://), Azurite (az://).

Every backend runs the same cycle: commit, read_manifest, versions, fetch (and again, as a
cache), prune, delete; plus signed uploads, uncommitted versions and tampered objects.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from substratus.storage import (
    MANIFEST_NAME,
    ArtifactStore,
    StorageError,
    file_md5,
    signed,
    upload_to_signed_url,
)
from substratus.storage import store as store_module
from substratus.storage.backends import backend_for, parse_url

pytestmark = pytest.mark.integration

SCHEMES = {"s3": "s3_server", "gs": "gcs_server", "az": "azurite_server"}


@dataclass
class Backend:
    scheme: str
    server: Any
    store: ArtifactStore

    def fs_path(self, url: str) -> tuple[Any, str]:
        loc = parse_url(url)
        return backend_for(loc).filesystem(), loc.path


@pytest.fixture(params=list(SCHEMES))
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Backend:
    scheme = request.param
    server = request.getfixturevalue(SCHEMES[scheme])
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    server.create_bucket(bucket)
    return Backend(scheme, server, ArtifactStore(f"{scheme}://{bucket}/substratus"))


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _objects(fs: Any, path: str) -> list[str]:
    """Objects under ``path`` (SeaweedFS also lists empty folders: those are not objects)."""
    found = fs.find(path, detail=True)
    return sorted(k[len(path) + 1 :] for k, v in found.items() if v["type"] == "file")


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    d = tmp_path / "artifacts"
    (d / "weights").mkdir(parents=True)
    (d / "config.json").write_text('{"layers": 2}')
    (d / "weights" / "model-00001.bin").write_bytes(os.urandom(6 * 1024 * 1024 + 7))
    (d / "weights" / "model-00002.bin").write_bytes(os.urandom(100_000))
    (d / "empty").write_bytes(b"")
    (d / "name with spaces.txt").write_text("spaces")
    return d


def test_full_cycle(backend: Backend, artifacts: Path, tmp_path: Path) -> None:
    store = backend.store
    obj = store.object_url("default", "models", "m")
    sibling = store.object_url("default", "models", "m-2")
    assert store.versions(obj) == []
    assert store.read_manifest(obj + "v1/") is None
    assert store.local_path(obj) is None

    seen: list[tuple[int, int]] = []
    v1 = store.commit(artifacts, obj, "v1", progress=lambda d, t: seen.append((d, t)))
    total = sum(len(b) for b in _files(artifacts).values())
    assert v1.url == obj + "v1/"
    assert v1.manifest.total_size == total and seen[-1] == (total, total)
    assert store.read_manifest(v1.url) == v1.manifest
    assert store.versions(obj) == ["v1"]
    assert store.exists(v1.url + "weights/model-00002.bin")
    store.commit(artifacts, sibling, "v1")

    with pytest.raises(StorageError, match="already committed"):
        store.commit(artifacts, obj, "v1")

    dest = tmp_path / "fetched"
    assert store.fetch(v1.url, dest) == dest
    fetched = _files(dest)
    assert fetched.pop(MANIFEST_NAME)
    assert fetched == _files(artifacts)

    # Fetching again is a cache hit: verified files are kept, not downloaded again.
    inode = (dest / "weights" / "model-00001.bin").stat().st_ino
    (dest / "config.json").write_text('{"layers": 3}')  # a damaged cached file is replaced
    seen.clear()
    store.fetch(v1.url, dest, progress=lambda d, t: seen.append((d, t)))
    assert (dest / "weights" / "model-00001.bin").stat().st_ino == inode
    assert (dest / "config.json").read_text() == '{"layers": 2}'
    assert seen[-1] == (total, total)

    (artifacts / "config.json").write_text('{"layers": 4}')
    v2 = store.commit(artifacts, obj, "v2")
    store.put_file(artifacts / "config.json", obj + "v3/config.json")  # uncommitted leftover
    assert store.versions(obj) == ["v1", "v2"]
    store.prune(obj, "v2")
    assert store.versions(obj) == ["v2"]
    fs, path = backend.fs_path(obj)
    assert _objects(fs, path) == sorted(
        [f"v2/{f.path}" for f in v2.manifest.files] + [f"v2/{MANIFEST_NAME}"]
    )

    store.delete(obj)
    assert store.versions(obj) == []
    assert _objects(fs, path) == []
    store.delete(obj)  # absent is fine
    assert store.versions(sibling) == ["v1"]  # a name sharing the prefix is untouched


def test_uncommitted_and_tampered_versions(
    backend: Backend, artifacts: Path, tmp_path: Path
) -> None:
    store = backend.store
    obj = store.object_url("default", "datasets", "d")
    # Files without a manifest: not a version.
    store.put_file(artifacts / "config.json", obj + "v1/config.json")
    assert store.read_manifest(obj + "v1/") is None
    assert store.versions(obj) == []
    with pytest.raises(StorageError, match="not committed"):
        store.fetch(obj + "v1/", tmp_path / "x")

    # Committing over the leftovers replaces them.
    v1 = store.commit(artifacts, obj, "v1")
    fs, path = backend.fs_path(v1.url)
    fs.pipe_file(f"{path}/weights/model-00002.bin", b"tampered")
    with pytest.raises(StorageError, match="does not match the manifest"):
        store.fetch(v1.url, tmp_path / "y")
    assert not (tmp_path / "y" / "weights" / "model-00002.bin").exists()
    assert not [p for p in (tmp_path / "y").rglob("*.part-*")]  # no partial files left


def test_interrupted_commit_is_invisible(backend: Backend, artifacts: Path) -> None:
    store = backend.store
    obj = store.object_url("default", "models", "m")
    v1 = store.commit(artifacts, obj, "v1")

    def fail_midway(done: int, total: int) -> None:
        if done > total // 2:
            raise RuntimeError("connection lost")

    with pytest.raises(StorageError, match="connection lost"):
        store.commit(artifacts, obj, "v2", progress=fail_midway)
    fs, path = backend.fs_path(obj + "v2/")
    assert _objects(fs, path)  # some files made it...
    assert store.read_manifest(obj + "v2/") is None  # ...but the version is not committed
    assert store.versions(obj) == ["v1"]
    assert store.read_manifest(v1.url) == v1.manifest
    v2 = store.commit(artifacts, obj, "v2")  # a retry succeeds
    assert store.versions(obj) == ["v1", "v2"]
    assert store.read_manifest(v2.url) == v2.manifest


def test_signed_upload(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    url = store.object_url("default", "notebooks", "nb") + "uploads/ctx 1.tar.gz"
    src = tmp_path / "ctx.tar.gz"
    src.write_bytes(os.urandom(200_000))
    signed = store.signed_upload_url(url, expires_s=600)
    assert signed.startswith("http://127.0.0.1:")
    upload_to_signed_url(signed, src)
    out = tmp_path / "back"
    store.get_file(url, out)
    assert out.read_bytes() == src.read_bytes()

    if backend.scheme == "gs":
        return  # fake-gcs-server does not check signatures; the real GCS does
    marker = {"s3": "X-Amz-Signature=", "az": "sig="}[backend.scheme]
    assert marker in signed
    sig_start = signed.index(marker) + len(marker)
    flipped = "A" if signed[sig_start] != "A" else "B"
    tampered = signed[:sig_start] + flipped + signed[sig_start + 1 :]
    with pytest.raises(StorageError, match="HTTP 403"):
        upload_to_signed_url(tampered, src)
    # A signed URL is for one object only.
    other = signed.replace("ctx%201.tar.gz", "other.tar.gz").replace("ctx 1.tar.gz", "x")
    assert other != signed
    headers = {"x-ms-blob-type": "BlockBlob"}  # Azure checks headers before signatures
    assert httpx.put(other, content=b"x", headers=headers).status_code == 403


def test_signed_upload_bound_to_its_md5(backend: Backend, tmp_path: Path) -> None:
    """The URL a client gets for a context with md5 M accepts that context and nothing else:
    S3 and GCS sign Content-MD5 into the URL, and a server refuses a body whose md5 is not
    the header's (Azure cannot bind it: the build checks the stored tarball again)."""
    store = backend.store
    src = tmp_path / "ctx.tar.gz"
    src.write_bytes(os.urandom(300_000))
    md5 = file_md5(src)
    url = store.object_url("default", "models", "m") + f"{md5}.tar.gz"
    signed = store.signed_upload_url(url, expires_s=600, md5=md5)
    other = tmp_path / "other.tar.gz"
    other.write_bytes(os.urandom(300_000))
    if backend.scheme != "gs":  # fake-gcs-server checks neither signatures nor md5
        # Another file under the URL's md5 header: the body does not match it.
        with pytest.raises(StorageError, match="HTTP 400"):
            upload_to_signed_url(signed, other, md5=md5)
    if backend.scheme == "s3":
        # Another md5 header than the one signed: the signature does not match.
        with pytest.raises(StorageError, match="HTTP 403"):
            upload_to_signed_url(signed, other, md5=file_md5(other))
    sent: list[int] = []
    upload_to_signed_url(signed, src, md5=md5, progress=sent.append)
    assert sum(sent) == src.stat().st_size
    out = tmp_path / "back"
    store.get_file(url, out)
    assert file_md5(out) == md5


def test_expired_signed_url_is_refused(backend: Backend, tmp_path: Path) -> None:
    if backend.scheme == "gs":
        pytest.skip("fake-gcs-server does not check signatures or their expiry; GCS does")
    src = tmp_path / "ctx.tar.gz"
    src.write_bytes(b"context")
    url = backend.store.object_url("default", "models", "m") + "late.tar.gz"
    signed = backend.store.signed_upload_url(url, expires_s=1, md5=file_md5(src))
    time.sleep(2.5)
    with pytest.raises(StorageError, match="HTTP 403"):
        upload_to_signed_url(signed, src, md5=file_md5(src))
    assert not backend.store.exists(url)


def test_azure_large_context_goes_up_in_blocks(
    azurite_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key, value in azurite_server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(signed, "AZURE_SINGLE_PUT_BYTES", 1024 * 1024)
    monkeypatch.setattr(signed, "AZURE_BLOCK_BYTES", 256 * 1024)
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    azurite_server.create_bucket(bucket)
    store = ArtifactStore(f"az://{bucket}/substratus")
    src = tmp_path / "ctx.tar.gz"
    src.write_bytes(os.urandom(5 * 256 * 1024 + 123))  # six blocks, the last one short
    md5 = file_md5(src)
    url = store.object_url("default", "models", "m") + f"{md5}.tar.gz"
    sent: list[int] = []
    upload_to_signed_url(store.signed_upload_url(url, 600, md5), src, md5=md5, progress=sent.append)
    assert len(sent) == 6 and sum(sent) == src.stat().st_size
    out = tmp_path / "back"
    store.get_file(url, out)
    assert file_md5(out) == md5


def test_missing_bucket_is_a_clear_error(backend: Backend, artifacts: Path) -> None:
    store = ArtifactStore(f"{backend.scheme}://no-such-bucket-{uuid.uuid4().hex[:8]}/p")
    obj = store.object_url("default", "models", "m")
    with pytest.raises(StorageError, match=rf"cannot commit to {backend.scheme}://no-such-bucket"):
        store.commit(artifacts, obj, "v1")


def test_s3_generic_endpoint_variable(
    s3_server: Any, monkeypatch: pytest.MonkeyPatch, artifacts: Path
) -> None:
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)  # the all-services variable
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(bucket)
    store = ArtifactStore(f"s3://{bucket}")
    c = store.commit(artifacts, store.object_url("a", "models", "m"), "1")
    assert store.read_manifest(c.url) == c.manifest


def test_s3_large_context_goes_up_in_signed_parts(
    s3_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(store_module, "PART_BYTES", 5 * 1024 * 1024)  # S3's smallest part
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(bucket)
    store = ArtifactStore(f"s3://{bucket}/substratus")
    src = tmp_path / "ctx.tar.gz"
    src.write_bytes(os.urandom(12 * 1024 * 1024 + 5))  # three parts, the last one short
    md5 = file_md5(src)
    url = store.object_url("default", "models", "m") + f"{md5}.tar.gz"
    assert store.takes_parts(url)
    parts = store.signed_upload_parts(url, 600, src.stat().st_size)
    assert len(parts.urls) == 3 and parts.part_size == 5 * 1024 * 1024
    assert not store.exists(url)  # nothing there until the upload completes
    # A part URL is for its own part of its own upload.
    at = parts.urls[0].index("X-Amz-Signature=") + len("X-Amz-Signature=")
    tampered = parts.urls[0][:at] + ("A" if parts.urls[0][at] != "A" else "B")
    tampered += parts.urls[0][at + 1 :]
    with pytest.raises(signed.SignedUploadError, match="HTTP 403"):
        signed.upload_parts([tampered, *parts.urls[1:]], parts.part_size, parts.complete_url, src)
    short = tmp_path / "short.tar.gz"
    short.write_bytes(b"x" * 100)
    with pytest.raises(signed.SignedUploadError, match="not what the 3 signed parts are for"):
        signed.upload_parts(parts.urls, parts.part_size, parts.complete_url, short)
    sent: list[int] = []
    signed.upload_parts(parts.urls, parts.part_size, parts.complete_url, src, sent.append)
    assert sum(sent) == src.stat().st_size
    out = tmp_path / "back"
    store.get_file(url, out)
    assert file_md5(out) == md5
    assert not ArtifactStore(f"az://{bucket}/x").takes_parts(f"az://{bucket}/x/y")
