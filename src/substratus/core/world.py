"""What every runtime observes the same way about an object's world, from lookups it supplies:
its dependencies' readiness, the secrets its env needs, which dependency is mounted where.

The local supervisor answers the lookups from SQLite, the Kubernetes operator from the API
server; the rules (which field is a dependency, what a missing key means, which reference is
``model/`` and which is ``data/``) are here once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from substratus.api.common import EnvFrom
from substratus.api.kinds import Resource
from substratus.core.graph import Key, dependencies
from substratus.core.observed import DepState

# Stored object (or None) by key.
ObjectLookup = Callable[[Key], Mapping[str, Any] | None]
# A Secret's data (or None) by namespace and name.
SecretLookup = Callable[[str, str], Mapping[str, Any] | None]

# The spec fields whose object is mounted read-only at model/ and at data/.
MODEL_FIELDS = ("baseModel", "model")
DATA_FIELDS = ("trainingDataset", "dataset")


def dependency_states(obj: Resource, lookup: ObjectLookup) -> dict[str, DepState]:
    """Found, ready and the artifact URL of each object ``obj`` references, by spec field."""
    deps: dict[str, DepState] = {}
    for dep in dependencies(obj):
        body = lookup(dep.key)
        status = (body or {}).get("status") or {}
        deps[dep.field] = DepState(
            found=body is not None, ready=bool(status.get("ready")), url=status.get("url")
        )
    return deps


def missing_secrets(obj: Resource, lookup: SecretLookup) -> list[str]:
    """``env.NAME: ...`` for each ``secretKeyRef`` whose Secret or key does not exist."""
    problems = []
    for name, value in obj.spec.env.items():
        if isinstance(value, EnvFrom):
            ref = value.secret_key_ref
            data = lookup(obj.metadata.namespace, ref.name)
            if data is None:
                problems.append(f"env.{name}: secret {ref.name!r} not found")
            elif ref.key not in data:
                problems.append(f"env.{name}: secret {ref.name!r} has no key {ref.key!r}")
    return problems


@dataclass(frozen=True)
class MountSources:
    """The dependencies whose committed artifacts a workload sees at model/ and data/."""

    model: DepState | None
    data: DepState | None


def mount_sources(deps: Mapping[str, DepState]) -> MountSources:
    def first(fields: tuple[str, ...]) -> DepState | None:
        return next((deps[f] for f in fields if f in deps), None)

    return MountSources(model=first(MODEL_FIELDS), data=first(DATA_FIELDS))
