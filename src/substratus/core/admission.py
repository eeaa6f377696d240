"""Checks made when an object is applied, beyond its own schema: references and images."""

from __future__ import annotations

from collections.abc import Callable

from substratus.api.kinds import Notebook, Resource
from substratus.core.graph import Key, dependencies, find_cycle, format_key
from substratus.core.images import BASE_IMAGE, image_repository


def admission_problems(
    obj: Resource, lookup: Callable[[Key], Resource | None]
) -> list[tuple[str, str]]:
    """(field path, reason) pairs that make ``obj`` unacceptable; empty when it is fine."""
    problems: list[tuple[str, str]] = []
    for dep in dependencies(obj):
        if dep.key == obj.key:
            problems.append((f"spec.{dep.field}", "an object cannot reference itself"))
    if not problems:
        cycle = find_cycle(obj, lookup)
        if cycle:
            path = " -> ".join(format_key(k) for k in cycle)
            field = next(
                (d.field for d in dependencies(obj) if d.key == cycle[1]),
                "spec",
            )
            problems.append((f"spec.{field}", f"reference cycle: {path}"))
    name = obj.spec.image.name
    if (
        name is not None
        and not obj.spec.image.has_build
        and image_repository(name) == BASE_IMAGE
        and not obj.spec.command
        and not isinstance(obj, Notebook)  # a Notebook runs Jupyter by default
    ):
        problems.append(("spec.command", f"required with the {BASE_IMAGE} image"))
    return problems
