"""The core's decisions, from observations alone: gating, builds, jobs, retries, services."""

from __future__ import annotations

from typing import Any

import pytest

from substratus.api import parse_object
from substratus.api.kinds import Resource
from substratus.core.actions import EnsureService, StartBuild, StartJob, StopWorkload
from substratus.core.observed import (
    Artifacts,
    BuildState,
    Capacity,
    DepState,
    JobState,
    Observed,
    Phase,
    ServiceState,
    UploadState,
)
from substratus.core.reconcile import build_source, decide
from substratus.core.retry import RetryPolicy


def make(kind: str, spec: dict[str, Any], generation: int = 1, status: Any = None) -> Resource:
    return parse_object(
        {
            "apiVersion": "substratus.ai/v1",
            "kind": kind,
            "metadata": {"name": "x", "generation": generation},
            "spec": spec,
            "status": status or {},
        }
    )


BASE = {"image": {"name": "substratusai/base"}, "command": ["true"]}
FT = {**BASE, "baseModel": {"name": "base"}, "trainingDataset": {"name": "data"}}
EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"  # a valid spec.image.upload.md5


def ready_reason(d: Any) -> tuple[bool, str, str]:
    c = next(c for c in d.status.conditions if c.type == "Ready")
    return d.status.ready, c.reason, c.message


def test_model_without_dependencies_starts_a_job() -> None:
    d = decide(make("Model", BASE), Observed(now=0))
    assert d.actions == [StartJob(1, 1, "substratusai/base")]
    assert ready_reason(d)[:2] == (False, "JobPending")
    assert d.status.observed_generation == 1


@pytest.mark.parametrize(
    ("deps", "reason"),
    [
        ({}, "BaseModelNotFound"),
        ({"baseModel": DepState(found=False)}, "BaseModelNotFound"),
        ({"baseModel": DepState(found=True)}, "BaseModelNotReady"),
        (
            {"baseModel": DepState(True, True, "file:///m"), "trainingDataset": DepState(False)},
            "DatasetNotFound",
        ),
        (
            {"baseModel": DepState(True, True, "file:///m"), "trainingDataset": DepState(True)},
            "DatasetNotReady",
        ),
    ],
)
def test_fine_tune_waits_for_base_model_and_dataset(deps: dict[str, DepState], reason: str) -> None:
    d = decide(make("Model", FT), Observed(now=0, deps=deps))
    assert d.actions == []
    ready, got, message = ready_reason(d)
    assert (ready, got) == (False, reason)
    assert "not" in message or "waiting" in message


def test_fine_tune_starts_when_dependencies_are_ready() -> None:
    deps = {"baseModel": DepState(True, True, "u1"), "trainingDataset": DepState(True, True, "u2")}
    d = decide(make("Model", FT), Observed(now=0, deps=deps))
    assert d.actions == [StartJob(1, 1, "substratusai/base")]


def test_finished_fine_tune_stays_ready_when_base_model_is_deleted() -> None:
    done = JobState(1, Phase.SUCCEEDED, artifacts=Artifacts("file:///a/", ("w.bin",), 2048))
    d = decide(make("Model", FT), Observed(now=0, deps={}, job=done))
    assert ready_reason(d)[:2] == (True, "Succeeded")


def test_success_reports_artifacts_from_the_manifest() -> None:
    done = JobState(1, Phase.SUCCEEDED, artifacts=Artifacts("s3://b/m/g1/", ("a", "b"), 3 << 30))
    d = decide(make("Model", BASE), Observed(now=0, job=done))
    assert d.status.ready is True
    assert d.status.url == "s3://b/m/g1/"  # type: ignore[attr-defined]
    assert d.status.files == ["a", "b"]  # type: ignore[attr-defined]
    assert d.status.disk_size == "3Gi"  # type: ignore[attr-defined]
    assert d.actions == []


def test_spec_change_reruns_and_keeps_old_artifacts_until_new_ones_commit() -> None:
    old = make("Model", BASE, generation=2, status={"ready": True, "url": "file:///old/"})
    done = JobState(1, Phase.SUCCEEDED, artifacts=Artifacts("file:///old/", (), 0))
    d = decide(old, Observed(now=0, job=done))
    assert d.actions == [StartJob(2, 1, "substratusai/base")]
    assert d.status.ready is False
    assert d.status.url == "file:///old/"  # type: ignore[attr-defined]


def test_running_job_waits() -> None:
    d = decide(make("Model", BASE), Observed(now=0, job=JobState(1, Phase.RUNNING)))
    assert d.actions == []
    assert ready_reason(d)[1] == "JobRunning"


def test_failed_job_backs_off_then_retries_then_gives_up_with_log_tail() -> None:
    policy = RetryPolicy(max_attempts=3, base_delay=10, max_delay=100)
    obj = make("Model", BASE)
    failed = JobState(1, Phase.FAILED, attempts=1, exit_code=3, log_tail="boom", finished_at=100)
    d = decide(obj, Observed(now=105, job=failed), policy)
    assert d.actions == [] and d.requeue_after == pytest.approx(5)
    assert ready_reason(d)[1] == "BackOff"
    d = decide(obj, Observed(now=111, job=failed), policy)
    assert d.actions == [StartJob(1, 2, "substratusai/base")]
    # the second failure waits twice as long
    second = JobState(1, Phase.FAILED, attempts=2, exit_code=3, finished_at=200)
    assert decide(obj, Observed(now=210, job=second), policy).requeue_after == pytest.approx(10)
    last = JobState(1, Phase.FAILED, attempts=3, exit_code=3, log_tail="line1\nboom", finished_at=0)
    d = decide(obj, Observed(now=1000, job=last), policy)
    ready, reason, message = ready_reason(d)
    assert (ready, reason, d.actions) == (False, "JobFailed", [])
    assert "exit code 3" in message and "3 attempts" in message and "boom" in message
    complete = next(c for c in d.status.conditions if c.type == "JobComplete")
    assert complete.status == "False" and complete.reason == "JobFailed"


def test_interrupted_job_is_restarted() -> None:
    d = decide(make("Model", BASE), Observed(now=0, job=JobState(1, Phase.NONE, attempts=2)))
    assert d.actions == [StartJob(1, 2, "substratusai/base")]


def test_git_image_builds_before_running() -> None:
    spec = {"image": {"git": {"url": "file:///repo", "branch": "main"}}, "command": ["x"]}
    obj = make("Dataset", spec)
    src = build_source(obj)
    assert src is not None
    d = decide(obj, Observed(now=0))
    assert d.actions == [StartBuild(src)]
    assert ready_reason(d)[1] == "Building"
    d = decide(obj, Observed(now=0, build=BuildState(src, Phase.RUNNING)))
    assert d.actions == []
    d = decide(obj, Observed(now=0, build=BuildState(src, Phase.FAILED, message="no clone")))
    assert ready_reason(d)[1:] == ("BuildFailed", "no clone")
    d = decide(obj, Observed(now=0, build=BuildState(src, Phase.SUCCEEDED, image="venv:abc")))
    assert d.actions == [StartJob(1, 1, "venv:abc")]
    assert d.status.image == "venv:abc"
    # a different source (spec changed) builds again
    d = decide(obj, Observed(now=0, build=BuildState("git:other", Phase.SUCCEEDED, image="i")))
    assert d.actions == [StartBuild(src)]


def test_upload_waits_for_the_context() -> None:
    obj = make("Notebook", {"image": {"upload": {}}})
    d = decide(obj, Observed(now=0, upload=UploadState(url="file:///up/pending.tar.gz")))
    assert ready_reason(d)[1] == "AwaitingUpload"
    assert d.status.upload_url == "file:///up/pending.tar.gz"
    obj = make("Notebook", {"image": {"upload": {"requestId": "r1", "md5": EMPTY_MD5}}})
    d = decide(obj, Observed(now=0, upload=UploadState(url="u", received=False)))
    assert ready_reason(d)[1] == "AwaitingUpload" and d.actions == []
    d = decide(obj, Observed(now=0, upload=UploadState(url="u", received=True)))
    assert d.actions == [StartBuild(f"upload:r1:{EMPTY_MD5}")]


def test_server_waits_for_model_then_serves() -> None:
    obj = make("Server", {**BASE, "model": {"name": "m"}, "replicas": 2})
    assert ready_reason(decide(obj, Observed(now=0)))[1] == "ModelNotFound"
    deps = {"model": DepState(True, True, "file:///m/")}
    d = decide(obj, Observed(now=0, deps=deps))
    assert d.actions == [EnsureService(1, "substratusai/base", 2)]
    assert ready_reason(d)[1] == "Starting"
    svc = ServiceState(1, "substratusai/base", replicas=2, ready_replicas=1, url="http://h:1")
    d = decide(obj, Observed(now=0, deps=deps, service=svc))
    assert d.status.ready is True
    assert d.status.url == "http://h:1"  # type: ignore[attr-defined]
    assert d.status.replicas == 1  # type: ignore[attr-defined]


def test_crashing_server_reports_exit_code_and_log_tail() -> None:
    obj = make("Server", {**BASE, "model": "m"})
    svc = ServiceState(1, "substratusai/base", restarts=2, last_exit_code=1, log_tail="Traceback")
    d = decide(obj, Observed(now=0, deps={"model": DepState(True, True)}, service=svc))
    ready, reason, message = ready_reason(d)
    assert (ready, reason) == (False, "CrashLoopBackOff")
    assert "code 1" in message and "Traceback" in message
    assert d.actions == [EnsureService(1, "substratusai/base", 1)]


def test_notebook_suspend_stops_it_and_gets_a_stable_token() -> None:
    nb = make("Notebook", {"image": {"name": "substratusai/base"}, "command": ["jupyter"]})
    d = decide(nb, Observed(now=0), new_token=lambda: "tok")
    assert d.status.token == "tok"  # type: ignore[attr-defined]
    kept = make("Notebook", nb.spec.model_dump(by_alias=True), status={"token": "old"})
    assert decide(kept, Observed(now=0)).status.token == "old"  # type: ignore[attr-defined]
    suspended = make("Notebook", {**BASE, "suspend": True})
    d = decide(suspended, Observed(now=0))
    assert d.actions == [StopWorkload()]
    assert ready_reason(d)[:2] == (False, "Suspended")


def test_missing_secret_and_unavailable_image_block_the_start() -> None:
    obj = make("Model", BASE)
    d = decide(obj, Observed(now=0, missing_secrets=("env.HF: secret 'hf' not found",)))
    assert ready_reason(d)[1] == "SecretNotFound" and d.actions == []
    d = decide(obj, Observed(now=0, image_error="spec.image.name: 'x' needs podman"))
    assert ready_reason(d)[1:] == ("ImageUnavailable", "spec.image.name: 'x' needs podman")
    d = decide(obj, Observed(now=0, spec_error="spec.params: too large"))
    assert ready_reason(d)[1:] == ("SpecNotRunnable", "spec.params: too large")
    assert d.actions == [StopWorkload()]


@pytest.mark.parametrize(
    ("resources", "reason"),
    [
        ({"gpu": {"count": 2, "type": "nvidia-l4"}}, "InsufficientGPU"),
        ({"memory": 4096}, "InsufficientMemory"),
        ({"disk": 100000}, "InsufficientDisk"),
    ],
)
def test_requests_beyond_the_machine_are_reported(resources: dict[str, Any], reason: str) -> None:
    obj = make("Model", {**BASE, "resources": resources})
    cap = Capacity(gpus=1, memory_gb=16, disk_gb=50)
    d = decide(obj, Observed(now=0, capacity=cap))
    ready, got, message = ready_reason(d)
    assert (ready, got, d.actions) == (False, reason, [])
    assert message.startswith("spec.resources.")


def test_condition_transition_time_is_kept_while_status_is_unchanged() -> None:
    obj = make("Model", BASE)
    first = decide(obj, Observed(now=0, job=JobState(1, Phase.RUNNING)))
    again = make("Model", BASE, status=first.status.model_dump(by_alias=True))
    second = decide(again, Observed(now=0, job=JobState(1, Phase.RUNNING)))
    t1 = [c.last_transition_time for c in first.status.conditions]
    t2 = [c.last_transition_time for c in second.status.conditions]
    assert t1 == t2


@pytest.mark.parametrize(
    ("gpu_type", "name", "match"),
    [
        ("nvidia-l4", "NVIDIA L4", True),
        ("nvidia-a100", "NVIDIA A100-SXM4-40GB", True),
        ("nvidia-tesla-t4", "Tesla T4", True),
        ("nvidia-h100-80gb", "NVIDIA H100 80GB HBM3", True),
        ("nvidia-l4", "NVIDIA L40S", False),
        ("nvidia-a100", "NVIDIA H100 PCIe", False),
    ],
)
def test_gpu_type_matches_device_names(gpu_type: str, name: str, match: bool) -> None:
    from substratus.core.reconcile import gpu_type_matches

    assert gpu_type_matches(gpu_type, name) is match


def test_gpu_of_another_type_is_not_enough() -> None:
    obj = make("Model", {**BASE, "resources": {"gpu": {"count": 1, "type": "nvidia-a100"}}})
    cap = Capacity(gpus=2, memory_gb=16, disk_gb=50, gpu_models=("NVIDIA L4", "NVIDIA L4"))
    ready, reason, message = ready_reason(decide(obj, Observed(now=0, capacity=cap)))
    assert (ready, reason) == (False, "InsufficientGPU")
    assert "nvidia-a100" in message and "NVIDIA L4" in message
    fits = make("Model", {**BASE, "resources": {"gpu": {"count": 2, "type": "nvidia-l4"}}})
    assert decide(fits, Observed(now=0, capacity=cap)).actions == [
        StartJob(1, 1, "substratusai/base")
    ]


def test_upload_url_is_published_even_while_dependencies_are_pending() -> None:
    obj = make(
        "Model",
        {
            "image": {"upload": {"requestId": "r", "md5": EMPTY_MD5}},
            "command": ["x"],
            "baseModel": {"name": "b"},
        },
    )
    d = decide(obj, Observed(now=0, upload=UploadState(url="https://signed")))
    assert ready_reason(d)[1] == "AwaitingUpload"
    assert d.status.upload_url == "https://signed"
    built = BuildState(f"upload:r:{EMPTY_MD5}", Phase.SUCCEEDED, image="dir:1")
    d = decide(obj, Observed(now=0, upload=UploadState(url="u", received=True), build=built))
    assert ready_reason(d)[1] == "BaseModelNotFound"


def test_retry_is_gated_again_on_its_dependencies() -> None:
    failed = JobState(1, Phase.FAILED, attempts=1, exit_code=1, finished_at=0)
    d = decide(make("Model", FT), Observed(now=100, job=failed, deps={}))
    assert ready_reason(d)[1] == "BaseModelNotFound" and d.actions == []


def test_running_server_keeps_serving_when_its_model_is_deleted() -> None:
    obj = make("Server", {**BASE, "model": "m"})
    svc = ServiceState(1, "substratusai/base", replicas=1, ready_replicas=1, url="http://h")
    d = decide(obj, Observed(now=0, deps={"model": DepState(False)}, service=svc))
    assert d.status.ready is True and d.actions == [EnsureService(1, "substratusai/base", 1)]
    crashed = ServiceState(1, "substratusai/base", replicas=0, restarts=1, last_exit_code=1)
    d = decide(obj, Observed(now=0, deps={"model": DepState(False)}, service=crashed))
    assert ready_reason(d)[1] == "ModelNotFound" and d.actions == []


@pytest.mark.parametrize("phase", [Phase.COMMITTING, Phase.SUCCEEDED])
def test_a_finished_job_whose_artifacts_are_not_committed_is_never_retried(phase: Phase) -> None:
    # SUCCEEDED without artifacts: a runtime saw the command exit 0 before the commit landed.
    job = JobState(generation=1, phase=phase, attempts=3, exit_code=0, finished_at=0)
    d = decide(make("Model", BASE), Observed(now=10_000, job=job), RetryPolicy(max_attempts=3))
    assert d.actions == []
    assert ready_reason(d) == (
        False,
        "JobCommitting",
        "the command succeeded; storing its artifacts",
    )


def test_a_committing_job_is_not_gated_on_its_dependencies_again() -> None:
    job = JobState(generation=1, phase=Phase.COMMITTING)
    d = decide(make("Model", FT), Observed(now=0, job=job))
    assert ready_reason(d)[1] == "JobCommitting"
