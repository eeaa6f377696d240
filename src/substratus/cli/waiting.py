"""Waiting for objects to become ready, with progress shown on the terminal."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from substratus.cli.common import WaitFailed as WaitFailed  # re-exported
from substratus.cli.common import WaitTimeout as WaitTimeout
from substratus.cli.output import progress_text
from substratus.core.client import Client
from substratus.core.conditions import TERMINAL_REASONS

if TYPE_CHECKING:
    from rich.console import Console


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
    # A terminal gets a spinner; a log (CI, a pipe) gets one line per change of state.
    status_line = console.status(f"{label}: waiting") if console and console.is_terminal else None
    shown = ""
    if status_line:
        status_line.start()
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(_timeout_message(label, condition, last))
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
                done = progress_text(obj.get("status") or {}, full=True)
                line = f"{label}: {reason} {done or _progress(message)}".rstrip()
                if status_line:
                    status_line.update(line)
                elif console is not None and line != shown and reason not in TERMINAL_REASONS:
                    console.print(line, markup=False, highlight=False)
                shown = line
                if reason in TERMINAL_REASONS:
                    raise WaitFailed(f"{label}: {reason}: {message}")
            if condition == "delete" and last is None:
                return None
    finally:
        if status_line:
            status_line.stop()


def _progress(message: str) -> str:
    """One line for the spinner: the message's first line, and the newest log line under it
    (a long job's progress), never a dangling "log tail:"."""
    head, _, tail = message.partition("\n")
    head = head.removesuffix("; log tail:").removesuffix("log tail:")
    newest = next((line for line in reversed(tail.splitlines()) if line.strip()), "")
    return f"{head} | {newest.strip()[:120]}" if newest else head


def _timeout_message(label: str, condition: str, last: dict[str, Any] | None) -> str:
    text = f"timed out waiting for {label} to be {condition}"
    if last is None or condition != "ready":
        return text
    _, reason, message = _ready_reason(last)
    return f"{text}; last state: {reason}: {message}" if message else f"{text}; last: {reason}"
