"""References between objects: which objects one needs, and cycles among them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from substratus.api.common import ObjectRef
from substratus.api.kinds import Model, Notebook, Resource, Server

Key = tuple[str, str, str]  # (kind, namespace, name)


@dataclass(frozen=True)
class Dependency:
    field: str  # spec field, e.g. "baseModel"
    label: str  # prefix of condition reasons, e.g. "BaseModel" -> BaseModelNotReady
    key: Key


def _key(kind: str, ref: ObjectRef, namespace: str) -> Key:
    return (kind, ref.namespace or namespace, ref.name)


def dependencies(obj: Resource) -> list[Dependency]:
    """The objects ``obj`` waits for, in the order their conditions are reported."""
    ns = obj.metadata.namespace
    deps: list[Dependency] = []
    if isinstance(obj, Model):
        if obj.spec.base_model:
            deps.append(
                Dependency("baseModel", "BaseModel", _key("Model", obj.spec.base_model, ns))
            )
        if obj.spec.training_dataset:
            deps.append(
                Dependency(
                    "trainingDataset", "Dataset", _key("Dataset", obj.spec.training_dataset, ns)
                )
            )
    elif isinstance(obj, Notebook):
        if obj.spec.model:
            deps.append(Dependency("model", "Model", _key("Model", obj.spec.model, ns)))
        if obj.spec.dataset:
            deps.append(Dependency("dataset", "Dataset", _key("Dataset", obj.spec.dataset, ns)))
    elif isinstance(obj, Server):
        deps.append(Dependency("model", "Model", _key("Model", obj.spec.model, ns)))
    return deps


def find_cycle(start: Resource, lookup: Callable[[Key], Resource | None]) -> list[Key] | None:
    """The reference cycle that ``start`` would close, as a path of keys, or None.

    ``lookup`` returns stored objects; ``start`` replaces its stored version.
    """
    path: list[Key] = []

    def visit(obj: Resource, seen: set[Key]) -> list[Key] | None:
        path.append(obj.key)
        for dep in dependencies(obj):
            if dep.key == start.key:
                return [*path, dep.key]
            if dep.key in seen:
                continue
            nxt = lookup(dep.key)
            if nxt is not None:
                found = visit(nxt, seen | {dep.key})
                if found:
                    return found
        path.pop()
        return None

    return visit(start, {start.key})


def dependents(target: Key, objects: Iterable[Resource]) -> list[Resource]:
    """Objects that reference ``target``: they are re-reconciled when it changes."""
    return [o for o in objects if any(d.key == target for d in dependencies(o))]


def format_key(key: Key) -> str:
    kind, ns, name = key
    return f"{kind}/{name}" if ns == "default" else f"{kind}/{ns}/{name}"
