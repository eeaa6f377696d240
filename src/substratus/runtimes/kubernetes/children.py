"""The children the operator made (Jobs, Deployments, their Pods), as the watch last saw them.

An informer's cache: kopf's watches deliver every event of a child carrying our labels, and a
reconcile reads a run's state from here instead of listing the API server each time (with
thousands of objects, those lists were most of the operator's work). A cache may lag behind
the server; nothing decided from it can do harm: a Job's name is fixed by its generation and
attempt (a create that finds one is a no-op), and a status written from a stale view is
corrected by the event that follows.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from substratus.runtimes.kubernetes import names

CHILD_KINDS = ("Job", "Deployment", "Pod")

Owner = tuple[str, str, str]  # (kind, namespace, name) of the object that made the child


def owner_of(body: Mapping[str, Any]) -> Owner | None:
    meta = body.get("metadata") or {}
    kind = (meta.get("labels") or {}).get(names.LABEL_KIND)
    name = (meta.get("annotations") or {}).get(names.ANNOTATION_OWNER)
    if not kind or not name:
        return None
    namespace = (meta.get("annotations") or {}).get(names.ANNOTATION_OWNER_NAMESPACE)
    return (str(kind), str(namespace or meta.get("namespace")), str(name))


def slim(body: Mapping[str, Any]) -> dict[str, Any]:
    """A body to keep in a cache: without ``metadata.managedFields`` (who wrote which field;
    nothing here reads it, and with thousands of objects it is much of the cache's memory)."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    return {**body, "metadata": meta}


class Children:
    """Thread-safe: kopf's event loop writes, the reconcile workers read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # child kind -> owner -> child name -> body
        self._by_owner: dict[str, dict[Owner, dict[str, dict[str, Any]]]] = {
            k: {} for k in CHILD_KINDS
        }

    def event(self, kind: str, event_type: str, body: dict[str, Any]) -> Owner | None:
        """Record one watch event; the owner it belongs to, if any."""
        owner = owner_of(body)
        if owner is None:
            return None
        name = body["metadata"]["name"]
        with self._lock:
            mine = self._by_owner[kind].setdefault(owner, {})
            if event_type == "DELETED":
                mine.pop(name, None)
                if not mine:
                    del self._by_owner[kind][owner]
            else:
                mine[name] = slim(body)
        return owner

    def of(self, kind: str, owner: Owner) -> list[dict[str, Any]]:
        """The owner's children of ``kind`` (Pods: of all its Jobs or Deployments)."""
        with self._lock:
            return list(self._by_owner[kind].get(owner, {}).values())

    def newest_pod(self, owner: Owner, job_name: str) -> dict[str, Any] | None:
        """The newest pod of the owner's Job ``job_name`` (a run, or a build)."""
        pods = [
            p
            for p in self.of("Pod", owner)
            if (p["metadata"].get("labels") or {}).get("job-name") == job_name
        ]
        pods.sort(key=lambda p: p["metadata"].get("creationTimestamp") or "")
        return pods[-1] if pods else None

    def in_namespace(self, kind: str, namespace: str) -> list[dict[str, Any]]:
        with self._lock:
            return [
                body
                for owner, bodies in self._by_owner[kind].items()
                if owner[1] == namespace
                for body in bodies.values()
            ]

    def running_job_pods(self) -> list[tuple[Owner, dict[str, Any]]]:
        """Pods of runs (not builds) whose workload is running: those with progress to read."""
        with self._lock:
            return [
                (owner, body)
                for owner, bodies in self._by_owner["Pod"].items()
                for body in bodies.values()
                if (body["metadata"].get("labels") or {}).get(names.LABEL_ROLE) == "job"
                and (body.get("status") or {}).get("phase") == "Running"
                and not body["metadata"].get("deletionTimestamp")
            ]
