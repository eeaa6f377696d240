"""kopf's part: the watches. Each event of one of our objects, or of a Job, Deployment or Pod
that carries our labels, queues the object for the operator's workers; kopf stores nothing on
the objects (only event handlers are registered: no progress annotations, no kopf finalizer)."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from substratus.api.kinds import KINDS
from substratus.runtimes.kubernetes import names
from substratus.runtimes.kubernetes.operator import RUN_KINDS, Operator

log = logging.getLogger("substratus.operator")


def registry(op: Operator) -> kopf.OperatorRegistry:
    reg = kopf.OperatorRegistry()

    def on_object(kind: str) -> None:
        @kopf.on.event(names.GROUP, "v1", KINDS[kind].PLURAL, registry=reg)
        def handler(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
            op.object_event(kind, str(event.get("type") or "ADDED"), dict(body))

    for kind in RUN_KINDS:
        on_object(kind)

    ours = {names.LABEL_KIND: kopf.PRESENT}

    @kopf.on.event("batch", "v1", "jobs", labels=ours, registry=reg)
    def on_job(body: kopf.Body, **_: Any) -> None:
        op.child_event(dict(body))

    @kopf.on.event("apps", "v1", "deployments", labels=ours, registry=reg)
    def on_deployment(body: kopf.Body, **_: Any) -> None:
        op.child_event(dict(body))

    @kopf.on.event("", "v1", "pods", labels=ours, registry=reg)
    def on_pod(body: kopf.Body, **_: Any) -> None:
        op.child_event(dict(body))

    @kopf.on.login(registry=reg)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # A registry of our own has none of kopf's default handlers: in a pod its
        # ServiceAccount, elsewhere the kubeconfig (KUBECONFIG or ~/.kube/config).
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=reg)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False  # our conditions say what happened, not k8s Events
        settings.watching.server_timeout = 270
        settings.watching.client_timeout = 300
        op.start()
        log.info("operator started: %s", ", ".join(sorted(KINDS[k].PLURAL for k in RUN_KINDS)))

    @kopf.on.cleanup(registry=reg)
    def cleanup(**_: Any) -> None:
        op.stop()

    return reg
