"""decide(): from an object and what was observed, the new status and the next actions.

The same function drives the local supervisor and the Kubernetes operator. It is pure apart
from minting a notebook token, and is re-run on every event; it never assumes it was called
before, so a restarted controller converges from observations alone.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from substratus.api.common import UploadSource
from substratus.api.kinds import (
    ArtifactsStatus,
    ArtifactStatus,
    Autoscaling,
    BuildUploadStatus,
    CommonStatus,
    Notebook,
    NotebookStatus,
    Resource,
    Server,
    ServerStatus,
)
from substratus.core import conditions as C
from substratus.core.actions import Action, EnsureService, StartBuild, StartJob, StopWorkload
from substratus.core.autoscale import Load, desired_replicas
from substratus.core.graph import dependencies
from substratus.core.observed import JobState, Observed, Phase, ServiceState
from substratus.core.retry import RetryPolicy
from substratus.core.sizes import human_size
from substratus.core.uploads import iso

LOG_TAIL_CHARS = 2000
UPLOAD_POLL_SECONDS = 1.0
CAPACITY_POLL_SECONDS = 5.0  # GPUs, memory or disk may be freed by other workloads


@dataclass
class Decision:
    status: CommonStatus
    actions: list[Action] = field(default_factory=list)
    requeue_after: float | None = None  # re-decide after this many seconds even without events


def build_source(obj: Resource) -> str | None:
    """A stable string naming the build input of ``spec.image``; a new one means a rebuild."""
    image = obj.spec.image
    if image.git is not None:
        return "git:" + json.dumps(image.git.model_dump(exclude_none=True), sort_keys=True)
    if image.upload is not None:
        return f"upload:{image.upload.request_id}:{image.upload.md5}"
    return None


def _tail(text: str) -> str:
    return text[-LOG_TAIL_CHARS:]


class _Status:
    """Accumulates the new status; Ready is always the condition a user reads first."""

    def __init__(self, obj: Resource):
        self.gen = obj.metadata.generation or 1
        self.upload = obj.spec.image.upload
        self.status = obj.status.model_copy(deep=True)
        self.status.observed_generation = self.gen
        self.published = False  # uploadUrl set by this decision
        self.stored_md5: str | None = None  # the upload's md5, once a build verified it

    def cond(self, type_: str, ok: bool | None, reason: str, message: str = "") -> None:
        self.status.conditions = C.set_condition(
            self.status.conditions, type_, ok, reason, message, self.gen
        )

    def ready(self, ok: bool, reason: str, message: str = "") -> None:
        self.status.ready = ok
        self.cond(C.READY, ok, reason, message)

    def done(self, *actions: Action, requeue_after: float | None = None) -> Decision:
        _original_fields(self.status, self.upload, self.published, self.stored_md5)
        return Decision(self.status, list(actions), requeue_after)


def _original_fields(
    status: CommonStatus, upload: UploadSource | None, published: bool, stored_md5: str | None
) -> None:
    """The original project's names for the same facts (``artifacts.url``, ``buildUpload``),
    derived from ``url`` and ``uploadUrl`` last, so the two never disagree."""
    if isinstance(status, ArtifactStatus):
        status.artifacts = ArtifactsStatus(url=status.url) if status.url else None
    if upload is None:
        # A URL for a source no longer asked for.
        status.upload_url = status.upload_url_expiration = status.build_upload = None
        status.upload_parts = None
    elif published:
        # requestID names the request this URL was made for, so a client never sends one
        # request's tarball to another's URL; a path that did not publish (a suspended
        # Notebook) leaves both as they were.
        status.build_upload = (
            BuildUploadStatus(
                signed_url=status.upload_url,
                request_id=upload.request_id,
                expiration=status.upload_url_expiration,
                stored_md5_checksum=stored_md5,
            )
            if status.upload_url
            else None
        )


def decide(
    obj: Resource,
    obs: Observed,
    policy: RetryPolicy = RetryPolicy(),
    new_token: Callable[[], str] = lambda: secrets.token_urlsafe(24),
) -> Decision:
    s = _Status(obj)
    if isinstance(obj, Notebook) and obj.spec.suspend:
        s.ready(False, "Suspended", "spec.suspend is true")
        if isinstance(s.status, NotebookStatus):
            s.status.url = None
        return s.done(StopWorkload())

    # The image is built (and its upload awaited) first: it can happen while dependencies
    # are still on their way, and a client must learn uploadUrl whatever else is pending.
    image = obj.spec.image.name
    source = build_source(obj)
    if source is not None:
        upload = obj.spec.image.upload
        if upload is not None:
            s.status.upload_url = obs.upload.url
            expires = obs.upload.expires_at
            s.status.upload_url_expiration = iso(expires) if expires is not None else None
            s.status.upload_parts = obs.upload.parts
            s.published = True
            if not upload.request_id or not obs.upload.received:
                s.cond(C.BUILT, False, "AwaitingUpload", "upload the build context to uploadUrl")
                s.ready(False, "AwaitingUpload", "waiting for the build context upload")
                # A bucket sends no event when the client's upload lands: look again soon.
                return s.done(requeue_after=UPLOAD_POLL_SECONDS if upload.request_id else None)
        build = obs.build
        if build.source != source or build.phase in (Phase.NONE, Phase.RUNNING):
            # A build that cannot start yet (its image, its node) says why, and waits.
            doing = "building the image" + (f" (waiting: {build.message})" if build.message else "")
            s.cond(C.BUILT, False, "Building", doing)
            s.ready(False, "Building", doing)
            starting = build.source != source or build.phase == Phase.NONE
            return s.done(StartBuild(source)) if starting else s.done()
        if build.phase == Phase.FAILED:
            s.cond(C.BUILT, False, "BuildFailed", build.message)
            s.ready(False, "BuildFailed", build.message)
            return s.done()
        image = build.image
        s.status.image = image
        if obj.spec.image.upload is not None:
            # The build checked the tarball against this md5 (a mismatch fails it).
            s.stored_md5 = obj.spec.image.upload.md5
        s.cond(C.BUILT, True, "Built", f"built {image}")
    # Gate only what is about to start: a finished fine-tune stays Ready, and a running
    # server keeps serving, when the model they used is later deleted. A retry or a restart
    # is gated again, since it mounts its dependencies anew.
    job, svc = obs.job, obs.service
    started = (
        job is not None
        and job.generation == s.gen
        and job.phase in (Phase.RUNNING, Phase.COMMITTING, Phase.SUCCEEDED)
    ) or (svc is not None and svc.generation == s.gen and svc.replicas > 0)
    for dep in [] if started else dependencies(obj):
        state = obs.deps.get(dep.field)
        kind, ns, name = dep.key
        if state is None or not state.found:
            s.ready(
                False, f"{dep.label}NotFound", f"spec.{dep.field}: {kind} {ns}/{name} not found"
            )
            return s.done()
        if not state.ready:
            s.ready(False, f"{dep.label}NotReady", f"waiting for {kind} {ns}/{name} to be ready")
            return s.done()

    if obs.missing_secrets and not started:
        missing = ", ".join(obs.missing_secrets)
        s.ready(False, "SecretNotFound", f"spec.env: {missing}")
        return s.done()

    problem = _capacity_problem(obj, obs) if not started else None
    if problem:
        s.ready(False, problem[0], problem[1])
        return s.done(requeue_after=CAPACITY_POLL_SECONDS)

    if image is None:  # pragma: no cover - the API requires a name or a build source
        raise ValueError("spec.image: no image name and no build source")
    if obs.image_error:
        s.ready(False, "ImageUnavailable", obs.image_error)
        return s.done(StopWorkload())
    if obs.spec_error:
        s.ready(False, "SpecNotRunnable", obs.spec_error)
        return s.done(StopWorkload())

    if obj.IS_JOB:
        return _decide_job(s, obs.job, image, policy, obs.now)
    if isinstance(s.status, NotebookStatus) and not s.status.token:
        s.status.token = new_token()
    if isinstance(obj, Server) and obj.spec.autoscaling is not None:
        return _decide_autoscaled(s, obs.service, image, obj.spec.autoscaling, obs.load)
    replicas = obj.spec.replicas if isinstance(obj, Server) else 1
    return _decide_service(s, obs.service, image, replicas)


def gpu_type_matches(gpu_type: str, model_name: str) -> bool:
    """Whether a device named like nvidia-smi's "NVIDIA A100-SXM4-40GB" is a ``gpu_type`` such
    as the cloud labels name them (nvidia-a100, nvidia-tesla-t4, nvidia-h100-80gb, nvidia-l4)."""
    family = gpu_type.lower().removeprefix("nvidia-").removeprefix("tesla-").split("-")[0]
    words = model_name.lower().replace("-", " ").split()
    return bool(family) and family in words


def _capacity_problem(obj: Resource, obs: Observed) -> tuple[str, str] | None:
    cap, res = obs.capacity, obj.spec.resources
    if cap is None:
        return None
    if res.gpu is not None and res.gpu.count:
        matching = sum(1 for name in cap.gpu_models if gpu_type_matches(res.gpu.type, name))
        have = matching if cap.gpu_models else cap.gpus
        if res.gpu.count > have:
            found = ", ".join(sorted(set(cap.gpu_models))) or "none"
            return (
                "InsufficientGPU",
                f"spec.resources.gpu: {res.gpu.count} {res.gpu.type} requested, {have} free "
                f"(free GPUs: {found})",
            )
    if res.memory is not None and res.memory > cap.memory_gb:
        return (
            "InsufficientMemory",
            f"spec.resources.memory: {res.memory:g} GB requested, {cap.memory_gb:.1f} GB in total",
        )
    if res.disk is not None and res.disk > cap.disk_gb:
        return (
            "InsufficientDisk",
            f"spec.resources.disk: {res.disk:g} GB requested, {cap.disk_gb:.1f} GB free",
        )
    return None


def _decide_job(
    s: _Status, job: JobState | None, image: str, policy: RetryPolicy, now: float
) -> Decision:
    if isinstance(s.status, ArtifactStatus):
        if job is None or job.generation != s.gen:
            s.status.progress = None  # a new generation starts from nothing
        elif job.progress is not None:
            s.status.progress = job.progress  # kept once the job ends: its last word
    if job is None or job.generation != s.gen:
        s.cond(C.COMPLETE, False, "Pending", "starting the job")
        s.ready(False, "JobPending", "starting the job")
        return s.done(StartJob(s.gen, 1, image))
    if job.phase == Phase.NONE:  # stopped by a restart, not by failing: run it again
        s.ready(False, "JobPending", "restarting the interrupted job")
        return s.done(StartJob(s.gen, job.attempts, image))
    if job.phase == Phase.RUNNING:
        msg = f"attempt {job.attempts} of {policy.max_attempts}"
        if job.waiting is not None:  # not a failure: a node may yet come, a Secret appear
            reason, why = job.waiting
            s.cond(C.COMPLETE, False, reason, f"{why} ({msg})")
            s.ready(False, reason, f"{why} ({msg})")
            return s.done()
        s.cond(C.COMPLETE, False, "Running", msg)
        s.ready(False, "JobRunning", msg)
        return s.done()
    if job.phase == Phase.COMMITTING or (job.phase == Phase.SUCCEEDED and job.artifacts is None):
        # A finished command whose artifacts are not committed yet is never a failure to
        # retry; a commit that fails is reported by the runtime as FAILED, with the reason.
        msg = "the command succeeded; storing its artifacts"
        s.cond(C.COMPLETE, False, "Committing", msg)
        s.ready(False, "JobCommitting", msg)
        return s.done()
    if job.phase == Phase.SUCCEEDED and job.artifacts is not None:
        st = s.status
        if isinstance(st, ArtifactStatus):
            st.url = job.artifacts.url
            st.files = list(job.artifacts.files)
            st.disk_size = human_size(job.artifacts.size)
        s.cond(C.COMPLETE, True, "Succeeded", f"artifacts at {job.artifacts.url}")
        s.ready(True, "Succeeded", f"artifacts at {job.artifacts.url}")
        return s.done()
    why = job.message or (
        f"exit code {job.exit_code}" if job.exit_code is not None else "the job failed"
    )
    if job.attempts < policy.max_attempts:
        wait = policy.delay(job.attempts) - (now - (job.finished_at or now))
        if wait > 0:
            msg = (
                f"{why} (attempt {job.attempts} of {policy.max_attempts}); retrying in {wait:.0f}s"
            )
            s.cond(C.COMPLETE, False, "BackOff", msg)
            s.ready(False, "BackOff", msg)
            return s.done(requeue_after=wait)
        s.cond(C.COMPLETE, False, "Pending", f"retrying after: {why}")
        s.ready(False, "JobPending", f"retrying after: {why}")
        return s.done(StartJob(s.gen, job.attempts + 1, image))
    msg = f"{why} after {job.attempts} attempts"
    if job.log_tail:
        msg += "; log tail:\n" + _tail(job.log_tail)
    s.cond(C.COMPLETE, False, "JobFailed", msg)
    s.ready(False, "JobFailed", msg)
    return s.done()


def _decide_service(s: _Status, svc: ServiceState | None, image: str, replicas: int) -> Decision:
    ensure = EnsureService(s.gen, image, replicas)
    st = s.status
    if replicas == 0:
        s.cond(C.SERVING, False, "ScaledToZero", "spec.replicas is 0")
        s.ready(False, "ScaledToZero", "spec.replicas is 0")
        _set_endpoint(st, None, 0)
        return s.done(ensure)
    if svc is None or svc.generation != s.gen or svc.image != image:
        s.cond(C.SERVING, False, "Starting", "starting")
        s.ready(False, "Starting", "starting")
        _set_endpoint(st, None, 0)
        return s.done(ensure)
    if svc.ready_replicas > 0:
        msg = f"{svc.ready_replicas}/{replicas} replicas ready"
        s.cond(C.SERVING, True, "Serving", msg)
        s.ready(True, "Serving", msg)
        _set_endpoint(st, svc.url, svc.ready_replicas)
        return s.done(ensure)
    _set_endpoint(st, None, 0)
    problem = _replica_problem(svc, replicas)
    if problem is not None:
        s.cond(C.SERVING, False, *problem)
        s.ready(False, *problem)
        return s.done(ensure)
    s.cond(C.SERVING, False, "Starting", f"0/{replicas} replicas ready")
    s.ready(False, "Starting", f"0/{replicas} replicas ready")
    return s.done(ensure)


def _decide_autoscaled(
    s: _Status, svc: ServiceState | None, image: str, policy: Autoscaling, load: Load | None
) -> Decision:
    current = svc is not None and svc.generation == s.gen and svc.image == image
    wanted = svc.wanted if svc is not None and svc.wanted is not None else policy.min_replicas
    replicas = desired_replicas(policy, wanted, svc.loading if current and svc else 0, load)
    ensure = EnsureService(s.gen, image, replicas, policy)
    bounds = f"autoscaling {policy.min_replicas}-{policy.max_replicas}"
    if svc is None or svc.proxy_url is None:
        s.cond(C.SERVING, False, "Starting", "starting the proxy")
        s.ready(False, "Starting", "starting the proxy")
        _set_endpoint(s.status, None, 0)
        return s.done(ensure)
    ready = svc.ready_replicas if current else 0
    _set_endpoint(s.status, svc.proxy_url, ready)
    problem = _replica_problem(svc, replicas) if current and ready == 0 and replicas else None
    if problem is not None:
        s.cond(C.SERVING, False, *problem)
        s.ready(False, *problem)
        return s.done(ensure)
    if replicas == 0:
        msg = f"scaled to zero ({bounds}); a request starts a replica"
    else:
        msg = f"{ready}/{replicas} replicas ready ({bounds})"
    s.cond(C.SERVING, True, "Serving", msg)
    s.ready(True, "Serving", msg)
    return s.done(ensure)


def _replica_problem(svc: ServiceState, replicas: int) -> tuple[str, str] | None:
    """Why no replica serves, when that is more than starting up: it cannot start, it keeps
    exiting, or the cluster cannot run it yet."""
    if svc.start_error:
        return "StartFailed", svc.start_error
    if svc.restarts > 0:
        msg = f"exited with code {svc.last_exit_code}, restarted {svc.restarts} times"
        if svc.log_tail:
            msg += "; log tail:\n" + _tail(svc.log_tail)
        return "CrashLoopBackOff", msg
    if svc.waiting is not None:
        reason, why = svc.waiting
        return reason, f"{why} (0/{replicas} replicas ready)"
    return None


def _set_endpoint(status: CommonStatus, url: str | None, ready: int) -> None:
    if isinstance(status, ServerStatus):
        status.url = url
        status.replicas = ready
    elif isinstance(status, NotebookStatus):
        status.url = url
