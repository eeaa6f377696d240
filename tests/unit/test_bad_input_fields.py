"""Bad field values: names with a final newline, unbounded numbers, upload identifiers used as
paths, oversized labels, annotations and objects, Secrets Kubernetes would refuse, and the
state database's file modes."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from substratus.api import ValidationFailed, parse_object
from substratus.api.limits import MAX_ANNOTATIONS_BYTES, MAX_OBJECT_BYTES
from substratus.api.secrets import parse_secret
from substratus.runtimes.local.db import StateDB
from tests.unit.test_api_validation import server

MD5 = "d41d8cd98f00b204e9800998ecf8427e"


def problems(doc: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationFailed) as info:
        parse_object(doc, "t.yaml")
    return info.value.problems


def with_meta(**meta: Any) -> dict[str, Any]:
    doc = server()
    doc["metadata"].update(meta)
    return doc


# --- names and keys ending in a newline (`$` matches before one) ----------------------------------


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        (with_meta(name="s\n"), "metadata.name"),
        (with_meta(namespace="default\n"), "metadata.namespace"),
        (server(env={"TOKEN\n": "x"}), "spec.env"),
        (server(params={"epochs\n": 1}), "spec.params"),
        (with_meta(labels={"app\n": "x"}), "metadata.labels"),
        (with_meta(labels={"app": "x\n"}), "metadata.labels"),
    ],
)
def test_final_newline_is_refused(doc: dict[str, Any], path: str) -> None:
    ((where, reason),) = problems(doc)
    assert where == path and "\\n" in reason


# --- numbers bounded by what a machine has -------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "path", "reason"),
    [
        ({"resources": {"cpu": float("inf")}}, "spec.resources.cpu", "must be a finite number"),
        ({"resources": {"cpu": float("nan")}}, "spec.resources.cpu", "must be a finite number"),
        ({"resources": {"cpu": 1e308}}, "spec.resources.cpu", "less than or equal to 1024"),
        ({"resources": {"cpu": 1025}}, "spec.resources.cpu", "less than or equal to 1024"),
        ({"resources": {"memory": float("inf")}}, "spec.resources.memory", "finite"),
        ({"resources": {"memory": 1e308}}, "spec.resources.memory", "less than or equal to 65536"),
        ({"resources": {"disk": 1e308}}, "spec.resources.disk", "less than or equal to 1048576"),
        ({"resources": {"gpu": {"count": 65}}}, "spec.resources.gpu.count", "or equal to 64"),
        ({"resources": {"gpu": {"count": 1e308}}}, "spec.resources.gpu.count", "too large"),
        ({"replicas": 10**9}, "spec.replicas", "less than or equal to 1024"),
        ({"params": {"lr": float("inf")}}, "spec.params", "must be a finite number"),
    ],
)
def test_numbers_are_bounded_and_named(spec: dict[str, Any], path: str, reason: str) -> None:
    ((where, why),) = problems(server(**spec))
    assert where == path and reason in why, why


def test_numbers_at_the_bounds_are_fine() -> None:
    resources = {"cpu": 1024, "memory": 65536, "disk": 1048576, "gpu": {"count": 64}}
    obj = parse_object(server(resources=resources, replicas=1024))
    assert obj.spec.resources.cpu == 1024


# --- upload identifiers are used in file paths ---------------------------------------------------


@pytest.mark.parametrize(
    ("upload", "path"),
    [
        ({"requestId": "../../../tmp/x", "md5": MD5}, "spec.image.upload.requestId"),
        ({"requestId": "..", "md5": MD5}, "spec.image.upload.requestId"),
        ({"requestId": "a/b", "md5": MD5}, "spec.image.upload.requestId"),
        ({"requestId": "r\n", "md5": MD5}, "spec.image.upload.requestId"),
        ({"requestId": "r" * 64, "md5": MD5}, "spec.image.upload.requestId"),
        ({"requestId": "r", "md5": "../x"}, "spec.image.upload.md5"),
        ({"requestId": "r", "md5": MD5.upper()}, "spec.image.upload.md5"),
        ({"requestId": "r", "md5": MD5 + "\n"}, "spec.image.upload.md5"),
    ],
)
def test_upload_request_id_and_md5_are_safe_tokens(upload: dict[str, str], path: str) -> None:
    ((where, _),) = problems(server(image={"upload": upload}))
    assert where == path


def test_valid_upload_identifiers() -> None:
    obj = parse_object(server(image={"upload": {"requestId": "d41d8cd9.f0-0_b", "md5": MD5}}))
    assert obj.spec.image.upload is not None and obj.spec.image.upload.md5 == MD5


# --- labels, annotations, object size ------------------------------------------------------------


@pytest.mark.parametrize(
    "labels",
    [
        {"app": "x" * 64},
        {"app": "x" * 10 * 1024 * 1024},
        {"k" * 64: "x"},
        {"a/b/c": "x"},
        {"Bad_Prefix/app": "x"},
        {"app": "-x"},
        {"": "x"},
    ],
)
def test_labels_follow_kubernetes(labels: dict[str, str]) -> None:
    ((where, _),) = problems(with_meta(labels=labels))
    # A 10 MB value is refused by the object's size before its syntax is looked at.
    assert where in ("metadata.labels", "")


def test_valid_labels_and_annotations() -> None:
    labels = {"app": "x" * 63, "example.com/tier": "web", "empty": "", "a.b_c-d": "1.2_3-4"}
    notes = {"example.com/note": "free text\nwith newlines " * 100}
    obj = parse_object(with_meta(labels=labels, annotations=notes))
    assert obj.metadata.labels == labels


def test_annotations_are_capped_in_total() -> None:
    notes = {f"n{i}": "x" * (MAX_ANNOTATIONS_BYTES // 4) for i in range(5)}
    ((where, reason),) = problems(with_meta(annotations=notes))
    assert where == "metadata.annotations" and "more than the limit of 262144" in reason


def test_objects_are_capped_at_one_and_a_half_mebibytes() -> None:
    doc = server(command=["x" * MAX_OBJECT_BYTES])
    ((where, reason),) = problems(doc)
    assert where == "" and f"more than the limit of {MAX_OBJECT_BYTES}" in reason
    # What the system writes into status does not count.
    doc = server()
    doc["status"] = {"conditions": [{"type": "x", "status": "True", "message": "y" * 2**21}]}
    assert parse_object(doc).metadata.name == "s"


# --- Secrets as Kubernetes validates them --------------------------------------------------------


def secret(name: Any = "hf", **fields: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, **fields}


def secret_problems(doc: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationFailed) as info:
        parse_secret(doc, "t.yaml")
    return info.value.problems


@pytest.mark.parametrize("name", ["Bad/../Name", "a/b", "..", "UPPER", "hf\n", "x" * 254, "-a"])
def test_secret_names_are_dns_subdomains(name: str) -> None:
    assert [p for p, _ in secret_problems(secret(name))] == ["metadata.name"]


def test_secret_namespace_keys_and_values() -> None:
    doc = secret(stringData={"../k": "v", "ok": 1, ".": "v"}, data={"b": "not base64!"})
    doc["metadata"]["namespace"] = "Other/ns"
    found = secret_problems(doc)
    assert [p for p, _ in found] == [
        "metadata.namespace",
        "data.b",
        "stringData",
        "stringData.ok",
        "stringData",
    ]
    assert "must be a string" in dict(found)["stringData.ok"]


def test_secret_data_is_capped() -> None:
    doc = secret(stringData={f"k{i}": "x" * 300_000 for i in range(4)})
    assert [p for p, _ in secret_problems(doc)] == ["data"]


def test_valid_secret() -> None:
    doc = secret("hf.token-1", data={"a": "aGk="}, stringData={"b.c_d-e": "v"})
    assert parse_secret(doc, "t") == ("default", "hf.token-1", {"a": "hi", "b.c_d-e": "v"})


# --- the state database and its WAL hold secrets: user-only ---------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_state_db_wal_and_shm_are_user_only(tmp_path: Path, umask_022: None) -> None:
    db = StateDB(tmp_path / "state.db")
    try:
        db.put_secret("default", "hf", {"token": "s3cr3t"})
        files = sorted(p.name for p in tmp_path.iterdir())
        assert files == ["state.db", "state.db-shm", "state.db-wal"]
        for p in tmp_path.iterdir():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p.name
    finally:
        db.close()


def test_state_db_tightens_sidecars_left_by_older_versions(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "state.db"
    # As earlier versions left them: WAL files with content, made while the database was 0644.
    old = sqlite3.connect(path, isolation_level=None)
    try:
        old.execute("PRAGMA journal_mode=WAL")
        old.execute("CREATE TABLE t (x)")
        old.execute("INSERT INTO t VALUES ('s3cr3t')")
        sidecars = [tmp_path / "state.db-wal", tmp_path / "state.db-shm"]
        assert {stat.S_IMODE(p.stat().st_mode) for p in sidecars} == {0o644}
        StateDB(path).close()
        for p in sidecars:
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p.name
    finally:
        old.close()
