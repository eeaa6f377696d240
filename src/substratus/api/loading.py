"""Turning YAML/JSON documents into typed objects, with errors that name the field and why."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml
from pydantic import ValidationError

from substratus.api.compat import CompatError, written_loc
from substratus.api.errors import ValidationFailed as ValidationFailed  # re-exported
from substratus.api.kindnames import kind_names
from substratus.api.kinds import API_VERSION, KINDS, Resource
from substratus.api.limits import size_problem, tree_problem
from substratus.api.yamlload import YAMLLimitError, load_all


def _path(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _reason(err: dict[str, Any]) -> str:
    msg = str(err["msg"])
    if err["type"] == "extra_forbidden":
        return "unknown field"
    if err["type"] == "missing":
        return "required field is missing"
    if err["type"] == "finite_number":
        return "must be a finite number"
    if err["type"] == "int_parsing_size":
        return "the number is too large"
    return msg.removeprefix("Value error, ")


_UNION_TAGS = {"str", "int", "float", "bool", "EnvFrom"}


def _clean_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    # pydantic adds union-member tags (e.g. "str", "EnvFrom") to the location; drop them.
    return tuple(p for p in loc if p not in _UNION_TAGS)


def kind_of(name: str) -> type[Resource]:
    """Resolve a kind from its name, plural or short name, case-insensitively (like kubectl)."""
    return KINDS[kind_names(name).kind]


def parse_object(doc: Any, source: str = "<object>") -> Resource:
    """Validate one decoded document as a Substratus object."""
    if not isinstance(doc, dict):
        raise ValidationFailed(source, [("", "expected a mapping with apiVersion, kind, metadata")])
    check_document(doc, source)
    kind = doc.get("kind")
    if not isinstance(kind, str) or not kind:
        raise ValidationFailed(source, [("kind", "required field is missing")])
    if kind not in KINDS:
        known = ", ".join(sorted(KINDS))
        problem = f"unknown kind {kind!r}: expected one of {known}"
        raise ValidationFailed(source, [("kind", problem)])
    api_version = doc.get("apiVersion")
    if api_version != API_VERSION:
        raise ValidationFailed(
            source, [("apiVersion", f"expected {API_VERSION!r}, got {api_version!r}")]
        )
    cls = KINDS[kind]
    try:
        return cls.model_validate(doc)
    except ValidationError as exc:
        spec_cls = cls.model_fields["spec"].annotation
        owner = spec_cls.__name__ if isinstance(spec_cls, type) else ""
        problems = [_problem(dict(e), owner, doc.get("spec")) for e in exc.errors()]
        name = (doc.get("metadata") or {}).get("name", "?")
        raise ValidationFailed(f"{source}: {kind}/{name}", problems) from None


def _problem(err: dict[str, Any], owner: str, raw_spec: Any) -> tuple[str, str]:
    """(field path as the user wrote it, reason) of one pydantic error."""
    loc, reason = _clean_loc(err["loc"]), _reason(err)
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, CompatError):
        loc, reason = (*loc, *cause.loc), cause.reason
    if loc[:1] == ("spec",):
        # The models saw the normalised spec; name the field the user wrote (compat.py).
        loc = ("spec", *written_loc(owner, raw_spec, loc[1:]))
    return _path(loc), reason


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


def parse_documents(text: str, source: str = "<stdin>") -> list[Resource]:
    """Parse a multi-document YAML (or JSON) text; every document must be valid."""
    return [parse_object(d, source) for d in load_yaml_documents(text, source)]
