"""The API reference (docs/api.md), generated from the typed models.

Every field of every kind with its JSON path, type, default and description, walked from
``Kind.model_json_schema(by_alias=True)``; the checks come from the same CEL rules that the CRDs
carry (``substratus.api.crds``) plus the checks only the models make. Run
``python -m substratus.api.docs --write docs/api.md`` to regenerate; ``--check`` fails when stale.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from substratus.api.cel import SHORTHAND_FIELDS, cel_rules
from substratus.api.compat import ORIGINAL_FIELDS
from substratus.api.crds import KIND_SUMMARIES, model_classes
from substratus.api.kinds import API_VERSION, KINDS, Resource

JSON = dict[str, Any]

HEADER = (
    "<!-- Generated from the models in src/substratus/api by\n"
    "     `python -m substratus.api.docs --write docs/api.md`. Do not edit by hand. -->\n"
)

# Checks the models make that neither the types nor the CEL rules show, by (class, JSON name).
_NOTES: dict[tuple[str, str], str] = {
    ("ObjectMeta", "name"): (
        "A DNS label: at most 63 lowercase letters, digits and '-', starting and ending with a "
        "letter or digit."
    ),
    ("ObjectMeta", "namespace"): "A DNS label, like `name`.",
    ("ObjectMeta", "labels"): (
        "As in Kubernetes: a key is `name` or `prefix/name` (at most 63 letters, digits, '-', "
        "'_' or '.', starting and ending with a letter or digit; the prefix a DNS subdomain); "
        "a value is empty or at most 63 such characters."
    ),
    ("ObjectMeta", "annotations"): (
        "Keys as for labels; keys and values together at most 256 KiB. A whole object is at "
        "most 1.5 MiB as JSON."
    ),
    ("CommonSpec", "params"): (
        "Keys must be valid environment variable names (`^[A-Za-z_][A-Za-z0-9_]*$`); values "
        "are strings, numbers or booleans."
    ),
    ("CommonSpec", "env"): (
        "Keys must be valid environment variable names (`^[A-Za-z_][A-Za-z0-9_]*$`); a value "
        "is a string or exactly `{secretKeyRef: {name: SECRET, key: KEY}}`."
    ),
    ("CommonSpec", "command"): "When set, must name a program (not an empty list).",
}


_ROOT_NOTES = {
    "apiVersion": f"Always `{API_VERSION}`.",
    "kind": "The kind of the object.",
    "metadata": "Standard object metadata; the fields the models read are listed below.",
    "spec": "What the user wants: set by the user, read by the system.",
    "status": "What the system observed: set by the system only.",
}


@dataclass
class Row:
    path: str
    type: str
    default: str
    description: str


@dataclass
class KindDoc:
    cls: type[Resource]
    rows: list[Row] = field(default_factory=list)
    checks: list[tuple[str, str]] = field(default_factory=list)


def _lineage(cls: type) -> set[str]:
    return {c.__name__ for c in cls.__mro__}


def _code(value: Any) -> str:
    return "`" + json.dumps(value, sort_keys=False) + "`"


def _group(text: str) -> str:
    return f"({text})" if " or " in text else text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


class _Walker:
    def __init__(self, cls: type[BaseModel]) -> None:
        self.cls = cls
        self.schema = cls.model_json_schema(by_alias=True, mode="validation")
        self.defs: dict[str, JSON] = self.schema.get("$defs", {})
        self.classes = model_classes(cls)
        self.rows: list[Row] = []
        self.checks: list[tuple[str, str]] = []

    def _resolve(self, node: JSON) -> tuple[JSON, str | None]:
        ref = node.get("$ref")
        if not isinstance(ref, str):
            return node, None
        name = ref.rsplit("/", 1)[1]
        return {**self.defs[name], **{k: v for k, v in node.items() if k != "$ref"}}, name

    def _type(self, node: JSON) -> str:
        node, name = self._resolve(node)
        if "anyOf" in node:
            parts = list(
                dict.fromkeys(self._type(v) for v in node["anyOf"] if v != {"type": "null"})
            )
            if len(parts) == 1:
                return parts[0]
            return ", ".join(parts[:-1]) + " or " + parts[-1]
        if "const" in node:
            return _code(node["const"])
        if "enum" in node:
            return "one of " + ", ".join(_code(v) for v in node["enum"])
        typ = node.get("type")
        if typ == "array":
            return f"list of {_group(self._type(node.get('items', {})))}"
        if typ == "object" and isinstance(node.get("additionalProperties"), dict):
            return f"map of string to {_group(self._type(node['additionalProperties']))}"
        if name is not None or typ == "object":
            return "object"
        return str(typ or "any")

    @staticmethod
    def _constraints(node: JSON) -> list[str]:
        out = []
        for key, op in (
            ("minimum", ">="),
            ("exclusiveMinimum", ">"),
            ("maximum", "<="),
            ("exclusiveMaximum", "<"),
        ):
            if key in node:
                out.append(f"{op} {node[key]}")
        for key, label in (
            ("minLength", "min length"),
            ("maxLength", "max length"),
            ("minItems", "min items"),
            ("maxItems", "max items"),
        ):
            if key in node:
                out.append(f"{label} {node[key]}")
        if "pattern" in node:
            out.append(f"pattern `{node['pattern']}`")
        return out

    def _field_default(self, owner: type[BaseModel] | None, alias: str, node: JSON) -> str:
        if owner is not None:
            for name, info in owner.model_fields.items():
                if (info.alias or name) != alias:
                    continue
                if info.is_required():
                    return "required"
                if info.default_factory is not None:
                    value = info.default_factory()  # type: ignore[call-arg]
                    # An object made by its class: `{}`, each of its fields at its own default.
                    return _code({} if isinstance(value, BaseModel) else value)
                if info.default is PydanticUndefined or info.default is None:
                    return "unset"
                return _code(node.get("default", info.default))
        if "default" in node and node["default"] is not None:
            return _code(node["default"])
        return ""

    def walk(
        self,
        node: JSON,
        path: str,
        owner: type[BaseModel] | None,
        alias: str | None,
        default: str,
    ) -> None:
        resolved, def_name = self._resolve(node)
        variants = [v for v in resolved.get("anyOf", []) if v != {"type": "null"}]
        flat = resolved
        if len(variants) == 1:
            flat, inner = self._resolve(variants[0])
            def_name = inner or def_name
            flat = {**flat, **{k: v for k, v in resolved.items() if k != "anyOf"}}
        if path:
            desc = str(resolved.get("description", "")) or _ROOT_NOTES.get(path, "")
            note = None
            shorthand = False
            if owner is not None and alias is not None:
                lineage = _lineage(owner)
                note = next(
                    (n for (c, f), n in _NOTES.items() if f == alias and c in lineage), None
                )
                shorthand = any(f == alias and c in lineage for c, f in SHORTHAND_FIELDS)
            if shorthand:
                note = f"A plain name is accepted: `{alias}: NAME` means `{alias}: {{name: NAME}}`."
            if note:
                desc = f"{desc} {note}".strip()
            typ = self._type(resolved)
            if shorthand:
                typ += " or string"
            limits = self._constraints(flat)
            if limits:
                typ += " (" + ", ".join(limits) + ")"
            self.rows.append(Row(path, typ, default, desc))
        cls: type[BaseModel] | None = self.cls if not path else None
        if def_name:
            cls = self.classes.get(def_name)
        if cls is not None:
            for rule in cel_rules(cls):
                self.checks.append((path + rule.get("fieldPath", ""), str(rule["message"])))
        self._children(flat, path, cls)

    def _children(self, node: JSON, path: str, cls: type[BaseModel] | None) -> None:
        node, _ = self._resolve(node)
        for name, sub in node.get("properties", {}).items():
            sub_path = f"{path}.{name}" if path else name
            self.walk(sub, sub_path, cls, name, self._field_default(cls, name, sub))
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            self._members(extra, f"{path}.<key>")
        items = node.get("items")
        if isinstance(items, dict):
            self._members(items, f"{path}[]")
        for variant in node.get("anyOf", []):
            if variant != {"type": "null"}:
                inner, name = self._resolve(variant)
                if name is not None:
                    self._children(inner, path, self.classes.get(name))

    def _members(self, node: JSON, path: str) -> None:
        """Map values and list items: a row of their own only when they have fields."""
        resolved, name = self._resolve(node)
        has_fields = name is not None or any(
            "$ref" in v for v in resolved.get("anyOf", []) if isinstance(v, dict)
        )
        if not has_fields:
            return
        self.rows.append(Row(path, self._type(resolved), "", ""))
        self._children(resolved, path, self.classes.get(name) if name else None)


def kind_doc(cls: type[Resource]) -> KindDoc:
    """The rows (one per field) and checks of one kind."""
    walker = _Walker(cls)
    walker.walk(walker.schema, "", cls, None, "")
    # The original project's spelling of the spec (api/compat.py), after the spec's own rows.
    spec_cls = cls.model_fields["spec"].annotation
    original = ORIGINAL_FIELDS[spec_cls.__name__ if isinstance(spec_cls, type) else ""]
    extra = _Walker(original)
    extra._children(extra.schema, "spec", original)
    at = next(i for i, row in enumerate(walker.rows) if row.path.startswith("status"))
    rows = walker.rows[:at] + extra.rows + walker.rows[at:]
    return KindDoc(cls, rows, walker.checks + extra.checks)


def _table(rows: list[Row]) -> list[str]:
    lines = ["| Field | Type | Default | Description |", "|---|---|---|---|"]
    for row in rows:
        cells = [f"`{row.path}`", _cell(row.type), _cell(row.default), _cell(row.description)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def api_markdown() -> str:
    """The whole reference as Markdown text."""
    out = [HEADER.rstrip("\n"), "", f"# API reference: `{API_VERSION}`", ""]
    out += [
        "Four namespaced kinds, all in the category `ai` (`kubectl get ai`). Each object has",
        "`apiVersion`, `kind`, `metadata`, `spec` (what you want) and `status` (what the system",
        "observed). The same models validate objects locally (`sub`) and, through the generated",
        "CustomResourceDefinitions in `deploy/crds/`, in a cluster. Unknown fields are errors",
        "locally; a cluster drops them (use `kubectl apply --validate=strict` to have them",
        "rejected there too).",
        "",
        "| Kind | Plural | Short names | What it is |",
        "|---|---|---|---|",
    ]
    for cls in KINDS.values():
        short = ", ".join(f"`{s}`" for s in cls.SHORT_NAMES)
        out.append(
            f"| [{cls.KIND}](#{cls.KIND.lower()}) | `{cls.PLURAL}` | {short} | "
            f"{_cell(KIND_SUMMARIES.get(cls.KIND, ''))} |"
        )
    for cls in KINDS.values():
        doc = kind_doc(cls)
        out += ["", f"## {cls.KIND}", ""]
        if cls.KIND in KIND_SUMMARIES:
            out += [KIND_SUMMARIES[cls.KIND], ""]
        out += [
            f"`apiVersion: {API_VERSION}`, `kind: {cls.KIND}`; "
            f"`kubectl get {cls.PLURAL}` (or {', '.join(cls.SHORT_NAMES)}).",
            "",
        ]
        out += _table(doc.rows)
        if doc.checks:
            out += ["", "Checks (made locally and, as CEL rules, by the cluster):", ""]
            out += [f"- `{path}`: {message}" for path, message in doc.checks]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m substratus.api.docs")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="FILE", help="write the reference to FILE")
    group.add_argument("--check", metavar="FILE", help="exit 1 if FILE is stale")
    args = parser.parse_args(argv)
    text = api_markdown()
    if args.write:
        path = Path(args.write)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(path)
        return 0
    if args.check:
        path = Path(args.check)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            print(f"stale: {path} (run python -m substratus.api.docs --write {path})")
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
