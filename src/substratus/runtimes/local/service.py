"""What the supervisor's API does: apply, get, list, watch, delete, logs, secrets.

Kept apart from HTTP so the same operations are easy to test and to reason about; the
HTTP layer in ``httpapi`` only maps requests onto these methods.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from substratus.api.kinds import Resource
from substratus.api.loading import ValidationFailed, kind_of, parse_object
from substratus.api.secrets import parse_secret
from substratus.core.admission import admission_problems
from substratus.core.graph import Key
from substratus.core.naming import retains_artifacts
from substratus.runtimes.local import processes
from substratus.runtimes.local.buildcache import prune_build_cache
from substratus.runtimes.local.commits import delete_versions, sweep_retired
from substratus.runtimes.local.controller import Controller
from substratus.runtimes.local.db import StateDB

# `logs -f` of an object whose workload has not started waits this long for it (as on a cluster).
START_WAIT_SECONDS = 120.0


class NotFound(LookupError):
    pass


class LocalService:
    def __init__(self, db: StateDB, controller: Controller):
        self.db = db
        self.ctl = controller

    # -- objects --------------------------------------------------------------------------

    def _lookup(self, key: Key) -> Resource | None:
        body = self.db.get(*key)
        return parse_object(body, "stored object") if body else None

    def apply(
        self, doc: dict[str, Any], source: str = "<request>", dry_run: bool = False
    ) -> tuple[str, dict[str, Any]]:
        """Create or update an object; returns ("created"|"configured"|"unchanged", object).
        ``dry_run``: every check, and the object as it would be stored, but nothing stored."""
        if doc.get("kind") == "Secret" and doc.get("apiVersion") == "v1":
            return self._apply_secret(doc, source, dry_run)
        obj = parse_object(doc, source)
        problems = admission_problems(obj, self._lookup)
        if problems:
            raise ValidationFailed(f"{source}: {obj.KIND}/{obj.metadata.name}", problems)
        dumped = obj.dump()
        meta_in = dumped["metadata"]
        with self.db.tx():
            existing = self.db.get(*obj.key)
            body: dict[str, Any] = {
                "apiVersion": dumped["apiVersion"],
                "kind": obj.KIND,
                "metadata": {
                    "name": meta_in["name"],
                    "namespace": meta_in["namespace"],
                    "labels": meta_in.get("labels", {}),
                    "annotations": meta_in.get("annotations", {}),
                },
                # As the user wrote it (the original project's spelling stays so in `get -o
                # yaml`); every reader parses it, and so normalises it, again.
                "spec": doc["spec"],
            }
            if existing is None:
                body["metadata"]["generation"] = 1
                body["status"] = {}
                if dry_run:
                    return "created", body
                stored = self.db.put(body, created=True)
                action = "created"
            else:
                old_meta = existing["metadata"]
                changed_spec = existing["spec"] != body["spec"]
                same_meta = (
                    old_meta.get("labels", {}) == body["metadata"]["labels"]
                    and old_meta.get("annotations", {}) == body["metadata"]["annotations"]
                )
                if not changed_spec and same_meta:
                    return "unchanged", existing
                for field in ("uid", "creationTimestamp"):
                    body["metadata"][field] = old_meta[field]
                body["metadata"]["generation"] = old_meta["generation"] + int(changed_spec)
                body["status"] = existing.get("status", {})
                if dry_run:
                    return "configured", body
                stored = self.db.put(body, created=False)
                action = "configured"
        self.ctl.enqueue(obj.key)
        self.ctl.enqueue_dependents(obj.key)
        return action, stored

    def _apply_secret(
        self, doc: dict[str, Any], source: str, dry_run: bool = False
    ) -> tuple[str, dict[str, Any]]:
        namespace, name, data = parse_secret(doc, source)
        existed = self.db.get_secret(namespace, name)
        if not dry_run:
            self.db.put_secret(namespace, name, data)
            for body in self.db.list_objects(namespace=namespace):
                self.ctl.enqueue((body["kind"], namespace, body["metadata"]["name"]))
        action = "unchanged" if existed == data else ("configured" if existed else "created")
        summary = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "keys": sorted(data),
        }
        return action, summary

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        cls = kind_of(kind)
        body = self.db.get(cls.KIND, namespace, name)
        if body is None:
            raise NotFound(f'{cls.PLURAL} "{name}" not found in namespace "{namespace}"')
        return body

    def list_objects(self, kind: str | None, namespace: str | None) -> list[dict[str, Any]]:
        return self.db.list_objects(kind_of(kind).KIND if kind else None, namespace)

    def delete(
        self, kind: str, namespace: str, name: str, retain: bool = False
    ) -> tuple[dict[str, Any], list[str]]:
        """Delete an object, its workloads and (unless retained) its artifacts. Returns the
        object and the objects whose running workloads still mount its artifacts: those
        versions stay until they stop."""
        cls = kind_of(kind)
        key = (cls.KIND, namespace, name)
        store = self.ctl.store
        object_url = store.object_url(namespace, cls.PLURAL, name)
        # Under the reconcile lock, and the object gone before its runs are stopped: a
        # reconcile can neither be half-way through starting something nor start it again.
        with self.ctl.acting:
            body = self.db.delete(*key)
            if body is None:
                raise NotFound(f'{cls.PLURAL} "{name}" not found in namespace "{namespace}"')
            self.ctl.runner.forget(key, cls.PLURAL)
            mounted = self.db.mounted_urls()
            users = sorted(
                {u for url, keys in mounted.items() if url.startswith(object_url) for u in keys}
            )
            annotations = body["metadata"].get("annotations") or {}
            retain = retains_artifacts(annotations, retain)
            if cls.HAS_ARTIFACTS and not retain:
                delete_versions(store, object_url, set(), set(mounted), self.db.retire)
                # A user that stopped between reading `mounted` and retiring swept too early.
                sweep_retired(store, self.db)
            builds = self.db.runs(role="build")
            # Holding the reconcile lock, no build starts; one in progress has cache entries
            # that no result names yet, so the cache is pruned only when none runs.
            if not any(b.phase == "running" for b in builds):
                prune_build_cache(
                    self.ctl.paths.build_cache, [b.result for b in builds if b.result]
                )
        self.ctl.uploads.delete(self.ctl.uploads.object_url(namespace, cls.PLURAL, name))
        self.ctl.enqueue_dependents(key)
        if not cls.HAS_ARTIFACTS or retain:
            return body, []
        return body, [
            f"{k.lower()}/{n}" + (f" -n {ns}" if ns != namespace else "") for k, ns, n in users
        ]

    def secrets(self, namespace: str | None) -> list[dict[str, Any]]:
        return [
            {"metadata": {"namespace": ns, "name": name}, "keys": keys}
            for ns, name, keys in self.db.list_secrets(namespace)
        ]

    def delete_secret(self, namespace: str, name: str) -> None:
        if not self.db.delete_secret(namespace, name):
            raise NotFound(f'secrets "{name}" not found in namespace "{namespace}"')

    # -- streams --------------------------------------------------------------------------

    def watch(
        self,
        kind: str | None,
        namespace: str | None,
        name: str | None,
        since: int | None,
        timeout: float,
    ) -> Iterator[dict[str, Any]]:
        """Events after resource version ``since``; with None, the current objects first.

        Bad arguments raise here, before the caller starts a streamed response."""
        want = kind_of(kind).KIND if kind else None
        if since is not None:
            self.db.events_since(since)  # raises Gone for a version older than the history
        return self._watch(want, namespace, name, since, timeout)

    def _watch(
        self,
        want: str | None,
        namespace: str | None,
        name: str | None,
        since: int | None,
        timeout: float,
    ) -> Iterator[dict[str, Any]]:
        def match(body: dict[str, Any]) -> bool:
            meta = body["metadata"]
            return (
                (want is None or body["kind"] == want)
                and (namespace is None or meta["namespace"] == namespace)
                and (name is None or meta["name"] == name)
            )

        with self.db.changed:
            rv = self.db.current_rv()
            initial = self.db.list_objects(want, namespace) if since is None else []
        if since is None:
            for body in initial:
                if match(body):
                    yield {"type": "ADDED", "object": body}
            since = rv
        deadline = time.monotonic() + timeout
        while True:
            for ev_rv, type_, body in self.db.events_since(since):
                since = ev_rv
                if match(body):
                    yield {"type": type_, "object": body}
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            with self.db.changed:
                if self.db.current_rv() == since:
                    self.db.changed.wait(min(remaining, 1.0))
            yield {"type": "BOOKMARK", "resourceVersion": str(since)}

    def log_path(self, kind: str, namespace: str, name: str) -> tuple[Path | None, bool]:
        """The newest log of an object's workload (or build) and whether it is still growing."""
        cls = kind_of(kind)
        self.get(cls.KIND, namespace, name)
        runs = self.db.runs((cls.KIND, namespace, name))
        if not runs:
            return None, False
        workload = [r for r in runs if r.role != "build"]
        run = (workload or runs)[-1]
        if run.role == "service":
            run = [r for r in workload if r.replica == 0][-1]
        return self.ctl.paths.home / run.log, run.phase == "running"

    def _log_again(self, kind: str, namespace: str, name: str) -> tuple[Path | None, bool] | None:
        """``log_path`` after a moment; None once the object is gone."""
        time.sleep(0.2)
        try:
            return self.log_path(kind, namespace, name)
        except NotFound:
            return None

    def follow_log(
        self,
        kind: str,
        namespace: str,
        name: str,
        follow: bool,
        tail: int | None,
        client_open: Callable[[], bool] = lambda: True,
    ) -> Iterator[bytes]:
        """Checks the object exists now (so errors come before any output), then streams
        until the run ends or ``client_open()`` says the client went away."""
        path, running = self.log_path(kind, namespace, name)
        return self._log_chunks(kind, namespace, name, path, running, follow, tail, client_open)

    def _log_chunks(
        self,
        kind: str,
        namespace: str,
        name: str,
        path: Path | None,
        running: bool,
        follow: bool,
        tail: int | None,
        client_open: Callable[[], bool],
    ) -> Iterator[bytes]:
        # Following an object that has not started yet waits for it, as on a cluster.
        waited_until = time.monotonic() + START_WAIT_SECONDS
        while path is None:
            if not follow or not client_open() or time.monotonic() > waited_until:
                return
            if (again := self._log_again(kind, namespace, name)) is None:
                return
            path, running = again
        if tail is not None:
            yield (processes.tail(path, lines=tail) + "\n").encode()
            offset = path.stat().st_size if path.exists() else 0
        else:
            offset = 0
        while True:
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
            if chunk:
                offset += len(chunk)
                yield chunk
            if not follow or not running or not client_open():
                return
            if (again := self._log_again(kind, namespace, name)) is None:
                return
            path2, running = again
            if path2 != path:
                return  # a new attempt started; the client follows it with a new request
