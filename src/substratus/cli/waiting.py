"""Waiting for objects to become ready, with progress shown on the terminal."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console

from substratus.core.client import Client

# Reasons after which waiting for Ready is pointless until the spec changes. (Capacity
# reasons such as InsufficientGPU are not: another workload may free what is needed.)
TERMINAL_REASONS = {"JobFailed", "BuildFailed", "ImageUnavailable"}


class WaitFailed(Exception):
    pass


class WaitTimeout(Exception):
    pass


def _ready_reason(obj: dict[str, Any]) -> tuple[bool, str, str]:
    status = obj.get("status") or {}
    cond: dict[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {}
    )
    current = status.get("observedGeneration") == obj["metadata"].get("generation")
    ready = bool(status.get("ready")) and current
    return ready, cond.get("reason", "Pending") if current else "Pending", cond.get("message", "")


def wait_for(
    client: Client,
    kind: str,
    namespace: str,
    name: str,
    condition: str,
    timeout: float,
    console: Console | None = None,
) -> dict[str, Any] | None:
    """Block until the object is ready (or deleted); returns its last state."""
    deadline = time.monotonic() + timeout
    label = f"{kind.lower()}/{name}"
    last: dict[str, Any] | None = None
    status_line = console.status(f"{label}: waiting") if console else None
    if status_line:
        status_line.start()
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(f"timed out waiting for {label} to be {condition}")
            for event in client.watch(kind, namespace, name, timeout=remaining):
                if event["type"] == "BOOKMARK":
                    if time.monotonic() >= deadline:
                        break
                    continue
                obj: dict[str, Any] = event["object"]
                if event["type"] == "DELETED":
                    if condition == "delete":
                        return obj
                    raise WaitFailed(f"{label} was deleted")
                last = obj
                if condition == "delete":
                    continue
                ready, reason, message = _ready_reason(obj)
                if ready:
                    return obj
                if status_line:
                    first = message.splitlines()[0] if message else ""
                    status_line.update(f"{label}: {reason} {first}")
                if reason in TERMINAL_REASONS:
                    raise WaitFailed(f"{label}: {reason}: {message}")
            if condition == "delete" and last is None:
                return None
    finally:
        if status_line:
            status_line.stop()
