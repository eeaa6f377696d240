"""Kubernetes-style conditions: set one, keeping lastTransitionTime when its status is unchanged."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the models load when a condition is set: `sub wait` needs only the names
    from substratus.api.common import Condition

READY = "Ready"
BUILT = "ImageBuilt"
COMPLETE = "JobComplete"
SERVING = "Serving"

# Ready reasons after which waiting is pointless until the spec changes; `sub wait` stops on
# them. (Capacity reasons such as InsufficientGPU are not: another workload may free what is
# needed. A crash-looping service may recover, but a user waiting on it wants to see why now.)
TERMINAL_REASONS = frozenset(
    {
        "JobFailed",
        "BuildFailed",
        "ImageUnavailable",
        "SpecNotRunnable",
        "CrashLoopBackOff",
        "StartFailed",
    }
)


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
    from substratus.api.common import Condition

    text = "Unknown" if status is None else ("True" if status else "False")
    previous = get_condition(conditions, type_)
    kept = previous is not None and previous.status == text
    new = Condition(
        type=type_,
        status=text,
        reason=reason,
        message=message,
        lastTransitionTime=previous.last_transition_time if kept and previous else now_iso(),
        observedGeneration=generation,
    )
    if previous is None:
        return [*conditions, new]
    return [new if c.type == type_ else c for c in conditions]


def get_condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)
