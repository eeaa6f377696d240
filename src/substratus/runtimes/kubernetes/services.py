"""A Server as a Deployment (``spec.replicas``) behind a Service, and what the operator reads
back from them. The pods carry the same contract as a Job's (pods.py) without the committer;
they listen on ``PORT`` 8080 on every address, and are Ready when ``GET /`` answers, as the
local runtime's probe asks. A Notebook takes the same path with one replica on port 8888, ready
when ``GET /api`` answers, plus a home volume and its token (notebooks.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from substratus.api.kinds import Notebook, Resource, Server
from substratus.core.actions import EnsureService
from substratus.core.observed import ServiceState
from substratus.core.world import MountSources
from substratus.runtimes.kubernetes import autoscaling, names, notebooks
from substratus.runtimes.kubernetes.config import OperatorConfig
from substratus.runtimes.kubernetes.jobs import ANNOTATION_NAME, pod_waiting
from substratus.runtimes.kubernetes.pods import (
    MAIN,
    params_annotation,
    workload_pod_spec,
)

PORT = 8080
ANNOTATION_IMAGE = f"{names.GROUP}/image"  # the image decide asked for (before mapping)


def service_name(obj: Resource) -> str:
    return names.child_name(obj, "svc")


def deployment_name(obj: Resource) -> str:
    return names.child_name(obj, "deploy")


def port(obj: Resource) -> int:
    return notebooks.PORT if isinstance(obj, Notebook) else PORT


def service_url(obj: Resource, in_cluster: bool = False) -> str:
    """The replicas' address; an autoscaled Server's users are given its proxy's instead."""
    autoscaled = isinstance(obj, Server) and obj.spec.autoscaling is not None
    if autoscaled and not in_cluster:
        return autoscaling.proxy_url(obj)
    return f"http://{service_name(obj)}.{obj.metadata.namespace}.svc.cluster.local:{port(obj)}"


def service_children(
    obj: Resource,
    action: EnsureService,
    cfg: OperatorConfig,
    mounts: MountSources,
    entrypoint: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The Deployment and the Service of a Server's or Notebook's
    generation (a Notebook's claim and token Secret are made apart: they outlive a
    generation)."""
    deploy = deployment_name(obj)
    selector = names.labels(obj, role="service")
    template_labels = {
        **cfg.workload_pod_labels,
        **selector,
        names.LABEL_GENERATION: str(action.generation),
    }
    owner = [names.owner_reference(obj)]
    meta = {"namespace": obj.metadata.namespace, "labels": selector, "ownerReferences": owner}
    annotations = {ANNOTATION_NAME: obj.metadata.name, ANNOTATION_IMAGE: action.image}
    spec = workload_pod_spec(obj, action.image, cfg, mounts, entrypoint=entrypoint)
    spec["restartPolicy"] = "Always"
    main = next(c for c in spec["containers"] if c["name"] == MAIN)
    listen = port(obj)
    main["env"] += [{"name": "PORT", "value": str(listen)}, {"name": "HOST", "value": "0.0.0.0"}]
    if isinstance(obj, Server) and obj.spec.quantization is not None:
        main["env"].append({"name": "QUANTIZATION_BITS", "value": str(obj.spec.quantization.bits)})
    if isinstance(obj, Notebook):
        notebooks.with_home_and_token(obj, spec, main)
    main["ports"] = [{"name": "http", "containerPort": listen}]
    main["readinessProbe"] = {
        "httpGet": {
            "path": notebooks.PROBE_PATH if isinstance(obj, Notebook) else "/",
            "port": listen,
        },
        "periodSeconds": 2,
        "failureThreshold": 3,
    }
    if action.autoscaling is not None:
        # A replica scaled down gets SIGTERM as its pod starts terminating; the proxy hears of
        # it within a poll (0.5 s). Until then it may still send the replica a request, which
        # a server shutting down would refuse: the pod keeps serving a moment first.
        main["lifecycle"] = {"preStop": {"sleep": {"seconds": autoscaling.PRESTOP_SECONDS}}}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": deploy, "annotations": annotations, **meta},
        "spec": {
            "replicas": action.replicas,
            # A notebook's ReadWriteOnce home: the old pod lets go before the new one mounts.
            "strategy": {"type": "Recreate" if isinstance(obj, Notebook) else "RollingUpdate"},
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": template_labels,
                    "annotations": {**annotations, **params_annotation(obj)},
                },
                "spec": spec,
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service_name(obj), "annotations": annotations, **meta},
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": listen, "targetPort": listen}],
        },
    }
    if action.autoscaling is not None:
        # Users are given the proxy; the replicas' Service stays for those who address them.
        proxy = autoscaling.proxy_children(obj, action, action.autoscaling, cfg)
        return [service, deployment, *proxy]
    return [deployment, service]


def service_state(
    obj: Resource,
    deployment: dict[str, Any],
    pods: list[dict[str, Any]],
    log_tail: str,
    proxy_ready: bool = False,
) -> ServiceState:
    """A Server's replicas as ``decide`` sees them: the Deployment's generation and counts,
    and its pods' restarts (a crash loop) with the last exit code."""
    template = deployment["spec"]["template"]
    labels = template["metadata"].get("labels") or {}
    status = deployment.get("status") or {}
    generation = int(labels.get(names.LABEL_GENERATION, 0))
    current = [
        p
        for p in pods
        if (p["metadata"].get("labels") or {}).get(names.LABEL_GENERATION) == str(generation)
    ]
    restarts, last_exit = 0, None
    for pod in current:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            if cs.get("name") != MAIN:
                continue
            restarts += int(cs.get("restartCount", 0))
            ended = (cs.get("lastState") or {}).get("terminated")
            if ended:
                last_exit = ended.get("exitCode")
    ready = int(status.get("readyReplicas") or 0)
    waiting = next((w for p in reversed(current) if (w := pod_waiting(p)) is not None), None)
    autoscaled = isinstance(obj, Server) and obj.spec.autoscaling is not None
    return ServiceState(
        generation=generation,
        image=(deployment["metadata"].get("annotations") or {}).get(ANNOTATION_IMAGE, ""),
        replicas=int(status.get("replicas") or 0),
        ready_replicas=ready,
        restarts=restarts,
        last_exit_code=last_exit,
        log_tail=log_tail if restarts else "",
        url=service_url(obj) if ready else None,
        waiting=waiting,
        loading=sum(1 for p in current if _loading(p)),
        wanted=int(deployment["spec"].get("replicas", 1)) if autoscaled else None,
        proxy_url=autoscaling.proxy_url(obj) if autoscaled and proxy_ready else None,
    )


def _loading(pod: dict[str, Any]) -> bool:
    """Started and not yet Ready (loading its model); a Pending pod loads nothing."""
    if pod["metadata"].get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    if status.get("phase") != "Running":
        return False
    conditions = status.get("conditions") or []
    ready: dict[str, Any] = next((c for c in conditions if c.get("type") == "Ready"), {})
    return ready.get("status") != "True"
