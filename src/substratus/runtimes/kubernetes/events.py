"""Our objects' events on a cluster: a core/v1 Event for each Ready change (core/events.py), so
`kubectl describe`, `kubectl events` and `sub events` all show them."""

from __future__ import annotations

import os
import socket
from typing import Any

from substratus.api.kinds import API_VERSION
from substratus.core.conditions import now_iso
from substratus.core.events import Notice

COMPONENT = "substratus-operator"


def event_manifest(kind: str, body: dict[str, Any], n: Notice) -> dict[str, Any]:
    meta = body["metadata"]
    now = now_iso()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": kind,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "reason": n.reason,
        "message": n.message,
        "type": n.type,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": os.environ.get("POD_NAME") or socket.gethostname(),
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
