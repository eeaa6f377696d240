"""An autoscaled Server on a cluster: its proxy (a Deployment of the helper image and the Service
that ``status.url`` names), and a poller that, through the API server's service proxy (so the
operator needs no route to pods):

- asks each proxy for its load and queues the Server when the core would now want another
  number of replicas;
- tells each proxy its replicas' pod addresses, from the operator's watch of pods, whenever they
  differ from the list the proxy reports. The proxy reaches the replicas directly, as KubeAI's
  does: it balances by its own count of each replica's requests, probes a new pod as soon as it
  has an address (not when the kubelet next finds it ready), and needs neither DNS nor
  kube-proxy's rules for a Service. The PUT carries the token of a Secret the Server owns, which
  the proxy's pod reads as ``PROXY_TOKEN``: nobody else can point the proxy elsewhere.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

from lightkube import ApiError, Client
from lightkube.resources.core_v1 import Secret

from substratus.api.kinds import Autoscaling, Resource, Server
from substratus.api.loading import parse_object
from substratus.core.actions import EnsureService
from substratus.core.autoscale import (
    LOAD_PATH,
    TOKEN_ENV,
    TOKEN_HEADER,
    UPSTREAMS_PATH,
    Load,
    rescales,
)
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
PRESTOP_SECONDS = 2  # a replica's wait before it shuts down: several polls
TOKEN_KEY = "token"


def proxy_name(obj: Resource) -> str:
    return names.child_name(obj, "proxy")


def proxy_url(obj: Resource) -> str:
    return f"http://{proxy_name(obj)}.{obj.metadata.namespace}.svc.cluster.local:{PORT}"


def token_secret_name(obj: Resource) -> str:
    """The proxy token's Secret, named for this Server's uid: a Server deleted and made again
    under its name gets a Secret of its own, not the old one that the garbage collector has
    yet to remove (whose token would then vanish under the new proxy)."""
    uid = (obj.metadata.uid or "").replace("-", "")[:10]
    return names.child_name(obj, f"proxy-{uid}" if uid else "proxy")


def token_secret(obj: Resource) -> dict[str, Any]:
    """The Secret that holds the proxy's token: made once (a second create finds it), owned by
    the Server, kept when autoscaling is turned off and on again."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": token_secret_name(obj),
            "namespace": obj.metadata.namespace,
            "labels": names.labels(obj, role=ROLE),
            "ownerReferences": [names.owner_reference(obj)],
        },
        "type": "Opaque",
        "stringData": {TOKEN_KEY: secrets.token_urlsafe(32)},
    }


def proxy_children(
    obj: Resource, action: EnsureService, policy: Autoscaling, cfg: OperatorConfig
) -> list[dict[str, Any]]:
    """The proxy's Deployment (one replica: it holds no state but the load window) and its
    Service. Its replicas' addresses come from the poller (``replica_urls``)."""
    selector = names.labels(obj, role=ROLE)
    owner = [names.owner_reference(obj)]
    meta = {"namespace": obj.metadata.namespace, "labels": selector, "ownerReferences": owner}
    annotations = {f"{names.GROUP}/object-name": obj.metadata.name}
    env = {
        "PORT": str(PORT),
        "HOST": "0.0.0.0",
        "QUEUE_LIMIT": str(policy.queue_limit),
        "QUEUE_TIMEOUT_SECONDS": str(policy.queue_timeout_seconds),
        "LOAD_WINDOW_SECONDS": str(policy.scale_down_delay_seconds),
    }
    keys = [e for e in workload_env(obj) if e["name"] == API_KEYS_ENV]
    token_ref = {"secretKeyRef": {"name": token_secret_name(obj), "key": TOKEN_KEY}}
    container = {
        "name": ROLE,
        "image": cfg.helper_image,
        "imagePullPolicy": cfg.image_pull_policy,
        "command": ["python", "-m", MODULE],
        "env": [{"name": k, "value": v} for k, v in env.items()]
        + [{"name": TOKEN_ENV, "valueFrom": token_ref}, *keys],
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


def replica_urls(pods: list[dict[str, Any]], port: int) -> list[str]:
    """The replicas the proxy may send to: each of a Server's pods that has an address and is
    not going away (one still loading is included: the proxy's own probe finds it ready)."""
    urls = []
    for pod in pods:
        meta, status = pod["metadata"], pod.get("status") or {}
        if (meta.get("labels") or {}).get(names.LABEL_ROLE) != "service":
            continue
        if meta.get("deletionTimestamp") or status.get("phase") != "Running":
            continue
        ip = status.get("podIP")
        if ip:
            host = f"[{ip}]" if ":" in ip else ip
            urls.append(f"http://{host}:{port}")
    return sorted(urls)


def proxy_ready(obj: Resource, deployments: list[dict[str, Any]]) -> bool:
    name = proxy_name(obj)
    for d in deployments:
        if d["metadata"]["name"] == name:
            return int((d.get("status") or {}).get("readyReplicas") or 0) > 0
    return False


class LoadPoller(Every):
    """Asks the proxies of the Servers it is given for their load, and tells them their
    replicas, every ``POLL_SECONDS``."""

    def __init__(
        self,
        client: Client,
        servers: Callable[[], list[dict[str, Any]]],
        service_state: Callable[[Resource], ServiceState | None],
        replicas: Callable[[Resource], list[str]],
        enqueue: Callable[[Key], None],
    ):
        self.client = client
        self.servers = servers
        self.service_state = service_state
        self.replicas = replicas  # the URLs of a Server's replicas, from the watch of pods
        self.enqueue = enqueue
        self.loads: dict[Key, Load] = {}
        self._tokens: dict[Key, str] = {}
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
            report = self._get(obj, LOAD_PATH)
            if report is None:
                continue
            wanted = self.replicas(obj)
            if report.get("upstreams") != wanted:
                self.tell(obj, wanted)
            try:
                load = Load.from_json(report)
            except ValueError:
                continue
            if self.loads.get(obj.key) == load:
                continue
            self.loads[obj.key] = load
            if rescales(obj.spec.autoscaling, svc, load):
                self.enqueue(obj.key)
        for key in set(self.loads) - seen:
            del self.loads[key]
        for key in set(self._tokens) - seen:
            del self._tokens[key]

    def tell(self, obj: Resource, urls: list[str]) -> None:
        """PUT the replicas' addresses to the proxy, with its token."""
        token = self._token(obj)
        if token is None:
            return
        response = self._send(
            obj, "PUT", UPSTREAMS_PATH, content=json.dumps(urls),
            headers={TOKEN_HEADER: token, "Content-Type": "application/json"},
        )  # fmt: skip
        if response is not None and response.status_code == 403:
            self._tokens.pop(obj.key, None)  # the Secret was made again: read it again
        elif response is not None and response.status_code != 200:
            log.warning(
                "%s/%s: the proxy refused its replicas (%d): %s", obj.metadata.namespace,
                obj.metadata.name, response.status_code, response.text[:200],
            )  # fmt: skip

    def _token(self, obj: Resource) -> str | None:
        if obj.key not in self._tokens:
            try:
                name = token_secret_name(obj)
                secret = self.client.get(Secret, name, namespace=obj.metadata.namespace)
            except ApiError as e:
                log.debug("token of %s: %s", token_secret_name(obj), e.status.message)
                return None
            value = (secret.data or {}).get(TOKEN_KEY)
            if not value:
                return None
            self._tokens[obj.key] = base64.b64decode(value).decode()
        return self._tokens[obj.key]

    def _get(self, obj: Resource, path: str) -> dict[str, Any] | None:
        response = self._send(obj, "GET", path)
        if response is None or response.status_code != 200:
            return None
        try:
            doc = response.json()
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def _send(self, obj: Resource, method: str, path: str, **kwargs: Any) -> Any:
        """A request to the proxy through ``services/NAME:http/proxy`` (RBAC: services/proxy
        get and update); None when it could not be sent (asked again next round)."""
        ns, name = obj.metadata.namespace, proxy_name(obj)
        http = self.client._client  # lightkube's request layer: requests it has no resource for
        url = f"/api/v1/namespaces/{ns}/services/{name}:http/proxy{path}"
        try:
            return http._client.request(method, url, timeout=2, **kwargs)
        except Exception as exc:  # a connection problem: again next round
            log.debug("%s %s of %s/%s: %s", method, path, ns, name, exc)
            return None
