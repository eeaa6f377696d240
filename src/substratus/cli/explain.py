"""`sub explain KIND[.field...]`: a kind's or a field's documentation, as `kubectl explain`
prints it, from the schema the CRDs are generated from (so both say the same)."""

from __future__ import annotations

import textwrap
from typing import Any

from substratus.api.kinds import GROUP, VERSION
from substratus.api.loading import kind_of
from substratus.cli.targets import UsageError

JSON = dict[str, Any]
METADATA = "Standard object metadata: name, namespace, labels, annotations (the API server's)."


def schema_of(kind: str) -> JSON:
    from substratus.api.crds import crd_for

    crd = crd_for(kind_of(kind))
    root: JSON = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return root


def type_name(node: JSON) -> str:
    kind = node.get("type")
    if kind == "array":
        return f"[]{type_name(node.get('items') or {})}"
    if kind == "object" or (kind is None and "properties" in node):
        return "map[string]string" if "additionalProperties" in node else "Object"
    if kind is None:
        # A field without a type: the string-or-object shorthands (image: NAME) and free maps.
        return "string|Object" if node.get("x-kubernetes-preserve-unknown-fields") else "Object"
    return str(kind)


def _wrap(text: str, indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    for paragraph in (text or "<empty>").splitlines() or [""]:
        lines += textwrap.wrap(paragraph, 80 - indent, initial_indent=pad, subsequent_indent=pad)
    return lines or [pad]


def explain(path: str) -> str:
    """The text of `sub explain path` (e.g. ``model``, ``model.spec.image.git``)."""
    kind_text, *fields = path.split(".")
    try:
        cls = kind_of(kind_text)
        node = schema_of(cls.KIND)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for i, field in enumerate(fields):
        properties = node.get("properties") or {}
        if node.get("type") == "array":
            properties = (node.get("items") or {}).get("properties") or {}
        if field not in properties:
            where = ".".join([cls.KIND.lower(), *fields[:i]])
            known = ", ".join(sorted(properties)) or "none"
            raise UsageError(f'field "{field}" does not exist in {where} (fields: {known})')
        node = properties[field]
    lines = [f"GROUP:      {GROUP}", f"KIND:       {cls.KIND}", f"VERSION:    {VERSION}", ""]
    if fields:
        lines += [f"FIELD: {fields[-1]} <{type_name(node)}>", ""]
    description = node.get("description") or (METADATA if fields == ["metadata"] else "")
    lines += ["DESCRIPTION:", *_wrap(description, 4), ""]
    children = node.get("properties") or (node.get("items") or {}).get("properties") or {}
    if children:
        required = set(node.get("required") or (node.get("items") or {}).get("required") or [])
        lines.append("FIELDS:")
        for name, child in children.items():
            flag = " -required-" if name in required else ""
            lines.append(f"  {name}\t<{type_name(child)}>{flag}")
            about = child.get("description") or (METADATA if name == "metadata" else "")
            lines += _wrap(about, 4)
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
