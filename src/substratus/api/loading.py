"""Turning YAML/JSON documents into typed objects, with errors that name the field and why."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from substratus.api.compat import CompatError, written_loc
from substratus.api.documents import check_document as check_document  # re-exported
from substratus.api.documents import load_yaml_documents
from substratus.api.errors import ValidationFailed as ValidationFailed  # re-exported
from substratus.api.kindnames import kind_names
from substratus.api.kinds import API_VERSION, KINDS, Resource


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


def parse_documents(text: str, source: str = "<stdin>") -> list[Resource]:
    """Parse a multi-document YAML (or JSON) text; every document must be valid."""
    return [parse_object(d, source) for d in load_yaml_documents(text, source)]
