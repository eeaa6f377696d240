"""The operator's side of image builds: what ``decide`` sees of one (``state``) and starting one
(``start``). The Job itself is :mod:`builds`.

A build is looked for in this order: the Job for the spec's build source (its result pins the
image, even when a branch moves on later); else the registry, for the tag that names the same
input (the upload's md5, the git commit), so the same context is never built twice; else
there is none and ``decide`` starts one.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from lightkube import ApiError, Client
from lightkube.codecs import from_dict
from lightkube.resources.batch_v1 import Job
from lightkube.types import CascadeType

from substratus.api.common import GitSource
from substratus.api.kinds import Resource
from substratus.core.graph import Key
from substratus.core.observed import BuildState, Phase
from substratus.core.reconcile import build_source
from substratus.core.redaction import redact_userinfo
from substratus.core.uploads import context_url
from substratus.runtimes.kubernetes import builds, jobs, names
from substratus.runtimes.kubernetes.children import Children
from substratus.runtimes.kubernetes.config import OperatorConfig
from substratus.runtimes.kubernetes.imageconfig import ImageConfigError, ImageConfigs

log = logging.getLogger("substratus.operator")

LS_REMOTE_SECONDS = 60.0  # how long a resolved branch or tag is trusted
LS_REMOTE_TIMEOUT = 30.0

LogTail = Callable[[dict[str, Any], str], str]


class Builder:
    def __init__(
        self,
        client: Client,
        cfg: OperatorConfig,
        children: Children,
        images: ImageConfigs,
        log_tail: LogTail,
    ) -> None:
        self.client = client
        self.cfg = cfg
        self.children = children
        self.images = images
        self.log_tail = log_tail
        self._commits: dict[tuple[str, str], tuple[float, str | None]] = {}
        self._prepared: set[str] = set()  # namespaces with the builds' account and Secret
        self._lock = threading.Lock()

    def forget(self) -> None:
        """At a resync: make the namespaces' ServiceAccount and Secret again when next needed
        (someone may have deleted them)."""
        with self._lock:
            self._prepared.clear()
            self._commits.clear()

    # -- observe --------------------------------------------------------------------------

    def jobs(self, key: Key) -> list[dict[str, Any]]:
        """The build Jobs of the object ``key`` (in its namespace or the builds namespace)."""
        return [
            j
            for j in self.children.of("Job", key)
            if (j["metadata"].get("labels") or {}).get(names.LABEL_ROLE) == builds.ROLE
        ]

    def state(self, obj: Resource) -> BuildState:
        source = build_source(obj)
        if source is None:
            return BuildState()
        field = "git" if obj.spec.image.git is not None else "upload"
        if not self.cfg.registry:
            return BuildState(
                source,
                Phase.FAILED,
                message=f"spec.image.{field}: the operator has no registry to push built "
                "images to (set SUBSTRATUS_REGISTRY)",
            )
        wanted = builds.source_hash(source)
        job = next(
            (
                j
                for j in self.jobs(obj.key)
                if (j["metadata"].get("labels") or {}).get(builds.LABEL_SOURCE) == wanted
            ),
            None,
        )
        if job is not None:
            return self._job_state(obj, source, job)
        image, _ = self.target(obj, source)
        try:
            digest = self.images.digest(image)
        except ImageConfigError as e:
            log.warning("%s: cannot ask the registry for %s: %s", obj.key, image, e)
            digest = None
        if digest is not None:  # built before, from the same input
            return BuildState(source, Phase.SUCCEEDED, image=_pinned(image, digest))
        return BuildState(source, Phase.NONE)

    def _job_state(self, obj: Resource, source: str, job: dict[str, Any]) -> BuildState:
        image = (job["metadata"].get("annotations") or {}).get(builds.ANNOTATION_IMAGE, "")
        pod = self.children.newest_pod(obj.key, job["metadata"]["name"])
        if jobs.condition(job, "Complete"):
            try:
                digest = self.images.digest(image, fresh=True)
            except ImageConfigError as e:
                return BuildState(source, Phase.RUNNING, message=f"reading {image}: {e}")
            if digest is None:
                return BuildState(
                    source,
                    Phase.FAILED,
                    message=f"the build succeeded but the registry has no {image}",
                )
            return BuildState(source, Phase.SUCCEEDED, image=_pinned(image, digest))
        failed = jobs.condition(job, "Failed")
        ended = _failed_container(pod)
        if failed is None and ended is None:
            # Not failed, but maybe stuck: an image that cannot be pulled, no node for it.
            stuck = jobs.image_error(pod)
            waiting = jobs.pod_waiting(pod)
            if stuck is None and waiting is not None:
                stuck = f"{waiting[0]}: {waiting[1]}"
            return BuildState(source, Phase.RUNNING, message=stuck or "")
        if ended is None:  # no container said why: the Job did (its deadline, say)
            reason = (failed or {}).get("reason", "Failed")
            detail = (failed or {}).get("message", "")
            return BuildState(source, Phase.FAILED, message=f"{reason}: {detail}".strip(": "))
        container, code, reason = ended
        tail = self.log_tail(pod, container) if pod is not None else ""
        if container == builds.CONTEXT:
            # The helper's last line names the field (an md5 mismatch, a clone that failed).
            lines = [ln for ln in tail.splitlines() if ln.startswith("substratus-context:")]
            first = lines[-1].removeprefix("substratus-context: ") if lines else ""
            message = first or f"fetching the build context failed (exit code {code})"
        else:
            what = f"{reason}, " if reason and reason not in ("Error", "Completed") else ""
            message = f"BuildKit failed ({what}exit code {code})"
        if tail:
            message += "\n" + tail[-2000:]
        return BuildState(source, Phase.FAILED, message=message)

    def target(self, obj: Resource, source: str) -> tuple[str, str | None]:
        """``repository:tag`` of the image for ``source``'s input, and the git commit that
        is (when the repository could be asked)."""
        git = obj.spec.image.git
        commit = self.resolve(git) if git is not None else None
        tag = builds.image_tag(obj, source, commit)
        return f"{builds.repository(obj, self.cfg)}:{tag}", commit

    def resolve(self, git: GitSource) -> str | None:
        """The commit a branch or tag (or the default branch) names now, from ``git
        ls-remote``; None when it cannot be asked (the build Job's clone then says why)."""
        ref = git.tag or git.branch or "HEAD"
        key = (git.url, ref)
        now = time.monotonic()
        with self._lock:
            hit = self._commits.get(key)
        if hit is not None and now - hit[0] < LS_REMOTE_SECONDS:
            return hit[1]
        patterns = [ref] if ref == "HEAD" else [f"refs/heads/{ref}", f"refs/tags/{ref}"]
        if git.tag:
            patterns = [f"refs/tags/{ref}", f"refs/tags/{ref}^{{}}"]
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
        try:
            done = subprocess.run(
                ["git", "ls-remote", "--", git.url, *patterns],
                env=env,
                capture_output=True,
                text=True,
                timeout=LS_REMOTE_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            log.warning("git ls-remote %s: %s", redact_userinfo(git.url), e)
            return None
        refs: dict[str, str] = {}
        for line in done.stdout.splitlines():
            sha, _, name = line.partition("\t")
            refs[name] = sha
        commit = next((refs[p] for p in reversed(patterns) if p in refs), None)
        if commit is None:
            log.warning(
                "git ls-remote %s %s: %s",
                redact_userinfo(git.url),
                ref,
                redact_userinfo(done.stderr.strip()) or "no such ref",
            )
        with self._lock:
            self._commits[key] = (now, commit)
        return commit

    # -- act ------------------------------------------------------------------------------

    def start(self, obj: Resource, source: str, prepare: Callable[[str], None]) -> None:
        """Create the build Job for ``source`` (``prepare(namespace)`` first: what every
        workload namespace needs, the bucket's and the registry's credentials), and delete the
        object's
        other build Jobs. Nothing when the registry already has the image."""
        ns = obj.metadata.namespace
        image, commit = self.target(obj, source)
        if self.images.digest(image) is not None:
            return
        build_ns = builds.build_namespace(obj, self.cfg)
        prepare(build_ns)
        self._prepare(build_ns)
        upload = obj.spec.image.upload
        upload_url = None
        if upload is not None:
            meta = obj.metadata
            upload_url = context_url(self.cfg.artifact_url, ns, obj.PLURAL, meta.name, upload)
        args = builds.context_args(obj, upload_url, commit)
        job = builds.build_job(obj, self.cfg, source, image, args)
        try:
            self.client.create(from_dict(job), field_manager=names.FIELD_MANAGER)
            log.info("%s/%s: created build Job %s for %s", ns, obj.metadata.name,
                     job["metadata"]["name"], image)  # fmt: skip
        except ApiError as e:
            if e.status.code != 409:
                raise
        self.delete_jobs(obj.key, keep=job["metadata"]["name"])

    def delete_jobs(self, key: Key, keep: str = "") -> None:
        """The object's build Jobs but ``keep`` (all of them when it is deleted: in another
        namespace no owner reference takes them along)."""
        for other in self.jobs(key):
            meta = other["metadata"]
            if meta["name"] == keep:
                continue
            try:
                self.client.delete(
                    Job, meta["name"], namespace=meta["namespace"], cascade=CascadeType.BACKGROUND
                )
            except ApiError as e:
                if e.status.code != 404:
                    raise

    def _prepare(self, namespace: str) -> None:
        with self._lock:
            if namespace in self._prepared:
                return
        account = from_dict(builds.service_account(namespace, self.cfg))
        self.client.apply(account, field_manager=names.FIELD_MANAGER, force=True)
        with self._lock:
            self._prepared.add(namespace)


def _pinned(image: str, digest: str) -> str:
    """``repository@digest``: what pods run, so a moved tag never changes a running object."""
    return f"{image.rsplit(':', 1)[0]}@{digest}"


def _failed_container(pod: dict[str, Any] | None) -> tuple[str, int, str] | None:
    """The first container of the build pod that ended with a non-zero code."""
    status = (pod or {}).get("status") or {}
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        ended = (cs.get("state") or {}).get("terminated") or {}
        if ended and ended.get("exitCode", 0) != 0:
            return str(cs.get("name")), int(ended["exitCode"]), str(ended.get("reason") or "")
    return None
