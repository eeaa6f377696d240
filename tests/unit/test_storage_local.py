"""ArtifactStore on file:// URLs: commit, read, fetch, versions, prune, delete."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from substratus.storage import (
    MANIFEST_NAME,
    ArtifactStore,
    StorageError,
    build_manifest,
    upload_to_signed_url,
)


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    d = tmp_path / "artifacts"
    (d / "weights").mkdir(parents=True)
    (d / "config.json").write_text('{"layers": 2}')
    (d / "weights" / "model.bin").write_bytes(os.urandom(300_000))
    (d / "weights" / "empty").write_bytes(b"")
    return d


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(f"file://{tmp_path / 'store'}")


def test_urls(tmp_path: Path) -> None:
    s = ArtifactStore(str(tmp_path / "plain"))  # a plain path is file://
    assert s.base_url == f"file://{tmp_path / 'plain'}"
    assert s.object_url("default", "models", "m") == f"file://{tmp_path}/plain/default/models/m/"
    assert ArtifactStore("s3://bucket/prefix/").object_url("ns", "datasets", "d") == (
        "s3://bucket/prefix/ns/datasets/d/"
    )
    assert ArtifactStore("gs://b").object_url("a", "b", "c") == "gs://b/a/b/c/"
    assert ArtifactStore("az://c/p").object_url("a", "b", "c") == "az://c/p/a/b/c/"
    assert s.local_path(s.object_url("a", "b", "c")) == tmp_path / "plain" / "a" / "b" / "c"
    assert s.local_path("s3://bucket/x") is None
    with pytest.raises(StorageError, match="namespace"):
        s.object_url("a/b", "models", "m")
    with pytest.raises(StorageError, match="ftp://"):
        ArtifactStore("ftp://host/x")
    with pytest.raises(StorageError, match="no bucket"):
        ArtifactStore("s3://")


def test_commit_read_fetch_cycle(store: ArtifactStore, artifacts: Path, tmp_path: Path) -> None:
    obj = store.object_url("default", "models", "m")
    assert store.versions(obj) == []
    seen: list[tuple[int, int]] = []
    c = store.commit(artifacts, obj, "v1", progress=lambda d, t: seen.append((d, t)))
    assert c.url == obj + "v1/"
    total = 300_000 + len('{"layers": 2}')
    assert c.manifest.total_size == total
    assert seen[0] == (0, total) and seen[-1] == (total, total)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert c.manifest.files == build_manifest(artifacts).files
    assert _files(artifacts)  # copied, not moved

    assert store.read_manifest(c.url) == c.manifest
    assert store.versions(obj) == ["v1"]
    local = store.fetch(c.url, tmp_path / "unused")
    assert local == store.local_path(c.url)  # no copy for file://
    assert not (tmp_path / "unused").exists()
    fetched = _files(local)
    assert fetched.pop(MANIFEST_NAME)
    assert fetched == _files(artifacts)

    store.commit(artifacts, obj, "v2")
    assert store.versions(obj) == ["v1", "v2"]
    store.prune(obj, "v2")
    assert store.versions(obj) == ["v2"]
    assert sorted(os.listdir(store.local_path(obj))) == ["v2"]
    store.delete(obj)
    assert store.versions(obj) == []
    assert not store.exists(obj)
    store.delete(obj)  # absent is fine


def test_committed_version_is_never_modified(store: ArtifactStore, artifacts: Path) -> None:
    obj = store.object_url("default", "models", "m")
    first = store.commit(artifacts, obj, "v1")
    (artifacts / "config.json").write_text("changed")
    with pytest.raises(StorageError, match="already committed"):
        store.commit(artifacts, obj, "v1")
    assert store.read_manifest(first.url) == first.manifest
    root = store.local_path(first.url)
    assert root is not None
    assert (root / "config.json").read_text() == '{"layers": 2}'


def test_interrupted_commit_is_invisible(store: ArtifactStore, artifacts: Path) -> None:
    obj = store.object_url("default", "models", "m")
    v1 = store.commit(artifacts, obj, "v1")

    def fail_midway(done: int, total: int) -> None:
        if done > total // 2:
            raise KeyboardInterrupt  # even a non-Exception leaves no committed version

    with pytest.raises(KeyboardInterrupt):
        store.commit(artifacts, obj, "v2", progress=fail_midway)
    leftover = store.local_path(obj + "v2/")
    assert leftover is not None and leftover.is_dir()  # some files were written...
    assert store.read_manifest(obj + "v2/") is None  # ...but nothing is committed
    assert store.versions(obj) == ["v1"]
    with pytest.raises(StorageError, match="not committed"):
        store.fetch(obj + "v2/", leftover)
    assert store.read_manifest(v1.url) == v1.manifest  # the previous version is intact

    (leftover / "stale-from-crash").write_text("x")
    v2 = store.commit(artifacts, obj, "v2")  # a retry replaces the leftovers
    root = store.local_path(v2.url)
    assert root is not None
    assert not (root / "stale-from-crash").exists()
    assert store.versions(obj) == ["v1", "v2"]


def test_file_vanishing_mid_commit_fails_it(store: ArtifactStore, artifacts: Path) -> None:
    obj = store.object_url("default", "models", "m")
    victim = artifacts / "weights" / "model.bin"  # copied after config.json

    def delete_victim(done: int, total: int) -> None:
        if done:
            victim.unlink(missing_ok=True)

    with pytest.raises(StorageError, match=r"cannot commit to file://.*/v1/: not found"):
        store.commit(artifacts, obj, "v1", progress=delete_victim)
    assert store.read_manifest(obj + "v1/") is None
    assert store.versions(obj) == []


def test_commit_refuses_overlapping_directories(store: ArtifactStore, artifacts: Path) -> None:
    obj = store.object_url("default", "models", "m")
    inside = store.local_path(obj + "v1/")
    assert inside is not None
    (inside / "sub").mkdir(parents=True)
    (inside / "sub" / "f").write_text("x")
    with pytest.raises(StorageError, match="overlap"):
        store.commit(inside / "sub", obj, "v1")
    assert (inside / "sub" / "f").read_text() == "x"  # nothing was deleted


def test_move_renames_files(store: ArtifactStore, artifacts: Path) -> None:
    obj = store.object_url("default", "models", "m")
    before = _files(artifacts)
    inode = (artifacts / "weights" / "model.bin").stat().st_ino
    c = store.commit(artifacts, obj, "v1", move=True)
    assert _files(artifacts) == {}  # gone from the source
    root = store.local_path(c.url)
    assert root is not None
    assert (root / "weights" / "model.bin").stat().st_ino == inode  # renamed, not copied
    after = _files(root)
    after.pop(MANIFEST_NAME)
    assert after == before
    assert store.fetch(c.url, root) == root


def test_failed_move_gives_files_back(store: ArtifactStore, artifacts: Path) -> None:
    obj = store.object_url("default", "models", "m")
    before = _files(artifacts)

    def fail_at_end(done: int, total: int) -> None:
        if done == total and total:
            raise RuntimeError("disk on fire")

    with pytest.raises(StorageError, match="disk on fire"):
        store.commit(artifacts, obj, "v1", move=True, progress=fail_at_end)
    assert _files(artifacts) == before
    assert store.read_manifest(obj + "v1/") is None


def test_fetch_detects_a_damaged_local_version(store: ArtifactStore, artifacts: Path) -> None:
    obj = store.object_url("default", "models", "m")
    c = store.commit(artifacts, obj, "v1")
    root = store.local_path(c.url)
    assert root is not None
    (root / "weights" / "model.bin").write_bytes(b"short")
    with pytest.raises(StorageError, match="damaged"):
        store.fetch(c.url, root)


def test_corrupt_manifest_is_an_error(store: ArtifactStore, artifacts: Path) -> None:
    obj = store.object_url("default", "models", "m")
    c = store.commit(artifacts, obj, "v1")
    root = store.local_path(c.url)
    assert root is not None
    (root / MANIFEST_NAME).unlink()
    (root / MANIFEST_NAME).write_text('{"created": "x", "files": [{"path": "../../etc/passwd"}]}')
    with pytest.raises(StorageError, match="invalid manifest"):
        store.read_manifest(c.url)


def test_versions_are_committed_only_in_natural_order(
    store: ArtifactStore, artifacts: Path
) -> None:
    obj = store.object_url("default", "models", "m")
    for v in ("v10", "v2", "v1"):
        store.commit(artifacts, obj, v)
    root = store.local_path(obj)
    assert root is not None
    (root / "v3").mkdir()  # uncommitted
    (root / "stray-file").write_text("x")
    assert store.versions(obj) == ["v1", "v2", "v10"]
    with pytest.raises(StorageError, match="not committed"):
        store.prune(obj, "v3")  # never prune down to nothing by mistake
    store.prune(obj, "v2")
    assert sorted(os.listdir(root)) == ["v2"]


def test_delete_is_exact(store: ArtifactStore, artifacts: Path) -> None:
    a = store.object_url("default", "models", "foo")
    b = store.object_url("default", "models", "foo-bar")
    store.commit(artifacts, a, "v1")
    store.commit(artifacts, b, "v1")
    store.delete(a)
    assert store.versions(a) == []
    assert store.versions(b) == ["v1"]
    with pytest.raises(StorageError, match="whole bucket"):
        store.delete("file:///")


def test_single_files_and_signed_urls(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "ctx.tar.gz"
    src.write_bytes(b"tarball")
    url = store.object_url("default", "notebooks", "nb") + "uploads/ctx.tar.gz"
    assert not store.exists(url)
    signed = store.signed_upload_url(url)
    assert signed == url  # file:// stores sign nothing
    upload_to_signed_url(signed, src)
    assert store.exists(url)
    out = tmp_path / "out" / "copy"
    store.get_file(url, out)
    assert out.read_bytes() == b"tarball"
    src.write_bytes(b"v2")
    store.put_file(src, url)
    store.get_file(url, out)
    assert out.read_bytes() == b"v2"
    target = store.local_path(url)
    assert target is not None
    assert [p.name for p in target.parent.iterdir()] == ["ctx.tar.gz"]  # no temp files left
    with pytest.raises(StorageError, match="not found"):
        store.get_file(url + ".missing", out)
    with pytest.raises(StorageError, match="not a file"):
        upload_to_signed_url(signed, tmp_path / "nope")
    with pytest.raises(StorageError, match="not an http"):
        upload_to_signed_url("ftp://x/y", src)


@pytest.mark.parametrize(("scheme", "module", "extra"), [
    ("s3", "s3fs", "s3"),
    ("gs", "gcsfs", "gcs"),
    ("az", "adlfs", "azure"),
])  # fmt: skip
def test_missing_extra_names_it(
    monkeypatch: pytest.MonkeyPatch, scheme: str, module: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "AccountName=x;AccountKey=eA==")
    s = ArtifactStore(f"{scheme}://bucket/prefix")
    with pytest.raises(StorageError, match=rf"pip install 'substratus\[{extra}\]'"):
        s.read_manifest(s.object_url("a", "b", "c") + "v1/")
