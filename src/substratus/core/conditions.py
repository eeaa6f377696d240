"""Kubernetes-style conditions: set one, keeping lastTransitionTime when its status is unchanged."""

from __future__ import annotations

from datetime import UTC, datetime

from substratus.api.common import Condition

READY = "Ready"
BUILT = "ImageBuilt"
COMPLETE = "JobComplete"
SERVING = "Serving"


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: bool | None,
    reason: str,
    message: str = "",
    generation: int | None = None,
) -> list[Condition]:
    """Return a new list with ``type_`` set; other conditions are kept in order."""
    text = "Unknown" if status is None else ("True" if status else "False")
    out: list[Condition] = []
    found = False
    for c in conditions:
        if c.type != type_:
            out.append(c)
            continue
        found = True
        when = c.last_transition_time if c.status == text else now_iso()
        out.append(
            Condition(
                type=type_,
                status=text,
                reason=reason,
                message=message,
                lastTransitionTime=when,
                observedGeneration=generation,
            )
        )
    if not found:
        out.append(
            Condition(
                type=type_,
                status=text,
                reason=reason,
                message=message,
                lastTransitionTime=now_iso(),
                observedGeneration=generation,
            )
        )
    return out


def get_condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)
