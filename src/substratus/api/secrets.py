"""Validating a v1 Secret as Kubernetes does, before the local runtime stores it.

Its name and namespace end up in URL paths (``/secrets/{namespace}/{name}``) and its keys in
files and environment variables: a name like ``Bad/../Name`` could be stored but never
addressed again, so it is refused here, with every problem named at once.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from substratus.api.documents import check_document
from substratus.api.errors import ValidationFailed
from substratus.api.limits import MAX_SECRET_BYTES
from substratus.api.names import dns_label_problem, dns_subdomain_problem, secret_key_problem


def _values(doc: dict[str, Any], field: str, problems: list[tuple[str, str]]) -> dict[str, str]:
    """The field's valid keys and string values; a problem for each other entry."""
    raw = doc.get(field)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append((field, "must be a mapping of key to value"))
        return {}
    out: dict[str, str] = {}
    for key, value in raw.items():
        problem = secret_key_problem(key)
        if problem:
            problems.append((field, problem))
        elif not isinstance(value, str):
            problems.append((f"{field}.{key}", "must be a string (quote it)"))
        else:
            out[key] = value
    return out


def parse_secret(doc: dict[str, Any], source: str) -> tuple[str, str, dict[str, str]]:
    """(namespace, name, decoded data) of a v1 Secret; raises ValidationFailed with every
    problem when it is not one Kubernetes would accept."""
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        raise ValidationFailed(f"{source}: Secret", [("metadata", "must be a mapping")])
    name, namespace = meta.get("name"), meta.get("namespace", "default")
    if not isinstance(name, str) or not name:
        raise ValidationFailed(f"{source}: Secret", [("metadata.name", "required")])
    check_document(doc, source)
    problems: list[tuple[str, str]] = []
    label = f"{source}: Secret/{name}"
    if problem := dns_subdomain_problem(name):
        problems.append(("metadata.name", problem))
        label = f"{source}: Secret {name!r}"
    if not isinstance(namespace, str):
        problems.append(("metadata.namespace", "must be a string"))
    elif problem := dns_label_problem(namespace):
        problems.append(("metadata.namespace", problem))
    data: dict[str, str] = {}
    for key, value in _values(doc, "data", problems).items():
        try:
            data[key] = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            problems.append((f"data.{key}", "not valid base64 text"))
    data.update(_values(doc, "stringData", problems))
    size = sum(len(k.encode()) + len(v.encode()) for k, v in data.items())
    if size > MAX_SECRET_BYTES:
        problems.append(("data", f"{size} bytes, more than the limit of {MAX_SECRET_BYTES}"))
    if problems:
        raise ValidationFailed(label, problems)
    assert isinstance(namespace, str)
    return namespace, name, data
