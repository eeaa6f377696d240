"""The operator's control loop: observe an object's world, let ``core.decide`` decide, carry
out the actions with children, write the status.

Level-triggered, as locally: every event of one of our objects, or of a Job, Deployment or Pod
it owns, updates the operator's caches and puts the object's key on a work queue (kopf watches;
see ``kopf_handlers.py``); worker threads reconcile one key at a time, never the same key twice
at once. A reconcile holds no state of its own, so a restarted operator converges from the API
server and the bucket alone: the Job of an attempt has a deterministic name (a second create
finds it), the state of a run is in its Job and pod, a run's artifacts are committed to its own
version by the pod itself. Our objects and their children are read from the watch's caches
(with an index of dependents); the status is written through the status subresource with the
object's resourceVersion, so a decision made on a stale copy is retried, not written.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any, cast

from lightkube import ApiError, Client
from lightkube.codecs import from_dict
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Secret, Service
from lightkube.types import CascadeType, PatchType

from substratus.api.kinds import KINDS, Notebook, NotebookStatus, Resource
from substratus.api.loading import parse_object
from substratus.core.actions import Action, EnsureService, StartBuild, StartJob, StopWorkload
from substratus.core.events import notice
from substratus.core.graph import Key, dependencies
from substratus.core.naming import retains_artifacts
from substratus.core.observed import Observed, Phase
from substratus.core.reconcile import decide
from substratus.core.retry import RetryPolicy
from substratus.core.workqueue import WorkQueue
from substratus.core.world import mount_sources
from substratus.runtimes.kubernetes import (
    autoscaling,
    builds,
    events,
    jobs,
    logs,
    names,
    notebooks,
    services,
)
from substratus.runtimes.kubernetes.children import Children, slim
from substratus.runtimes.kubernetes.config import OperatorConfig
from substratus.runtimes.kubernetes.metrics import Metrics
from substratus.runtimes.kubernetes.observe import Observer, as_dict
from substratus.runtimes.kubernetes.pods import CREDENTIALS_SECRET, workload_service_account
from substratus.runtimes.kubernetes.progress import ProgressPoller
from substratus.storage import ArtifactStore

log = logging.getLogger("substratus.operator")

FINALIZER = f"{names.GROUP}/artifacts"  # deleting an object deletes its artifacts first
# The kinds this operator runs: Jobs for Models and Datasets, a Deployment for a Server and
# for a Notebook (with its home volume and token Secret).
RUN_KINDS = ("Model", "Dataset", "Notebook", "Server")
RESYNC_SECONDS = 300.0

RESOURCES = {
    kind: create_namespaced_resource(names.GROUP, "v1", kind, KINDS[kind].PLURAL)
    for kind in RUN_KINDS
}


def _key(body: dict[str, Any]) -> Key:
    return (body["kind"], body["metadata"]["namespace"], body["metadata"]["name"])


class Operator:
    def __init__(
        self, client: Client, cfg: OperatorConfig, policy: RetryPolicy | None = None
    ) -> None:
        self.client = client
        self.cfg = cfg
        self.policy = policy or RetryPolicy()
        self.store = ArtifactStore(cfg.artifact_url)
        self.uploads = ArtifactStore(cfg.artifact_url + "/.uploads")
        self.queue: WorkQueue[Key] = WorkQueue()
        self._objects: dict[Key, dict[str, Any]] = {}  # our objects, as the watch last saw them
        self._needs: dict[Key, set[Key]] = {}  # object -> the objects it references
        self._needed_by: dict[Key, set[Key]] = {}  # and back
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        # Done once, and again after each resync (in case someone deleted or changed them):
        self._credentials_applied: set[str] = set()  # namespaces with the bucket's Secret
        self._claims_made: set[Key] = set()  # Notebooks whose home claim exists
        self._tokens_made: set[Key] = set()  # autoscaled Servers whose proxy token exists
        self._pruned: dict[Key, str] = {}  # object -> the version it was pruned to
        self.children = Children()  # Jobs, Deployments, Pods: the watch's, not listed
        self.observer = Observer(client, self.store, self._cached, cfg, self.children)
        self.autoscaler = autoscaling.LoadPoller(
            client, self._servers, self.observer.service_state, self._replicas, self.queue.add
        )
        self.observer.loads = self.autoscaler.loads
        self.progress = ProgressPoller(client, self.children, self.queue.add)
        self.observer.progress = self.progress.reports
        self.metrics = Metrics()
        self.metrics.queue_depth.set_function(lambda: len(self.queue))
        for kind in RUN_KINDS:
            self.metrics.objects.labels(kind).set_function(functools.partial(self._count, kind))
        self._local = threading.local()  # per worker: did this reconcile lose a write?

    # -- events ---------------------------------------------------------------------------

    def object_event(self, kind: str, event_type: str, body: dict[str, Any]) -> None:
        body = {**slim(body), "kind": kind}
        key = _key(body)
        deleted = event_type == "DELETED"
        needs = set() if deleted else self._dependencies(body)
        with self._lock:
            old = self._objects.get(key)
            if deleted:
                self._objects.pop(key, None)
                self._claims_made.discard(key)  # a new object of this name starts afresh
                self._tokens_made.discard(key)
                self._pruned.pop(key, None)
            else:
                self._objects[key] = body
            for dep in self._needs.pop(key, set()) - needs:
                self._needed_by[dep].discard(key)
            for dep in needs:
                self._needed_by.setdefault(dep, set()).add(key)
            if needs:
                self._needs[key] = needs
        self.queue.add(key)
        if old is None or (old.get("status") or {}) != (body.get("status") or {}):
            for dependent in self.dependents(key):
                self.queue.add(dependent)

    def child_event(self, kind: str, event_type: str, body: dict[str, Any]) -> None:
        owner = self.children.event(kind, event_type, body)
        if owner is not None:
            self.queue.add(owner)

    def dependents(self, key: Key) -> list[Key]:
        """The objects that reference ``key`` (from an index kept as events arrive: one parse
        per event, not one per cached object)."""
        with self._lock:
            return sorted(self._needed_by.get(key, ()))

    @staticmethod
    def _dependencies(body: dict[str, Any]) -> set[Key]:
        try:
            return {d.key for d in dependencies(parse_object(body, "watched object"))}
        except Exception:  # an object the API server stored but we cannot read
            return set()

    # -- workers --------------------------------------------------------------------------

    def start(self) -> None:
        for i in range(self.cfg.workers):
            t = threading.Thread(target=self._work, name=f"reconcile-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        threading.Thread(target=self._resync, name="resync", daemon=True).start()
        self.autoscaler.start()
        self.progress.start()

    def stop(self) -> None:
        self.autoscaler.stop()
        self.progress.stop()
        self.queue.close()
        for t in self._threads:
            t.join(timeout=30)

    def alive(self) -> str | None:
        """None while every worker started is running; else which are not (liveness)."""
        dead = [t.name for t in self._threads if not t.is_alive()]
        return f"stopped: {', '.join(dead)}" if dead else None

    def _count(self, kind: str) -> int:
        with self._lock:
            return sum(1 for key in self._objects if key[0] == kind)

    def _work(self) -> None:
        while (key := self.queue.get()) is not None:
            kind = key[0]
            self._local.conflict = False
            started = time.monotonic()
            try:
                with logs.about(key):
                    self.reconcile(key)
                result = "conflict" if self._local.conflict else "ok"
            except Exception as e:
                with logs.about(key):
                    log.exception("reconcile failed; retrying in 5s")
                self.metrics.errors.labels(kind, type(e).__name__).inc()
                self.queue.add(key, 5.0)
                result = "error"
            finally:
                self.queue.done(key)
            self.metrics.reconciles.labels(kind, result).inc()
            self.metrics.duration.labels(kind).observe(time.monotonic() - started)

    def _resync(self) -> None:
        """A timer: every object is decided again now and then, events or not."""
        while True:
            time.sleep(RESYNC_SECONDS)
            self._credentials_applied.clear()
            self.observer.builds.forget()
            self._claims_made.clear()
            self._tokens_made.clear()
            self._pruned.clear()
            with self._lock:
                keys = list(self._objects)
            for key in keys:
                self.queue.add(key)

    # -- reconcile ------------------------------------------------------------------------

    def reconcile(self, key: Key) -> None:
        """Decide on the object as the watch last delivered it (a write made from a stale
        copy fails on its resourceVersion, and the object is decided again)."""
        kind = key[0]
        cached = self._cached(key)
        if cached is None:
            return  # deleted
        body = cached
        meta = cached["metadata"]
        if meta.get("deletionTimestamp"):
            self._finalize(kind, cached)
            return
        if KINDS[kind].HAS_ARTIFACTS and FINALIZER not in (meta.get("finalizers") or []):
            finalizers = [*(meta.get("finalizers") or []), FINALIZER]
            written = self._patch_meta(kind, cached, {"finalizers": finalizers})
            if written is None:
                return
            body = written
        obj = parse_object(body, "stored object")
        stored_token = None
        if isinstance(obj, Notebook) and isinstance(obj.status, NotebookStatus):
            # The token Secret is the token's home: a decision never mints a second one.
            stored_token = self.observer.notebook_token(obj)
            if stored_token is not None and stored_token != obj.status.token:
                known = obj.status.model_copy(update={"token": stored_token})
                obj = obj.model_copy(update={"status": known})
        obs = self.observer.observe(obj)
        decision = decide(obj, obs, self.policy)
        minted = decision.status
        # A token minted now, or one whose Secret was deleted: its Secret is (re)made.
        if isinstance(minted, NotebookStatus) and minted.token and stored_token is None:
            minted.token = self._create_token(cast(Notebook, obj), minted.token)
        obj = obj.model_copy(update={"status": decision.status})
        for action in decision.actions:
            self.act(obj, action, obs)
        status = decision.status.model_dump(mode="json", by_alias=True, exclude_none=True)
        if status != (body.get("status") or {}):
            self._write_status(kind, body, status)
        starting = any(isinstance(a, StartJob) for a in decision.actions)
        done = obs.job if obs.job is not None and obs.job.phase == Phase.SUCCEEDED else None
        if done and done.artifacts and done.generation == obj.metadata.generation and not starting:
            self._prune(obj, done.artifacts.url)  # the newest run has committed
        if starting:
            self.queue.add(key, 1.0)
        if decision.requeue_after is not None:
            self.queue.add(key, decision.requeue_after)

    def _prune(self, obj: Resource, keep_url: str) -> None:
        """Delete the object's other versions (earlier generations, failed attempts, an
        interrupted commit's leftovers) once its newest run has committed, as locally; a
        version that a workload still fetches stays until a later reconcile finds it unused."""
        ns = obj.metadata.namespace
        keep = keep_url.rstrip("/").rsplit("/", 1)[-1]
        if self._pruned.get(obj.key) == keep:
            return  # a Ready object's reconciles list nothing until the next resync
        object_url = self.store.object_url(ns, obj.PLURAL, obj.metadata.name)
        if self.store.versions(object_url) == [keep]:
            self._pruned[obj.key] = keep  # the usual case: one listing, nothing more
            return
        used = {
            url.rstrip("/").rsplit("/", 1)[-1]
            for url in self.observer.mounted_urls(ns)
            if url.startswith(object_url)
        }
        self.store.retain_only(object_url, {keep, *used})
        log.info("%s/%s: pruned its artifacts to %s", ns, obj.metadata.name, sorted({keep, *used}))
        if used <= {keep}:
            self._pruned[obj.key] = keep

    def _write_status(self, kind: str, body: dict[str, Any], status: dict[str, Any]) -> None:
        written = self._patch(RESOURCES[kind].Status, body, {"status": status})
        happened = notice(body.get("status"), status)
        if written is not None and happened is not None:
            try:  # an event is a record for people: never a reason to decide again
                self.client.create(from_dict(events.event_manifest(kind, body, happened)))
            except ApiError as e:
                log.warning("could not record the event %s: %s", happened.reason, e.status.message)

    def _patch_meta(
        self, kind: str, body: dict[str, Any], changes: dict[str, Any]
    ) -> dict[str, Any] | None:
        return self._patch(RESOURCES[kind], body, {"metadata": changes})

    def _patch(
        self, resource: Any, body: dict[str, Any], patch: dict[str, Any]
    ) -> dict[str, Any] | None:
        """A merge patch that holds only if the object is still the one decided on (its
        resourceVersion); otherwise (None) the object is decided again. The object as written
        replaces the cached copy it was made from, unless the watch has brought another."""
        meta = body["metadata"]
        patch.setdefault("metadata", {})["resourceVersion"] = meta["resourceVersion"]
        try:
            written = self.client.patch(
                resource,
                meta["name"],
                patch,
                namespace=meta["namespace"],
                patch_type=PatchType.MERGE,
                field_manager=names.FIELD_MANAGER,
            )
        except ApiError as e:
            if e.status.code not in (404, 409):
                raise
            self._local.conflict = True
            self.queue.add(_key(body), 0.2)
            return None
        new = {**slim(as_dict(written)), "kind": body["kind"]}
        key = _key(body)
        with self._lock:
            now = self._objects.get(key)
            current = (
                now is not None and now["metadata"]["resourceVersion"] == meta["resourceVersion"]
            )
            if current:
                self._objects[key] = new
        # The watch's event of this write will find the cache already holding it: the
        # dependents hear of a new status now.
        if current and (body.get("status") or {}) != (new.get("status") or {}):
            for dependent in self.dependents(key):
                self.queue.add(dependent)
        return new

    def _finalize(self, kind: str, body: dict[str, Any]) -> None:
        """Deleting: the artifacts go (unless retained), then the finalizer; the children go
        with their owner (garbage collection)."""
        meta = body["metadata"]
        finalizers = meta.get("finalizers") or []
        if FINALIZER not in finalizers:
            return
        plural = KINDS[kind].PLURAL
        if not retains_artifacts(meta.get("annotations")):
            self.store.delete(self.store.object_url(meta["namespace"], plural, meta["name"]))
        if self.cfg.build_namespace:
            self.observer.builds.delete_jobs(_key(body))
        # Uploaded build contexts are inputs, not artifacts: they go either way.
        self.uploads.delete(self.uploads.object_url(meta["namespace"], plural, meta["name"]))
        self._patch_meta(kind, body, {"finalizers": [f for f in finalizers if f != FINALIZER]})

    # -- observe --------------------------------------------------------------------------

    def _cached(self, key: Key) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get(key)

    def _servers(self) -> list[dict[str, Any]]:
        with self._lock:
            return [body for key, body in self._objects.items() if key[0] == "Server"]

    def _replicas(self, obj: Resource) -> list[str]:
        return autoscaling.replica_urls(self.children.of("Pod", obj.key), services.port(obj))

    # -- act ------------------------------------------------------------------------------

    def act(self, obj: Resource, action: Action, obs: Observed) -> None:
        if isinstance(action, StartJob):
            self._start_job(obj, action, obs)
        elif isinstance(action, EnsureService):
            self._ensure_credentials(obj.metadata.namespace)
            if isinstance(obj, Notebook) and obj.key not in self._claims_made:
                self._create(notebooks.home_claim(obj, self.cfg))
                self._claims_made.add(obj.key)
            entrypoint = self.observer.entrypoint(obj, action.image)
            mounts = mount_sources(obs.deps)
            if action.autoscaling is not None and obj.key not in self._tokens_made:
                self._create(autoscaling.token_secret(obj))  # before the pod that reads it
                self._tokens_made.add(obj.key)
            for child in services.service_children(obj, action, self.cfg, mounts, entrypoint):
                self._apply(child)
            if action.autoscaling is None:
                self._delete_proxy(obj)
        elif isinstance(action, StopWorkload) and obj.IS_JOB:
            self._delete_jobs(obj, keep=())
        elif isinstance(action, StopWorkload):
            self._delete(Deployment, services.deployment_name(obj), obj.metadata.namespace)
            self._delete_proxy(obj)
        elif isinstance(action, StartBuild):
            self.observer.builds.start(obj, action.source, self._ensure_credentials)

    def _delete_proxy(self, obj: Resource) -> None:
        """An autoscaled Server's proxy, once autoscaling is off (or the Server stopped)."""
        name = autoscaling.proxy_name(obj)
        if any(d["metadata"]["name"] == name for d in self.children.of("Deployment", obj.key)):
            self._delete(Deployment, name, obj.metadata.namespace)
            self._delete(Service, name, obj.metadata.namespace)

    def _apply(self, manifest: dict[str, Any]) -> Any:
        """Server-side apply; the object as the API server stored it."""
        applied = self.client.apply(
            from_dict(manifest), field_manager=names.FIELD_MANAGER, force=True
        )
        self.metrics.children.labels(manifest["kind"], "applied").inc()
        return applied

    def _create(self, manifest: dict[str, Any]) -> bool:
        """Create a child made once (a home claim, a token); False if it was already there."""
        try:
            self.client.create(from_dict(manifest), field_manager=names.FIELD_MANAGER)
        except ApiError as e:
            if e.status.code != 409:
                raise
            return False
        self.metrics.children.labels(manifest["kind"], "created").inc()
        return True

    def _create_token(self, obj: Notebook, token: str) -> str:
        """The token the notebook's Secret holds: ``token``, unless a Secret made since this
        reconcile read it holds another (then that one)."""
        if self._create(notebooks.token_secret(obj, token)):
            return token
        name = notebooks.token_secret_name(obj)
        data = self.client.get(Secret, name, namespace=obj.metadata.namespace).data
        return notebooks.secret_token(data) or token

    def _ensure_credentials(self, namespace: str) -> None:
        """The bucket credentials Secret in ``namespace`` (and the registry's, that builds push
        with and pods pull built images with; and the workload identity's ServiceAccount):
        applied once per namespace, and again after
        each resync (in case someone deleted it), not once per run."""
        if namespace in self._credentials_applied:
            return
        if self.cfg.credentials:
            self._apply(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": CREDENTIALS_SECRET, "namespace": namespace},
                    "stringData": dict(self.cfg.credentials),
                }
            )
        if self.cfg.registry_auth:
            self._apply(builds.registry_secret(namespace, self.cfg.registry_auth))
        if self.cfg.workload_service_account:
            self._apply(workload_service_account(namespace, self.cfg))
        self._credentials_applied.add(namespace)

    def _delete(self, resource: Any, name: str, namespace: str) -> None:
        try:
            self.client.delete(resource, name, namespace=namespace, cascade=CascadeType.BACKGROUND)
        except ApiError as e:
            if e.status.code != 404:
                raise

    def _start_job(self, obj: Resource, action: StartJob, obs: Observed) -> None:
        ns = obj.metadata.namespace
        self._ensure_credentials(ns)
        object_url = self.store.object_url(ns, obj.PLURAL, obj.metadata.name)
        entrypoint = self.observer.entrypoint(obj, action.image)
        job = jobs.job_children(
            obj, action, self.cfg, mount_sources(obs.deps), object_url, entrypoint
        )
        if self._create(job):  # else already there: this attempt was started before
            log.info("%s/%s: created Job %s", ns, obj.metadata.name, job["metadata"]["name"])
        self._delete_jobs(obj, keep=(job["metadata"]["name"],))

    def _delete_jobs(self, obj: Resource, keep: Iterable[str]) -> None:
        keep = set(keep)
        for job in self.observer.jobs(obj):
            name = job["metadata"]["name"]
            if name not in keep:
                self._delete(Job, name, obj.metadata.namespace)
