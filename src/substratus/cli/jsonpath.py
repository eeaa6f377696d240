"""kubectl's JSONPath templates (``-o jsonpath=...``, ``-o custom-columns=...``).

The dialect of https://kubernetes.io/docs/reference/kubectl/jsonpath/: text with ``{...}``
expressions; ``$`` or ``.`` for the root, ``.field``, ``['field']``, ``..field`` (recursive),
``*``, ``[n]`` (negative from the end), ``[a:b]``, ``[a,b]``, filters ``[?(@.f == "v")]``
(``==  !=  <  <=  >  >=``, or ``[?(@.f)]`` for presence), ``{range ...}...{end}`` and string
literals (``{"\\n"}``). Several results of one expression are joined by spaces; maps and lists
print as JSON, as kubectl prints them.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class JSONPathError(ValueError):
    pass


# -- parsing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    kind: str  # field, recurse, wildcard, index, slice, union, filter
    arg: Any = None


@dataclass(frozen=True)
class Expr:
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class Text:
    value: str


@dataclass(frozen=True)
class Range:
    expr: Expr
    body: tuple[Any, ...]


_FILTER = re.compile(r"^@((?:\.[\w-]+|\[[^\]]*\])*)\s*(?:(==|!=|<=|>=|<|>)\s*(.+))?$")


def parse(template: str) -> tuple[Any, ...]:
    """The template's parts: Text, Expr and Range nodes."""
    parts: list[Any] = []
    stack: list[tuple[Expr, list[Any]]] = []
    i = 0
    while i < len(template):
        start = template.find("{", i)
        if start < 0:
            parts.append(Text(template[i:]))
            break
        if start > i:
            parts.append(Text(template[i:start]))
        end = _closing(template, start)
        inner = template[start + 1 : end].strip()
        i = end + 1
        if inner.startswith("range "):
            stack.append((parse_expr(inner[6:].strip()), parts))
            parts = []
        elif inner == "end":
            if not stack:
                raise JSONPathError("{end} without {range}")
            expr, outer = stack.pop()
            outer.append(Range(expr, tuple(parts)))
            parts = outer
        elif inner[:1] in ('"', "'"):
            parts.append(Text(_literal(inner)))
        else:
            parts.append(parse_expr(inner))
    if stack:
        raise JSONPathError("{range} without {end}")
    return tuple(parts)


def _closing(template: str, start: int) -> int:
    quote = ""
    for j in range(start + 1, len(template)):
        ch = template[j]
        if quote:
            if ch == "\\":
                continue
            if ch == quote and template[j - 1] != "\\":
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "}":
            return j
    raise JSONPathError(f"unclosed '{{' at {start}: {template[start:]!r}")


def _literal(text: str) -> str:
    """A quoted string, escapes read as in JSON (kubectl reads single quotes the same way)."""
    if text[0] == "'":
        text = '"' + text[1:-1].replace('\\"', '"').replace('"', '\\"') + '"'
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise JSONPathError(f"bad string literal {text}") from None
    if not isinstance(value, str):
        raise JSONPathError(f"bad string literal {text}")
    return value


def parse_expr(text: str) -> Expr:
    text = text.strip()
    if text.startswith("$"):
        text = text[1:]
    steps: list[Step] = []
    i = 0
    while i < len(text):
        if text.startswith("..", i):
            steps.append(Step("recurse"))
            i += 2
            if i < len(text) and text[i] not in ".[":
                i = _field(text, i, steps)
        elif text[i] == ".":
            i += 1
            if i < len(text) and text[i] not in ".[":
                i = _field(text, i, steps)
        elif text[i] == "[":
            end = _bracket_end(text, i)
            steps.append(_bracket(text[i + 1 : end]))
            i = end + 1
        else:
            i = _field(text, i, steps)
    return Expr(tuple(steps))


def _field(text: str, i: int, steps: list[Step]) -> int:
    m = re.compile(r"[^.\[\]]+").match(text, i)
    if not m:
        raise JSONPathError(f"expected a field name at {text[i:]!r}")
    name = m.group(0)
    steps.append(Step("wildcard") if name == "*" else Step("field", name))
    return m.end()


def _bracket_end(text: str, i: int) -> int:
    depth, quote = 0, ""
    for j in range(i, len(text)):
        ch = text[j]
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth == 0:
                return j
    raise JSONPathError(f"unclosed '[' in {text!r}")


def _bracket(inner: str) -> Step:
    inner = inner.strip()
    if inner == "*":
        return Step("wildcard")
    if inner.startswith("?(") and inner.endswith(")"):
        m = _FILTER.match(inner[2:-1].strip())
        if not m:
            raise JSONPathError(f"unsupported filter [{inner}]")
        path, op, value = m.groups()
        literal = _value(value.strip()) if value is not None else None
        return Step("filter", (parse_expr(path or ""), op, literal))
    if inner[:1] in ('"', "'"):
        return Step("field", _literal(inner))
    if ":" in inner:
        parts = [p.strip() for p in inner.split(":")]
        try:
            bounds = [int(p) if p else None for p in parts]
        except ValueError:
            raise JSONPathError(f"bad slice [{inner}]") from None
        return Step("slice", tuple(bounds + [None] * (3 - len(bounds)))[:3])
    if "," in inner:
        return Step("union", tuple(_bracket(p) for p in inner.split(",")))
    try:
        return Step("index", int(inner))
    except ValueError:
        return Step("field", inner)


def _value(text: str) -> Any:
    if text[:1] in ('"', "'"):
        return _literal(text)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise JSONPathError(f"bad value in filter: {text}") from None


# -- evaluating ---------------------------------------------------------------------------------

_MISSING = object()


def find(expr: Expr, data: Any) -> list[Any]:
    values = [data]
    for step in expr.steps:
        values = [v for value in values for v in _apply(step, value)]
    return values


def _apply(step: Step, value: Any) -> list[Any]:
    if step.kind == "field":
        return [value[step.arg]] if isinstance(value, dict) and step.arg in value else []
    if step.kind == "wildcard":
        if isinstance(value, dict):
            return list(value.values())
        return list(value) if isinstance(value, list) else []
    if step.kind == "recurse":
        return list(_descend(value))
    if step.kind == "index":
        if isinstance(value, list) and -len(value) <= step.arg < len(value):
            return [value[step.arg]]
        return []
    if step.kind == "slice":
        return value[slice(*step.arg)] if isinstance(value, list) else []
    if step.kind == "union":
        return [v for sub in step.arg for v in _apply(sub, value)]
    path, op, literal = step.arg
    items = (
        value
        if isinstance(value, list)
        else list(value.values())
        if isinstance(value, dict)
        else []
    )
    return [item for item in items if _matches(find(path, item), op, literal)]


def _descend(value: Any) -> Any:
    yield value
    children = (
        value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    )
    for child in children:
        yield from _descend(child)


def _matches(found: list[Any], op: str | None, literal: Any) -> bool:
    if op is None:
        return bool(found) and found[0] not in (None, False)
    if not found:
        return op == "!="
    got = found[0]
    compare = _OPS[op]
    try:
        return bool(compare(got, literal))
    except TypeError:  # a number against a string: no match, as kubectl's filter says
        return False


_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "<nil>"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def render(parts: tuple[Any, ...], data: Any) -> str:
    out: list[str] = []
    for part in parts:
        if isinstance(part, Text):
            out.append(part.value)
        elif isinstance(part, Range):
            for item in find(part.expr, data):
                out.append(render(part.body, item))
        else:
            out.append(" ".join(text(v) for v in find(part, data)))
    return "".join(out)
