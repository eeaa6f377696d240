"""Bounds on what a document, a request and each number may hold.

Sizes follow Kubernetes (1.5 MiB objects as etcd stores them, 256 KiB of annotations, 1 MiB
Secrets, 3 MiB requests); numbers are bounded by what one machine can have, so that
``cpu: .inf`` or ``1e308`` is refused with the field's name rather than overflowing later.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

KiB, MiB = 1024, 1024 * 1024

MAX_OBJECT_BYTES = 3 * MiB // 2
MAX_ANNOTATIONS_BYTES = 256 * KiB
MAX_SECRET_BYTES = 1 * MiB
MAX_REQUEST_BYTES = 3 * MiB
# One manifest file or stream may hold several objects.
MAX_MANIFEST_BYTES = 8 * MiB

# Real manifests nest well under 20 levels; the bound keeps every recursive walk (YAML
# composer, JSON decoder and encoder, pydantic) far from Python's recursion limit.
MAX_DEPTH = 100
# Aliases per YAML document, and the nodes they may add when expanded (a "billion laughs"
# of a few hundred bytes otherwise becomes gigabytes once it is turned into JSON).
MAX_ALIASES = 100
MAX_ALIAS_NODES = 10_000

MAX_CPU = 1024  # cores
MAX_MEMORY_GB = 64 * 1024  # 64 TiB, beyond the largest single machines
MAX_DISK_GB = 1024 * 1024  # 1 PiB
MAX_GPUS = 64
MAX_REPLICAS = 1024

_SCALARS = (str, int, float, bool, type(None))


def _path(parts: list[str | int]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def tree_problem(doc: Any) -> tuple[str, str] | None:
    """(field path, reason) for a document that is not plain bounded JSON data, else None.

    Iterative, with one iterator per level (memory grows with the depth, not the size), so it
    is safe on any input; run it before anything recursive."""
    if not isinstance(doc, dict | list):
        return None if isinstance(doc, _SCALARS) else ("", "not JSON data")
    path: list[str | int] = []
    stack: list[tuple[Iterator[tuple[Any, Any]], bool]] = [_level(doc)]
    while stack:
        items, is_mapping = stack[-1]
        item = next(items, None)
        if item is None:
            stack.pop()
            if path:
                path.pop()
            continue
        key, value = item
        if is_mapping and not isinstance(key, str):
            return _path(path), f"key {key!r} must be a string"
        if len(path) >= MAX_DEPTH:
            return _path([*path, key]), f"nested deeper than {MAX_DEPTH} levels"
        if isinstance(value, dict | list):
            path.append(key)
            stack.append(_level(value))
        elif not isinstance(value, _SCALARS):
            return _path([*path, key]), f"a {type(value).__name__} value is not JSON data; quote it"
    return None


def _level(node: dict[Any, Any] | list[Any]) -> tuple[Iterator[tuple[Any, Any]], bool]:
    if isinstance(node, dict):
        return iter(node.items()), True
    return enumerate(node), False


def json_size(doc: Any) -> int:
    """Bytes of ``doc`` as compact JSON; call after ``tree_problem`` found nothing."""
    return len(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode())


def size_problem(doc: dict[str, Any], limit: int = MAX_OBJECT_BYTES) -> str | None:
    """Whether an object (without its status, which the system writes) fits ``limit``."""
    size = json_size({k: v for k, v in doc.items() if k != "status"})
    if size > limit:
        return f"the object is {size} bytes as JSON, more than the limit of {limit}"
    return None
