"""What the operator observes of an object's world: its dependencies (from the operator's
cache of our objects), its newest Job and that Job's pod (a Model's or Dataset's run), its
Deployment and pods (a Server's or Notebook's replicas), all from the children's cache
(children.py); from the API server, the Secrets its env names and a Notebook's token, and a
failed container's log tail; from the bucket, a finished run's manifest."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

from lightkube import ApiError, Client
from lightkube.resources.core_v1 import PodLog, Secret

from substratus.api.kinds import JobProgress, Notebook, Resource
from substratus.core.autoscale import Load
from substratus.core.graph import Key
from substratus.core.observed import (
    Artifacts,
    BuildState,
    JobState,
    Observed,
    Phase,
    ServiceState,
    UploadState,
)
from substratus.core.uploads import observe_upload
from substratus.core.world import dependency_states, missing_secrets
from substratus.runtimes.kubernetes import autoscaling, jobs, names, notebooks, services
from substratus.runtimes.kubernetes.builder import Builder
from substratus.runtimes.kubernetes.children import Children
from substratus.runtimes.kubernetes.config import OperatorConfig
from substratus.runtimes.kubernetes.imageconfig import (
    ImageConfigError,
    ImageConfigs,
    registry_logins,
)
from substratus.runtimes.kubernetes.pods import (
    COMMIT,
    MAIN,
    CannotRun,
    fetched_urls,
    needs_entrypoint,
    params_annotation,
    workload_argv,
)
from substratus.runtimes.kubernetes.uploadserver import UploadEndpoint
from substratus.storage import ArtifactStore, StorageError

LOG_TAIL_LINES = 40
log = logging.getLogger("substratus.operator")


def as_dict(resource: Any) -> dict[str, Any]:
    return cast(dict[str, Any], resource.to_dict())


class Observer:
    def __init__(
        self,
        client: Client,
        store: ArtifactStore,
        cached: Callable[[Key], dict[str, Any] | None],
        cfg: OperatorConfig,
        children: Children,
    ) -> None:
        self.client = client
        self.store = store
        self.cached = cached
        self.cfg = cfg
        self.children = children
        # Autoscaled Servers' loads, as the operator's poller last read them from their proxies.
        self.loads: Mapping[Key, Load] = {}
        # Running jobs' reports (progress.py), as the operator's poller last read them.
        self.progress: Mapping[Key, tuple[str, JobProgress]] = {}
        self.images = ImageConfigs(
            cfg.insecure_registries, auths=registry_logins(cfg.registry_auth)
        )
        self.builds = Builder(client, cfg, children, self.images, self._log_tail)
        self.upload_endpoint: UploadEndpoint | None = None
        if cfg.upload_endpoint:
            self.upload_endpoint = UploadEndpoint(
                store, cfg.upload_key.encode(), cfg.upload_endpoint
            )

    def entrypoint(self, obj: Resource, image_name: str) -> list[str] | None:
        """The image's own command where that is what runs (``needs_entrypoint``), from its
        registry; CannotRun, naming ``spec.command``, when it cannot be read."""
        if not needs_entrypoint(obj, image_name):
            return None
        image = self.cfg.image(image_name)
        try:
            return self.images.command(image)
        except ImageConfigError as e:
            raise CannotRun(
                f"spec.command: not given, and the command of image {image!r} could not be read "
                f"from its registry ({e}); give spec.command"
            ) from None

    def _secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.client.get(Secret, name, namespace=namespace).data or {})
        except ApiError as e:
            if e.status.code == 404:
                return None
            raise

    def notebook_token(self, obj: Notebook) -> str | None:
        """The token in the Notebook's token Secret, if it has one yet."""
        data = self._secret(obj.metadata.namespace, notebooks.token_secret_name(obj))
        return notebooks.secret_token(data)

    def upload_state(self, obj: Resource) -> UploadState:
        """A bucket sends no event when an upload lands: ``decide`` asks to be called again
        soon while it waits."""

        def exists(url: str) -> bool:
            try:
                return self.store.exists(url)
            except StorageError as e:
                log.warning("%s: %s", obj.key, e)
                return False

        local = self.store.local_path(self.cfg.artifact_url) is not None  # a test's file://
        sign: Callable[[str, int, str | None], str] | None
        if self.upload_endpoint is not None:
            sign = self.upload_endpoint.sign
        else:
            sign = None if local else self.store.signed_upload_url
        parts = (
            self.store.signed_upload_parts
            if self.store.takes_parts(self.cfg.artifact_url)
            else None
        )
        if self.upload_endpoint is not None:
            parts = None  # the operator's endpoint takes one streamed PUT
        return observe_upload(obj, self.cfg.artifact_url, exists, sign, time.time(), parts)

    def observe(self, obj: Resource) -> Observed:
        upload = self.upload_state(obj)
        awaiting = obj.spec.image.upload is not None and not upload.received
        # While the context is awaited, decide looks at nothing else: no registry round trip.
        build = BuildState() if awaiting else self.builds.state(obj)
        job, pod, service = None, None, None
        if obj.IS_JOB:
            job, pod = self._latest_job(obj)
        else:
            service, pod = self._service_state(obj)
        state = self._job_state(obj, job, pod) if job is not None else None
        # The report of this run's pod, not an earlier run's.
        pod_name, report = self.progress.get(obj.key) or ("", None)
        if state is not None and pod is not None and pod_name == pod["metadata"]["name"]:
            state = dataclasses.replace(state, progress=report)
        image_error = jobs.image_error(pod)
        # The image that runs: the spec's, or the one built for it (its command is read from
        # the registry as well when the spec gives none).
        name = obj.spec.image.name or (build.image if build.phase == Phase.SUCCEEDED else None)
        if image_error is None and name is not None:
            try:
                workload_argv(obj, name, self.entrypoint(obj, name))
            except CannotRun as e:
                image_error = str(e)
        spec_error = None
        try:
            params_annotation(obj)
        except CannotRun as e:
            spec_error = str(e)
        return Observed(
            now=time.time(),
            deps=dependency_states(obj, self.cached),
            build=build,
            job=state,
            service=service,
            load=self.loads.get(obj.key),
            missing_secrets=tuple(missing_secrets(obj, self._secret)),
            image_error=image_error,
            spec_error=spec_error,
            upload=upload,
        )

    def mounted_urls(self, namespace: str) -> set[str]:
        """The committed versions that workloads in ``namespace`` fetch, or may fetch again (a
        Job still running, a Deployment's pods when they restart): not to be pruned."""
        urls: set[str] = set()
        for job in self.children.in_namespace("Job", namespace):
            if not (jobs.condition(job, "Complete") or jobs.condition(job, "Failed")):
                urls.update(fetched_urls(job["spec"]["template"]["spec"]))
        for deployment in self.children.in_namespace("Deployment", namespace):
            urls.update(fetched_urls(deployment["spec"]["template"]["spec"]))
        return urls

    def jobs(self, obj: Resource) -> list[dict[str, Any]]:
        """The object's runs (not its builds)."""
        return [
            j
            for j in self.children.of("Job", obj.key)
            if (j["metadata"].get("labels") or {}).get(names.LABEL_ROLE) == "job"
        ]

    def _latest_job(self, obj: Resource) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        def order(d: dict[str, Any]) -> tuple[int, int]:
            labels = d["metadata"].get("labels") or {}
            return int(labels.get(names.LABEL_GENERATION, 0)), int(
                labels.get(names.LABEL_ATTEMPT, 0)
            )

        found = self.jobs(obj)
        if not found:
            return None, None
        job = max(found, key=order)
        return job, self.children.newest_pod(obj.key, job["metadata"]["name"])

    def _job_state(
        self, obj: Resource, job: dict[str, Any], pod: dict[str, Any] | None
    ) -> JobState:
        version = (job["metadata"].get("annotations") or {}).get(jobs.ANNOTATION_VERSION, "")
        object_url = self.store.object_url(obj.metadata.namespace, obj.PLURAL, obj.metadata.name)
        artifacts = None
        if jobs.condition(job, "Complete") and version:
            url = self.store.version_url(object_url, version)
            try:
                manifest = self.store.read_manifest(url)
            except StorageError:
                manifest = None
            if manifest is not None:
                artifacts = Artifacts(
                    url=url,
                    files=tuple(f.path for f in manifest.files),
                    size=manifest.total_size,
                )
        ended = jobs.main_termination(pod)
        tail = ""
        if pod is not None and (ended is not None or jobs.condition(job, "Failed")):
            container = COMMIT if ended is not None and ended.get("exitCode") == 0 else MAIN
            tail = self._log_tail(pod, container)
        return jobs.job_state(job, pod, artifacts, tail)

    def _service_state(self, obj: Resource) -> tuple[ServiceState | None, dict[str, Any] | None]:
        """The Server's Deployment as decide sees it, and its newest pod (for image errors)."""
        name = services.deployment_name(obj)
        deployment = next(
            (d for d in self.children.of("Deployment", obj.key) if d["metadata"]["name"] == name),
            None,
        )
        if deployment is None:
            return None, None
        pods = [
            p
            for p in self.children.of("Pod", obj.key)
            if (p["metadata"].get("labels") or {}).get(names.LABEL_ROLE) == "service"
        ]
        pods.sort(key=lambda p: p["metadata"].get("creationTimestamp") or "")
        crashed = [
            p
            for p in pods
            for cs in (p.get("status") or {}).get("containerStatuses") or []
            if cs.get("name") == MAIN and cs.get("restartCount")
        ]
        tail = self._log_tail(crashed[-1], MAIN, previous=True) if crashed else ""
        proxy = autoscaling.proxy_ready(obj, self.children.of("Deployment", obj.key))
        state = services.service_state(obj, deployment, pods, tail, proxy)
        return state, (pods[-1] if pods else None)

    def service_state(self, obj: Resource) -> ServiceState | None:
        return self._service_state(obj)[0]

    def _log_tail(self, pod: dict[str, Any], container: str, previous: bool = False) -> str:
        """The last lines a container wrote; ``previous``: its run before the last restart
        (what a crash-looping replica said), which lightkube's ``log`` does not ask for."""
        meta = pod["metadata"]
        params = {"container": container, "tailLines": LOG_TAIL_LINES, "previous": previous}
        http = self.client._client  # lightkube's request layer: the pod log with `previous`
        try:
            request = http.prepare_request(
                "get", PodLog, name=meta["name"], namespace=meta["namespace"], params=params
            )
            response = http.send(http.build_adapter_request(request))
            http.raise_for_status(response)  # type: ignore[no-untyped-call]
            return str(response.text)
        except ApiError:
            return ""
