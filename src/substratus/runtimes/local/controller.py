"""The local control loop: observe an object's world, let the core decide, carry out actions.

One worker thread reconciles; process waiters, builds and probes only record facts in the
database and queue the object again, so decisions are never made from two threads at once.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from substratus.api.kinds import Resource, Server
from substratus.api.loading import parse_object
from substratus.core.actions import Action, EnsureService, StartBuild, StartJob, StopWorkload
from substratus.core.conditions import now_iso
from substratus.core.events import notice
from substratus.core.graph import Key, dependents
from substratus.core.images import builtin_module
from substratus.core.observed import (
    Artifacts,
    BuildState,
    JobState,
    Observed,
    Phase,
    ServiceState,
    UploadState,
)
from substratus.core.reconcile import decide
from substratus.core.retry import RetryPolicy
from substratus.core.uploads import context_url, observe_upload
from substratus.core.world import dependency_states, missing_secrets
from substratus.runtimes.local import processes
from substratus.runtimes.local.autoscaler import Autoscaler
from substratus.runtimes.local.db import Run, StateDB
from substratus.runtimes.local.engines import Engine, EngineError, detect_engine
from substratus.runtimes.local.launch import image_problem, service_url
from substratus.runtimes.local.paths import LocalPaths
from substratus.runtimes.local.ports import PortAllocator
from substratus.runtimes.local.progress import ProgressWatcher, read_progress
from substratus.runtimes.local.proxies import ROLE as ROLE_PROXY
from substratus.runtimes.local.resources import GpuPool, capacity, detect_gpus
from substratus.runtimes.local.runner import Runner
from substratus.storage import ArtifactStore

log = logging.getLogger("substratus.supervisor")

# A "stopped" run (by a restart or a spec change) maps to NONE: nothing in progress.
_PHASES = {
    "running": Phase.RUNNING,
    "committing": Phase.COMMITTING,
    "succeeded": Phase.SUCCEEDED,
    "failed": Phase.FAILED,
}


class Controller:
    def __init__(self, paths: LocalPaths, db: StateDB, policy: RetryPolicy | None = None):
        from substratus.core.workqueue import WorkQueue

        self.paths = paths
        self.db = db
        self.policy = policy or RetryPolicy()
        self.store = ArtifactStore(paths.artifact_store_url())
        self.uploads = ArtifactStore(self.store.base_url.rstrip("/") + "/.uploads")
        self.queue: WorkQueue[Key] = WorkQueue()
        self.ports = PortAllocator()
        self.gpus = GpuPool(detect_gpus())
        self._engine: Engine | None = None
        self._engine_checked = False
        self.runner = Runner(self)
        self.autoscaler = Autoscaler(self)
        self.progress = ProgressWatcher(db, self.enqueue)
        self.acting = threading.RLock()
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self.runner.recover()
        self._thread = threading.Thread(target=self._loop, name="reconcile", daemon=True)
        self._thread.start()
        self.autoscaler.start()
        self.progress.start()
        for body in self.db.list_objects():
            self.enqueue(_key(body))

    def stop(self, stop_workloads: bool = False) -> None:
        """Stop reconciling (and then every workload, if asked): in that order, so nothing
        starts after the workloads were stopped."""
        self.queue.close()
        self.autoscaler.stop()
        self.progress.stop()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if stop_workloads:
            with self.acting:
                for run in self.db.runs(phase="running"):
                    self.runner.stop_runs(run.key)

    def enqueue(self, key: Key, delay: float = 0.0) -> None:
        self.queue.add(key, delay)

    def engine(self) -> Engine | None:
        """The container engine, if one answers; EngineError when a configured one does not."""
        if not self._engine_checked:
            self._engine = detect_engine()
            self._engine_checked = True
        return self._engine

    def _loop(self) -> None:
        while (key := self.queue.get()) is not None:
            try:
                self.reconcile(key)
            except Exception:
                log.exception("reconciling %s failed; retrying in 5s", key)
                self.enqueue(key, 5.0)
            finally:
                self.queue.done(key)

    # -- reconcile ------------------------------------------------------------------------

    def reconcile(self, key: Key) -> None:
        # Deletion and shutdown take the same lock: nothing starts for an object being deleted.
        with self.acting:
            self._reconcile(key)

    def _reconcile(self, key: Key) -> None:
        body = self.db.get(*key)
        if body is None:
            return
        obj = parse_object(body, "stored object")
        obs = self.observe(obj)
        decision = decide(obj, obs, self.policy)
        # Act on the decided status: a notebook's token is minted by the decision itself.
        obj = obj.model_copy(update={"status": decision.status})
        for action in decision.actions:
            self.act(obj, action, obs)
        status = decision.status.model_dump(mode="json", by_alias=True, exclude_none=True)
        if status != body.get("status"):
            self._write_status(key, body, status)
        if any(isinstance(a, StartJob | StartBuild) for a in decision.actions):
            self.enqueue(key)  # the action changed what there is to observe
        if decision.requeue_after is not None:
            self.enqueue(key, decision.requeue_after)

    def _write_status(self, key: Key, seen: dict[str, Any], status: dict[str, Any]) -> None:
        with self.db.tx():
            fresh = self.db.get(*key)
            same = fresh is not None and fresh["metadata"].get("uid") == seen["metadata"].get("uid")
            if not same or fresh is None:
                return
            if fresh["metadata"].get("generation") != seen["metadata"].get("generation"):
                self.enqueue(key)  # the spec changed while we decided: decide again
                return
            happened = notice(fresh.get("status"), status)
            fresh["status"] = status
            self.db.put(fresh, created=False)
            if happened is not None:
                self.db.add_notice(key, happened, now_iso())
        self.enqueue_dependents(key)

    def enqueue_dependents(self, key: Key) -> None:
        objs = [parse_object(b, "stored object") for b in self.db.list_objects()]
        for obj in dependents(key, objs):
            self.enqueue(obj.key)

    def observe(self, obj: Resource) -> Observed:
        build = self._build_state(obj)
        return Observed(
            now=time.time(),
            deps=dependency_states(obj, lambda key: self.db.get(*key)),
            build=build,
            upload=self._upload_state(obj),
            job=self._job_state(obj) if obj.IS_JOB else None,
            service=None if obj.IS_JOB else self.observe_service(obj),
            load=self.autoscaler.loads.get(obj.key),
            capacity=capacity(self.gpus, self.paths.home),
            missing_secrets=tuple(missing_secrets(obj, self.db.get_secret)),
            image_error=self._image_error(obj, build),
        )

    def _image_error(self, obj: Resource, build: BuildState) -> str | None:
        if obj.spec.image.has_build:
            return None  # a finished build runs as a process or with the engine that built it
        name = obj.spec.image.name
        assert name is not None
        if builtin_module(name):
            return image_problem(name, None)
        try:
            return image_problem(name, self.engine())
        except EngineError as exc:
            return f"spec.image.name: {name!r} cannot run: {exc}"

    def _latest(self, obj: Resource, role: str) -> Run | None:
        runs = self.db.runs(obj.key, role=role)
        return runs[-1] if runs else None

    def _build_state(self, obj: Resource) -> BuildState:
        run = self._latest(obj, "build")
        if run is None or run.result is None:
            return BuildState()
        return BuildState(
            source=run.result.get("source"),
            phase=_PHASES.get(run.phase, Phase.NONE),
            image=run.result.get("ref"),
            message=run.message,
        )

    def upload_url(self, obj: Resource) -> str | None:
        upload = obj.spec.image.upload
        if upload is None:
            return None
        meta = obj.metadata
        return context_url(self.store.base_url, meta.namespace, obj.PLURAL, meta.name, upload)

    def _upload_state(self, obj: Resource) -> UploadState:
        local = self.store.local_path(self.store.base_url) is not None  # a path: not signed
        sign = None if local else self.uploads.signed_upload_url
        parts = (
            self.uploads.signed_upload_parts
            if self.uploads.takes_parts(self.store.base_url)
            else None
        )
        return observe_upload(
            obj, self.store.base_url, self.uploads.exists, sign, time.time(), parts
        )

    def _job_state(self, obj: Resource) -> JobState | None:
        run = self._latest(obj, "job")
        if run is None:
            return None
        artifacts = None
        if run.phase == "succeeded" and run.result:
            r = run.result
            artifacts = Artifacts(url=r["url"], files=tuple(r["files"]), size=int(r["size"]))
        return JobState(
            generation=run.generation,
            # A job stopped by a restart of the supervisor is started again.
            phase=_PHASES.get(run.phase, Phase.NONE),
            attempts=run.attempt,
            exit_code=run.exit_code,
            message=run.message,
            log_tail=processes.tail(self.paths.home / run.log) if run.phase == "failed" else "",
            finished_at=run.finished_at,
            artifacts=artifacts,
            progress=read_progress(run.workdir) if run.phase in ("running", "committing") else None,
        )

    def observe_service(self, obj: Resource) -> ServiceState | None:
        runs = self.db.runs(obj.key, role="service")
        autoscaled = isinstance(obj, Server) and obj.spec.autoscaling is not None
        proxy = self.runner.proxies.url(obj) if autoscaled else None
        if not runs:
            if proxy is None:
                return None
            gen = obj.metadata.generation or 0
            return ServiceState(gen, "", wanted=self.runner.wanted.get(obj.key), proxy_url=proxy)
        gen = max(r.generation for r in runs)
        runs = [r for r in runs if r.generation == gen]
        running = [r for r in runs if r.phase == "running"]
        ready = [r for r in running if self.runner.readiness.is_ready(r.id)]
        failed = [r for r in runs if r.phase == "failed"]
        last = failed[-1] if failed else None
        newest = runs[-1]
        return ServiceState(
            generation=gen,
            image=runs[-1].image,
            replicas=len(running),
            ready_replicas=len(ready),
            restarts=len(failed),
            last_exit_code=last.exit_code if last else None,
            log_tail=processes.tail(self.paths.home / last.log) if last else "",
            url=service_url(ready[0].port) if ready and ready[0].port is not None else None,
            start_error=newest.message if newest.phase == "failed" and newest.pid is None else "",
            loading=len(running) - len(ready),
            # After a restart of the supervisor: what runs is what was asked for.
            wanted=self.runner.wanted.get(obj.key, len(running)) if autoscaled else None,
            proxy_url=proxy,
        )

    def act(self, obj: Resource, action: Action, obs: Observed) -> None:
        if isinstance(action, StartBuild):
            self.runner.start_build(obj, action.source)
        elif isinstance(action, StartJob):
            self.runner.start_job(obj, action, obs)
        elif isinstance(action, EnsureService):
            self.runner.ensure_service(obj, action, obs)
        elif isinstance(action, StopWorkload):
            self.runner.stop_runs(obj.key, roles=("job", "service", ROLE_PROXY))


def _key(body: dict[str, Any]) -> Key:
    return (body["kind"], body["metadata"]["namespace"], body["metadata"]["name"])
