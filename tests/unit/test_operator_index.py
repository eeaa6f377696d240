"""The operator's dependents index: an event of an object queues the objects that reference it,
kept as events arrive (a change of reference, a delete), with no API server involved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from substratus.runtimes.kubernetes.config import OperatorConfig
from substratus.runtimes.kubernetes.operator import Operator


def body(kind: str, name: str, spec: dict[str, Any], status: dict[str, Any] | None = None) -> Any:
    return {
        "apiVersion": "substratus.ai/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "ns", "uid": name, "generation": 1},
        "spec": spec,
        "status": status or {},
    }


def drain(op: Operator) -> list[Any]:
    out = []
    while len(op.queue):
        key = op.queue.get()
        out.append(key)
        op.queue.done(key)
    return out


def test_status_changes_queue_the_dependents(tmp_path: Path) -> None:
    cfg = OperatorConfig(artifact_url=f"file://{tmp_path}", helper_image="h")
    op = Operator(None, cfg)  # type: ignore[arg-type]  # the index needs no client
    img = {"image": {"name": "busybox"}, "command": ["true"]}
    op.object_event("Model", "ADDED", body("Model", "base", img))
    op.object_event("Server", "ADDED", body("Server", "s", {**img, "model": {"name": "base"}}))
    tuned = {**img, "baseModel": {"name": "base"}}
    op.object_event("Model", "ADDED", body("Model", "tuned", tuned))
    drain(op)
    assert op.dependents(("Model", "ns", "base")) == [
        ("Model", "ns", "tuned"),
        ("Server", "ns", "s"),
    ]
    op.object_event("Model", "MODIFIED", body("Model", "base", img, {"ready": True}))
    assert sorted(drain(op)) == [
        ("Model", "ns", "base"),
        ("Model", "ns", "tuned"),
        ("Server", "ns", "s"),
    ]
    # The server now serves another model; the tuned model is deleted.
    op.object_event("Server", "MODIFIED", body("Server", "s", {**img, "model": {"name": "other"}}))
    op.object_event("Model", "DELETED", body("Model", "tuned", tuned))
    assert op.dependents(("Model", "ns", "base")) == []
    assert op.dependents(("Model", "ns", "other")) == [("Server", "ns", "s")]
