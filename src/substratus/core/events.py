"""Events: what happened to an object, as `kubectl events` lists them. Both runtimes record one
whenever the Ready condition changes (a job starts, fails, succeeds; a server serves), and
list them in one shape, so `sub events` and `describe` read the same either way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from substratus.core.conditions import READY, TERMINAL_REASONS

MAX_MESSAGE = 1024


@dataclass(frozen=True)
class Notice:
    type: str  # Normal or Warning, as Kubernetes types events
    reason: str
    message: str


def _ready(status: dict[str, Any] | None) -> tuple[str, str, str]:
    for c in (status or {}).get("conditions") or []:
        if c.get("type") == READY:
            return str(c.get("status", "")), str(c.get("reason", "")), str(c.get("message", ""))
    return "", "", ""


def warning(reason: str) -> bool:
    return (
        reason in TERMINAL_REASONS
        or reason.endswith("NotFound")
        or reason.startswith("Insufficient")
    )


def notice(old: dict[str, Any] | None, new: dict[str, Any]) -> Notice | None:
    """The event that going from status ``old`` to ``new`` is, if any: a change of the Ready
    condition's status or reason (not of its message: progress is no event)."""
    was, now = _ready(old), _ready(new)
    if not now[1] or was[:2] == now[:2]:
        return None
    message = now[2].split("\n", 1)[0][:MAX_MESSAGE]
    return Notice("Warning" if warning(now[1]) else "Normal", now[1], message)


def event_row(
    kind: str, namespace: str, name: str, n: Notice, time: str, count: int = 1
) -> dict[str, Any]:
    """One event as the Client interface lists them."""
    return {
        "type": n.type,
        "reason": n.reason,
        "message": n.message,
        "object": f"{kind.lower()}/{name}",
        "namespace": namespace,
        "time": time,
        "count": count,
    }
