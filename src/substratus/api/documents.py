"""Manifest text to documents, and the checks a document passes before any model sees it
(depth, JSON data, size): what the CLI needs without importing pydantic."""

from __future__ import annotations

from typing import Any

import yaml

from substratus.api.errors import ValidationFailed
from substratus.api.limits import size_problem, tree_problem
from substratus.api.yamlload import YAMLLimitError, load_all


def check_document(doc: dict[str, Any], source: str) -> None:
    """Refuse a document that is too deep, not JSON data, or too large for one object."""
    problem = tree_problem(doc)
    if problem is None:
        reason = size_problem(doc)
        problem = ("", reason) if reason else None
    if problem is not None:
        meta = doc.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        where = f"{source}: {doc.get('kind')}/{name}" if isinstance(name, str) else source
        raise ValidationFailed(where, [problem])


def load_yaml_documents(text: str, source: str) -> list[Any]:
    """The non-empty documents of a YAML (or JSON) text, within the bounds of ``limits``."""
    try:
        return [d for d in load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" (line {mark.line + 1}, column {mark.column + 1})"
        problem = getattr(exc, "problem", None) or str(exc)
        what = "YAML" if isinstance(exc, YAMLLimitError) else "malformed YAML"
        raise ValidationFailed(source, [("", f"{what}{where}: {problem}")]) from None
