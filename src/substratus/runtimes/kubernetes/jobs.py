"""A Model's or Dataset's run as a ``batch/v1`` Job, and what the operator reads back from one.

One Job per attempt (``backoffLimit: 0``): retries, with their back-off, are the core's retry
policy, the same as locally, and each attempt commits to its own version. The Job carries the
object's generation and attempt as labels, so the operator learns the state of a run from the
API server alone after a restart, and never creates a second Job for the same attempt (the
name is deterministic: a create that finds it is done).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from substratus.api.kinds import Resource
from substratus.core.actions import StartJob
from substratus.core.naming import artifact_version
from substratus.core.observed import Artifacts, JobState, Phase
from substratus.core.world import MountSources
from substratus.runtimes.kubernetes import names
from substratus.runtimes.kubernetes.config import OperatorConfig
from substratus.runtimes.kubernetes.pods import (
    MAIN,
    params_annotation,
    workload_pod_spec,
)

RUN_VERSION = "k8s"  # one Job per attempt: the attempt number already makes the version unique
ANNOTATION_NAME = names.ANNOTATION_OWNER
ANNOTATION_VERSION = f"{names.GROUP}/artifact-version"
IMAGE_ERRORS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}


def job_name(obj: Resource, generation: int, attempt: int) -> str:
    return names.child_name(obj, f"g{generation}-a{attempt}")


def run_version(generation: int, attempt: int) -> str:
    return artifact_version(generation, attempt, RUN_VERSION)


def job_children(
    obj: Resource,
    action: StartJob,
    cfg: OperatorConfig,
    mounts: MountSources,
    object_url: str,
    entrypoint: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The Job of one attempt."""
    name = job_name(obj, action.generation, action.attempt)
    run_labels = names.labels(obj, generation=action.generation, attempt=action.attempt, role="job")
    version = run_version(action.generation, action.attempt)
    annotations = {ANNOTATION_NAME: obj.metadata.name, ANNOTATION_VERSION: version}
    owner = [names.owner_reference(obj)]
    spec = workload_pod_spec(obj, action.image, cfg, mounts, (object_url, version), entrypoint)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": obj.metadata.namespace,
            "labels": run_labels,
            "annotations": annotations,
            "ownerReferences": owner,
        },
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {
                    "labels": {**cfg.workload_pod_labels, **run_labels},
                    "annotations": {**annotations, **params_annotation(obj)},
                },
                "spec": spec,
            },
        },
    }
    return job


def condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return dict(c)
    return None


def main_termination(pod: dict[str, Any] | None) -> dict[str, Any] | None:
    """The workload container's ``terminated`` state, once it has ended."""
    for cs in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == MAIN:
            terminated = (cs.get("state") or {}).get("terminated")
            return dict(terminated) if terminated else None
    return None


def image_error(pod: dict[str, Any] | None) -> str | None:
    """Why the pod's images cannot be pulled, if that is what it waits on."""
    status = (pod or {}).get("status") or {}
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in IMAGE_ERRORS:
            return f"{cs.get('image')}: {waiting['reason']}: {waiting.get('message', '')}".strip()
    return None


# A container that cannot be created from its spec (a missing Secret or key, a bad mount).
CONFIG_ERRORS = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}


def pod_waiting(pod: dict[str, Any] | None) -> tuple[str, str] | None:
    """Why a pod that should run does not (yet): the scheduler found no node for it, or a
    container cannot be created; the reason and the cluster's own message."""
    status = (pod or {}).get("status") or {}
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            reason = c.get("reason") or "Unschedulable"
            return reason, c.get("message") or "no node can run the pod"
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in CONFIG_ERRORS:
            return waiting["reason"], f"{cs.get('name')}: {waiting.get('message', '')}".strip()
    return None


def _timestamp(value: str | None) -> float | None:
    if not value:
        return None
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def job_state(
    job: dict[str, Any], pod: dict[str, Any] | None, artifacts: Artifacts | None, log_tail: str
) -> JobState:
    """A run as ``decide`` sees it: the Job's conditions, then its pod's workload container.
    ``artifacts`` is the committed manifest of the run's version (None if there is none)."""
    labels = job["metadata"].get("labels") or {}
    generation = int(labels.get(names.LABEL_GENERATION, 0))
    attempts = int(labels.get(names.LABEL_ATTEMPT, 1))
    ended = main_termination(pod)
    exit_code = int(ended["exitCode"]) if ended and "exitCode" in ended else None
    finished = _timestamp((ended or {}).get("finishedAt"))
    if condition(job, "Complete"):
        if artifacts is None:
            return JobState(
                generation,
                Phase.FAILED,
                attempts,
                exit_code=exit_code,
                message="the job completed but its artifacts are not committed",
                finished_at=finished,
            )
        return JobState(generation, Phase.SUCCEEDED, attempts, exit_code=0, artifacts=artifacts)
    failed = condition(job, "Failed")
    if failed or (ended is not None and exit_code != 0):
        reason = (ended or {}).get("reason") or (failed or {}).get("reason", "")
        if exit_code == 0:  # the command succeeded: storing its artifacts did not
            message = "the job succeeded but storing its artifacts failed"
        else:
            generic = not reason or reason in ("Error", "Completed")
            message = "" if generic else f"{reason}, exit code {exit_code}"
        return JobState(
            generation,
            Phase.FAILED,
            attempts,
            exit_code=exit_code,
            message=message,
            log_tail=log_tail,
            finished_at=finished or _timestamp((failed or {}).get("lastTransitionTime")),
        )
    if ended is not None:  # exited 0; the committer is storing the artifacts
        return JobState(generation, Phase.COMMITTING, attempts, exit_code=0)
    return JobState(generation, Phase.RUNNING, attempts, waiting=pod_waiting(pod))
