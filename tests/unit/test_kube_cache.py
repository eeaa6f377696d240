"""The operator's informer cache of its children: kept by owner, emptied by deletes, without
the managed fields nothing reads."""

from __future__ import annotations

from typing import Any

from substratus.runtimes.kubernetes import names
from substratus.runtimes.kubernetes.children import Children


def job(name: str, owner: str, ns: str = "default") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {names.LABEL_KIND: "Model"},
            "annotations": {names.ANNOTATION_OWNER: owner},
            "managedFields": [{"manager": "substratus-operator", "fieldsV1": {"f:spec": {}}}],
        },
        "status": {"active": 1},
    }


def test_children_are_kept_by_owner_without_managed_fields() -> None:
    cache = Children()
    assert cache.event("Job", "ADDED", job("m-model-g1-a1", "m")) == ("Model", "default", "m")
    assert cache.event("Job", "ADDED", job("n-model-g1-a1", "n", ns="other"))
    (kept,) = cache.of("Job", ("Model", "default", "m"))
    assert kept["status"] == {"active": 1} and "managedFields" not in kept["metadata"]
    assert [b["metadata"]["name"] for b in cache.in_namespace("Job", "other")] == ["n-model-g1-a1"]

    cache.event("Job", "DELETED", job("m-model-g1-a1", "m"))
    assert cache.of("Job", ("Model", "default", "m")) == []


def test_a_child_without_our_labels_belongs_to_nobody() -> None:
    cache = Children()
    stranger = job("x", "m")
    del stranger["metadata"]["labels"]
    assert cache.event("Job", "ADDED", stranger) is None
    assert cache.in_namespace("Job", "default") == []
