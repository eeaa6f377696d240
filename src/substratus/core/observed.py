"""What a runtime observed about one object's world: dependencies, build, upload, workload."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from substratus.api.kinds import JobProgress, UploadParts
from substratus.core.autoscale import Load


@dataclass(frozen=True)
class DepState:
    found: bool
    ready: bool = False
    url: str | None = None


class Phase(StrEnum):
    NONE = "none"
    RUNNING = "running"
    # The command exited 0 and its artifacts are being stored: neither done nor failed.
    COMMITTING = "committing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class BuildState:
    source: str | None = None  # build_source() of the spec that was built
    phase: Phase = Phase.NONE
    image: str | None = None
    message: str = ""


@dataclass(frozen=True)
class UploadState:
    url: str | None = None  # where the client should upload (signed URL)
    expires_at: float | None = None  # when url stops working (None: never, e.g. file://)
    parts: UploadParts | None = None  # a large context's multipart upload (S3), if any
    received: bool = False  # the tarball for the spec's requestId has arrived


@dataclass(frozen=True)
class Artifacts:
    url: str
    files: tuple[str, ...]
    size: int


@dataclass(frozen=True)
class JobState:
    generation: int
    phase: Phase
    attempts: int = 1
    exit_code: int | None = None
    message: str = ""  # why it failed (e.g. commit error), beside the exit code
    log_tail: str = ""
    finished_at: float | None = None
    artifacts: Artifacts | None = None  # set once a successful run's artifacts are committed
    # Why a started run does not run yet (a cluster's Unschedulable, CreateContainerConfigError):
    # a reason and the cluster's message, reported while it waits.
    waiting: tuple[str, str] | None = None
    progress: JobProgress | None = None  # what the job last reported (core/progress.py)


@dataclass(frozen=True)
class ServiceState:
    generation: int
    image: str
    replicas: int = 0  # processes/pods running
    ready_replicas: int = 0  # answering 200 on /
    restarts: int = 0
    last_exit_code: int | None = None
    log_tail: str = ""
    url: str | None = None
    waiting: tuple[str, str] | None = None  # as JobState.waiting, for the newest replica
    # Why the newest replica could not even be started (a spec the runtime cannot run, such
    # as a build with no command); restarting cannot help until the spec changes.
    start_error: str = ""
    # Autoscaled Servers: replicas started and not yet ready (still loading their model), the
    # count the runtime was last asked for, and the proxy's address once it answers.
    loading: int = 0
    wanted: int | None = None
    proxy_url: str | None = None


@dataclass(frozen=True)
class Capacity:
    """What one machine can give a workload; requests beyond it can never be met there."""

    gpus: int  # free GPUs
    memory_gb: float
    disk_gb: float
    gpu_models: tuple[str, ...] = ()  # names of the free GPUs, e.g. "NVIDIA L4"


@dataclass(frozen=True)
class Observed:
    now: float
    deps: dict[str, DepState] = field(default_factory=dict)  # by spec field, e.g. "baseModel"
    build: BuildState = BuildState()
    upload: UploadState = UploadState()
    job: JobState | None = None
    service: ServiceState | None = None
    load: Load | None = None  # an autoscaled Server's proxy's report, when it answered
    capacity: Capacity | None = None  # None: the runtime cannot tell (a scheduler decides)
    missing_secrets: tuple[str, ...] = ()  # "env.NAME: secret S has no key K", one per problem
    image_error: str | None = None  # the runtime cannot run the resolved image, and why
    # the spec is valid but this runtime cannot run it as given (e.g. params too large for a
    # pod), naming the field
    spec_error: str | None = None
