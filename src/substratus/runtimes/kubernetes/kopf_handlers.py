"""kopf's part: the watches. Each event of one of our objects, or of a Job, Deployment or Pod
that carries our labels, queues the object for the operator's workers; kopf stores nothing on
the objects (only event handlers are registered: no progress annotations, no kopf finalizer)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import kopf

from substratus.api.kinds import KINDS
from substratus.runtimes.kubernetes import names
from substratus.runtimes.kubernetes.operator import RUN_KINDS, Operator

log = logging.getLogger("substratus.operator")
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def registry(op: Operator) -> kopf.OperatorRegistry:
    reg = kopf.OperatorRegistry()

    def on_object(kind: str) -> None:
        @kopf.on.event(names.GROUP, "v1", KINDS[kind].PLURAL, registry=reg)
        def handler(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
            op.object_event(kind, str(event.get("type") or "ADDED"), dict(body))

    for kind in RUN_KINDS:
        on_object(kind)

    ours = {names.LABEL_KIND: kopf.PRESENT}

    def on_child(kind: str, group: str, plural: str) -> None:
        @kopf.on.event(group, "v1", plural, labels=ours, registry=reg)
        def handler(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
            op.child_event(kind, str(event.get("type") or "ADDED"), dict(body))

    on_child("Job", "batch", "jobs")
    on_child("Deployment", "apps", "deployments")
    on_child("Pod", "", "pods")

    @kopf.on.login(registry=reg)
    def login(settings: kopf.OperatorSettings, **kwargs: Any) -> kopf.ConnectionInfo | None:
        # A registry of our own has none of kopf's default handlers: in a pod its
        # ServiceAccount, elsewhere the kubeconfig (KUBECONFIG or ~/.kube/config).
        return in_cluster(settings) or kopf.login_with_kubeconfig(settings=settings, **kwargs)

    @kopf.on.startup(registry=reg)
    def start(**_: Any) -> None:
        op.start()
        log.info("operator started: %s", ", ".join(sorted(KINDS[k].PLURAL for k in RUN_KINDS)))

    @kopf.on.cleanup(registry=reg)
    def cleanup(**_: Any) -> None:
        op.stop()

    return reg


def in_cluster(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo | None:
    """The pod's ServiceAccount, at the API server that KUBERNETES_SERVICE_HOST/PORT name (as
    client-go and lightkube find it; kopf's own handler asks DNS for kubernetes.default.svc,
    which a pod on the host's network, or a cluster without DNS, cannot resolve)."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    if not host or not (SERVICE_ACCOUNT / "token").is_file():
        return None
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    ca = SERVICE_ACCOUNT / "ca.crt"
    namespace = SERVICE_ACCOUNT / "namespace"
    return kopf.ConnectionInfo(
        server=f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}",
        ca_path=str(ca) if ca.is_file() else None,
        token=(SERVICE_ACCOUNT / "token").read_text().strip() or None,
        default_namespace=namespace.read_text().strip() if namespace.is_file() else None,
        trust_env=settings.networking.trust_env,
    )


def settings() -> kopf.OperatorSettings:
    s = kopf.OperatorSettings()
    s.posting.enabled = False  # our conditions say what happened, not k8s Events
    s.watching.server_timeout = 270
    s.watching.client_timeout = 300
    # Watch exactly our kinds and the configured namespaces: no watching of CRDs or of
    # namespaces, which the least-privilege RBAC does not allow (kopf would otherwise retry
    # those lists with back-off for about a minute before it starts).
    s.scanning.disabled = True
    return s
