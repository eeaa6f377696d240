"""An autoscaled Server on a cluster: its proxy (a Deployment of the helper image and the Service
that ``status.url`` names), and a poller that asks each proxy for its load through the API
server's service proxy (so the operator needs no route to pods) and queues the Server when the
core would now want another number of replicas."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from lightkube import ApiError, Client

from substratus.api.kinds import Autoscaling, Resource, Server
from substratus.api.loading import parse_object
from substratus.core.actions import EnsureService
from substratus.core.autoscale import LOAD_PATH, Load, rescales
from substratus.core.contract import API_KEYS_ENV
from substratus.core.every import Every
from substratus.core.graph import Key
from substratus.core.observed import ServiceState
from substratus.runtimes.kubernetes import names
from substratus.runtimes.kubernetes.config import OperatorConfig
from substratus.runtimes.kubernetes.pods import workload_env

log = logging.getLogger("substratus.operator")

PORT = 8080
MODULE = "substratus.workloads.proxy"
ROLE = "proxy"
POLL_SECONDS = 0.5


def proxy_name(obj: Resource) -> str:
    return names.child_name(obj, "proxy")


def proxy_url(obj: Resource) -> str:
    return f"http://{proxy_name(obj)}.{obj.metadata.namespace}.svc.cluster.local:{PORT}"


def proxy_children(
    obj: Resource, action: EnsureService, policy: Autoscaling, cfg: OperatorConfig, upstream: str
) -> list[dict[str, Any]]:
    """The proxy's Deployment (one replica: it holds no state but the load window) and its
    Service, forwarding to ``upstream`` (the replicas' Service)."""
    selector = names.labels(obj, role=ROLE)
    owner = [names.owner_reference(obj)]
    meta = {"namespace": obj.metadata.namespace, "labels": selector, "ownerReferences": owner}
    annotations = {f"{names.GROUP}/object-name": obj.metadata.name}
    env = {
        "PORT": str(PORT),
        "HOST": "0.0.0.0",
        "UPSTREAMS": upstream,
        "QUEUE_LIMIT": str(policy.queue_limit),
        "QUEUE_TIMEOUT_SECONDS": str(policy.queue_timeout_seconds),
        "LOAD_WINDOW_SECONDS": str(policy.scale_down_delay_seconds),
    }
    keys = [e for e in workload_env(obj) if e["name"] == API_KEYS_ENV]
    container = {
        "name": ROLE,
        "image": cfg.helper_image,
        "imagePullPolicy": cfg.image_pull_policy,
        "command": ["python", "-m", MODULE],
        "env": [{"name": k, "value": v} for k, v in env.items()] + keys,
        "ports": [{"name": "http", "containerPort": PORT}],
        "readinessProbe": {"httpGet": {"path": "/", "port": PORT}, "periodSeconds": 2},
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": proxy_name(obj), "annotations": annotations, **meta},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": {**cfg.workload_pod_labels, **selector},
                    "annotations": annotations,
                },
                "spec": {
                    "containers": [container],
                    "automountServiceAccountToken": False,
                    # Held requests get the time to be answered when the pod is replaced.
                    "terminationGracePeriodSeconds": min(policy.queue_timeout_seconds, 300),
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": proxy_name(obj), "annotations": annotations, **meta},
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": PORT, "targetPort": PORT}],
        },
    }
    return [deployment, service]


def is_proxy(obj: Resource, child: dict[str, Any]) -> bool:
    return bool(child["kind"] == "Deployment" and child["metadata"]["name"] == proxy_name(obj))


def set_upstream(deployment: dict[str, Any], url: str) -> None:
    """Point the proxy's Deployment at ``url`` (the replicas' Service by its cluster IP)."""
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    for entry in container["env"]:
        if entry["name"] == "UPSTREAMS":
            entry["value"] = url


def proxy_ready(obj: Resource, deployments: list[dict[str, Any]]) -> bool:
    name = proxy_name(obj)
    for d in deployments:
        if d["metadata"]["name"] == name:
            return int((d.get("status") or {}).get("readyReplicas") or 0) > 0
    return False


class LoadPoller(Every):
    """Asks the proxies of the Servers it is given for their load, every ``POLL_SECONDS``."""

    def __init__(
        self,
        client: Client,
        servers: Callable[[], list[dict[str, Any]]],
        service_state: Callable[[Resource], ServiceState | None],
        enqueue: Callable[[Key], None],
    ):
        self.client = client
        self.servers = servers
        self.service_state = service_state
        self.enqueue = enqueue
        self.loads: dict[Key, Load] = {}
        super().__init__(POLL_SECONDS, self.poll, "autoscaler", log)

    def poll(self) -> None:
        seen: set[Key] = set()
        for body in self.servers():
            try:
                obj = parse_object(body, "watched object")
            except ValueError:
                continue
            if not isinstance(obj, Server) or obj.spec.autoscaling is None:
                continue
            svc = self.service_state(obj)
            if svc is None or svc.proxy_url is None:
                continue
            seen.add(obj.key)
            load = self.fetch(obj)
            if load is None or self.loads.get(obj.key) == load:
                continue
            self.loads[obj.key] = load
            if rescales(obj.spec.autoscaling, svc, load):
                self.enqueue(obj.key)
        for key in set(self.loads) - seen:
            del self.loads[key]

    def fetch(self, obj: Resource) -> Load | None:
        """The proxy's load through ``services/NAME:http/proxy`` (RBAC: services/proxy get)."""
        ns, name = obj.metadata.namespace, proxy_name(obj)
        http = self.client._client  # lightkube's request layer: a GET it has no resource for
        url = f"/api/v1/namespaces/{ns}/services/{name}:http/proxy{LOAD_PATH}"
        try:
            response = http._client.get(url, timeout=2)
        except Exception as exc:  # a connection problem: ask again next round
            log.debug("load of %s/%s: %s", ns, name, exc)
            return None
        if response.status_code != 200:
            return None
        try:
            return Load.from_json(response.json())
        except (ValueError, ApiError):
            return None
