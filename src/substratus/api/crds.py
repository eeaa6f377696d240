"""CustomResourceDefinitions (apiextensions.k8s.io/v1) generated from the typed models.

The OpenAPI v3 schema of each kind is derived from ``Kind.model_json_schema(by_alias=True)`` and
rewritten into a *structural* schema, as the Kubernetes API server requires:

* every ``$ref`` is inlined and ``$defs`` dropped;
* ``X | None`` becomes the schema of ``X`` (no ``nullable``: the server prunes a ``null`` sent for
  such a field, which is what ``None`` means to the models);
* unions of several types (``params`` values, ``env`` values) cannot be typed in a structural
  schema: ``int | str`` becomes ``x-kubernetes-int-or-string``, any other union
  ``x-kubernetes-preserve-unknown-fields`` (the server takes any value there; the models check
  those values wherever an object is read);
* ``additionalProperties: false`` is dropped (the server prunes unknown fields instead), as are
  pydantic's generated titles; ``const`` becomes a one-value ``enum`` and JSON Schema's numeric
  ``exclusiveMinimum`` OpenAPI 3.0's boolean form;
* ``metadata`` only restricts ``name`` (the server allows nothing else there);
* the fields that also take a plain name (``cel.SHORTHAND_FIELDS``: ``image: NAME`` as the
  original project writes it, ``model: falcon-7b`` as the seed does) keep their properties but
  lose their type; CEL rules refuse what is neither that string nor the object;
* the original project's spelling of a spec (``compat.ORIGINAL_FIELDS``: ``build``, a Model's
  ``model`` and ``dataset``, ``modelName``) is added to each spec, with CEL rules refusing both
  spellings at once; a field the design requires may then come in either spelling.

The checks that the models make in validators are added as CEL ``x-kubernetes-validations`` where
CEL can express them (``substratus.api.cel``). Run ``python -m substratus.api.crds --write
deploy/crds`` to regenerate the committed YAML (and ``--write charts/substratus``, the chart's
template of them); ``--check DIR`` fails when they are stale.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from substratus.api.cel import SHORTHAND_FIELDS, cel_rules
from substratus.api.common import NAME_RE
from substratus.api.compat import ORIGINAL_FIELDS, RENAMED
from substratus.api.kinds import GROUP, KINDS, VERSION, Resource
from substratus.api.policy import POLICY_FILE, policies

JSON = dict[str, Any]

CATEGORIES = ["ai"]
HEADER = (
    "# Generated from the models in src/substratus/api by\n"
    "# `python -m substratus.api.crds --write deploy/crds`. Do not edit by hand.\n"
)

# What each kind is, for the CRD's description (shown by `kubectl explain`) and the API docs.
KIND_SUMMARIES = {
    "Model": (
        "A Model imports a model (e.g. from the Hugging Face hub) or fine-tunes a base Model on "
        "a Dataset, as a run-to-completion job; its artifacts are stored at status.url."
    ),
    "Dataset": (
        "A Dataset loads data (from a URL, a hub, anything a loader image does), as a "
        "run-to-completion job; its artifacts are stored at status.url."
    ),
    "Notebook": (
        "A Notebook is a Jupyter server with a Model and/or Dataset mounted, from a stock or "
        "user-built image."
    ),
    "Server": "A Server serves a Model over HTTP (an OpenAI-compatible API for built-in servers).",
}

# Keys copied as they are from a pydantic schema node (after the rewrites below).
_KEEP = {
    "description",
    "type",
    "format",
    "default",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}


# Plain OpenAPI keywords for checks that the models make in validators, by (class, JSON name).
_PROPERTY_EXTRAS: dict[tuple[str, str], JSON] = {
    ("CommonSpec", "command"): {"minItems": 1},
}

# Lists of objects keyed by a field: merged by key under server-side apply (Kubernetes' own
# convention for conditions).
_LIST_MAPS: dict[str, list[str]] = {"conditions": ["type"]}

_ROOT_FIELD_DESCRIPTIONS = {
    "apiVersion": (
        "APIVersion defines the versioned schema of this representation of an object. "
        "Servers should convert recognized schemas to the latest internal value, and may "
        "reject unrecognized values."
    ),
    "kind": (
        "Kind is a string value representing the REST resource this object represents. "
        "Servers may infer this from the endpoint the client submits requests to. "
        "In CamelCase."
    ),
}


def _lineage(cls: type) -> set[str]:
    return {c.__name__ for c in cls.__mro__}


_ROOT_SECTION_DESCRIPTIONS = {
    "spec": "What the user wants: set by the user, read by the system.",
    "status": "What the system observed: set by the system only (the status subresource).",
}


def model_classes(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every model class reachable from ``root``'s fields, by the name pydantic gives its $def."""
    found: dict[str, type[BaseModel]] = {}

    def visit(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp.__name__ in found:
                return
            found[tp.__name__] = tp
            for field in tp.model_fields.values():
                visit(field.annotation)
            return
        for arg in getattr(tp, "__args__", ()):
            visit(arg)

    visit(root)
    return found


class _Converter:
    """Rewrites one pydantic JSON schema into a structural OpenAPI v3 schema."""

    def __init__(self, root: type[BaseModel]) -> None:
        self.schema = root.model_json_schema(by_alias=True, mode="validation")
        self.defs: dict[str, JSON] = self.schema.get("$defs", {})
        self.classes = model_classes(root)
        self.classes[root.__name__] = root

    def _class_of(self, def_name: str | None) -> type[BaseModel] | None:
        return self.classes.get(def_name) if def_name else None

    def _resolve(self, node: JSON) -> tuple[JSON, str | None]:
        """Inline a ``$ref`` (keeping the referring node's own keys, e.g. its description)."""
        ref = node.get("$ref")
        if ref is None:
            return node, None
        prefix = "#/$defs/"
        if not isinstance(ref, str) or not ref.startswith(prefix):
            raise ValueError(f"cannot inline $ref {ref!r}")
        name = ref[len(prefix) :]
        target = dict(self.defs[name])
        target.update({k: v for k, v in node.items() if k != "$ref"})
        return target, name

    def convert(self, node: JSON, def_name: str | None = None, path: str = "") -> JSON:
        node, ref_name = self._resolve(node)
        def_name = ref_name or def_name
        node = dict(node)

        if "anyOf" in node:
            variants = [v for v in node.pop("anyOf") if v != {"type": "null"}]
            if node.get("default", 0) is None:
                del node["default"]
            if len(variants) == 1:
                inner, inner_name = self._resolve(variants[0])
                merged = {**inner, **node}
                return self.convert(merged, inner_name, path)
            return self._union(node, variants, path)

        if node.get("default", 0) is None:
            del node["default"]
        if "const" in node:
            node["enum"] = [node.pop("const")]
        for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            value = node.get(bound)
            if isinstance(value, int | float) and not isinstance(value, bool):
                node[limit] = value
                node[bound] = True
        if node.get("additionalProperties") is False:
            del node["additionalProperties"]

        unknown = set(node) - _KEEP - {"title", "$defs"}
        if unknown:
            raise ValueError(f"{path or '<root>'}: no structural form for {sorted(unknown)}")

        out: JSON = {k: v for k, v in node.items() if k in _KEEP}
        cls = self._class_of(def_name)
        if "properties" in out:
            out["type"] = "object"
            props: JSON = {}
            for name, sub in out["properties"].items():
                prop = self.convert(sub, None, f"{path}.{name}")
                if cls is not None:
                    lineage = _lineage(cls)
                    for (owner, field), extra in _PROPERTY_EXTRAS.items():
                        if field == name and owner in lineage:
                            prop.update(extra)
                    if any(f == name and c in lineage for c, f in SHORTHAND_FIELDS):
                        _allow_plain_name(prop)
                if name in _LIST_MAPS and prop.get("type") == "array":
                    prop["x-kubernetes-list-type"] = "map"
                    prop["x-kubernetes-list-map-keys"] = _LIST_MAPS[name]
                props[name] = prop
            out["properties"] = props
        if isinstance(out.get("additionalProperties"), dict):
            out["additionalProperties"] = self.convert(out["additionalProperties"], None, path)
        if "items" in out:
            out["items"] = self.convert(out["items"], None, f"{path}[]")
        if cls is not None:
            rules = cel_rules(cls)
            if rules:
                out["x-kubernetes-validations"] = rules
        if "type" not in out and not (
            out.get("x-kubernetes-preserve-unknown-fields") or out.get("x-kubernetes-int-or-string")
        ):
            raise ValueError(f"{path or '<root>'}: no type")
        return out

    def _union(self, node: JSON, variants: list[JSON], path: str) -> JSON:
        types = set()
        for variant in variants:
            resolved, _ = self._resolve(variant)
            types.add(resolved.get("type", "object"))
        out: JSON = {k: v for k, v in node.items() if k in _KEEP and k != "type"}
        if types == {"integer", "string"}:
            out["x-kubernetes-int-or-string"] = True
        else:
            # e.g. str | int | float | bool, or str | {secretKeyRef: ...}: no structural type.
            out["x-kubernetes-preserve-unknown-fields"] = True
        return out


def _allow_plain_name(prop: JSON) -> None:
    # A structural schema cannot say "string or object": no type, unknown fields kept (the
    # server checks the object form's fields' types and patterns). The API server compiles no
    # CEL rule on or under a node without a type (tests/kube/test_original_manifests.py), so
    # the object form's CEL checks are the admission policy's (policy.py).
    prop.pop("type", None)
    prop["x-kubernetes-preserve-unknown-fields"] = True
    _drop_rules(prop)
    desc = prop.get("description", "")
    prop["description"] = f"{desc} A plain name is accepted as a shorthand for {{name: NAME}}."
    prop["description"] = prop["description"].strip()


def _drop_rules(node: JSON) -> None:
    node.pop("x-kubernetes-validations", None)
    for sub in node.get("properties", {}).values():
        _drop_rules(sub)


def _add_original_fields(spec: JSON, spec_cls: type[BaseModel]) -> None:
    """The original project's spelling of ``spec_cls`` (compat.py) in its schema ``spec``."""
    original = ORIGINAL_FIELDS[spec_cls.__name__]
    conv = _Converter(original)
    extra = conv.convert(conv.schema, original.__name__)["properties"]
    spec["properties"].update(extra)
    # Required in the design's spelling or the original's; the schema's CEL cannot see the
    # string-or-object fields to say "one of them", so the admission policy does (policy.py).
    either = {"image", *RENAMED.get(spec_cls.__name__, {}).values()}
    spec["required"] = [r for r in spec.get("required", []) if r not in either]
    if not spec["required"]:
        del spec["required"]


def _root_schema(cls: type[Resource]) -> JSON:
    conv = _Converter(cls)
    schema = conv.convert(conv.schema, cls.__name__)
    props = schema["properties"]
    spec_cls = cls.model_fields["spec"].annotation
    assert isinstance(spec_cls, type) and issubclass(spec_cls, BaseModel)
    _add_original_fields(props["spec"], spec_cls)
    for name, desc in _ROOT_SECTION_DESCRIPTIONS.items():
        if name in props:
            props[name].setdefault("description", desc)
    for name in ("apiVersion", "kind"):
        props[name] = {"description": _ROOT_FIELD_DESCRIPTIONS[name], "type": "string"}
    # The server owns metadata's schema; a CRD may only restrict name and generateName.
    props["metadata"] = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 63, "pattern": NAME_RE.pattern},
        },
    }
    schema["required"] = [r for r in schema.get("required", []) if r not in props or r == "spec"]
    if not schema["required"]:
        del schema["required"]
    schema["description"] = KIND_SUMMARIES.get(cls.KIND, f"A {cls.KIND} of {GROUP}/{VERSION}.")
    return copy.deepcopy(schema)  # no sub-object shared between places


def _field_description(cls: type[BaseModel], alias: str) -> str:
    for name, field in cls.model_fields.items():
        if (field.alias or name) == alias:
            return field.description or ""
    raise KeyError(alias)


def _printer_columns(cls: type[Resource]) -> list[JSON]:
    status_cls = cls.model_fields["status"].annotation
    spec_cls = cls.model_fields["spec"].annotation
    assert isinstance(status_cls, type) and issubclass(status_cls, BaseModel)
    assert isinstance(spec_cls, type) and issubclass(spec_cls, BaseModel)

    def column(name: str, path: str, typ: str, owner: type[BaseModel], **extra: Any) -> JSON:
        field = path.rsplit(".", 1)[1]
        out: JSON = {"name": name, "type": typ, "jsonPath": path}
        desc = _field_description(owner, field)
        if desc:
            out["description"] = desc
        out.update(extra)
        return out

    cols = [column("Ready", ".status.ready", "boolean", status_cls)]
    if cls.HAS_ARTIFACTS:
        # kubectl's PROGRESS column, as `sub get` shows one: the job's percent done.
        cols.append(
            {
                "name": "Progress",
                "type": "number",
                "jsonPath": ".status.progress.percent",
                "description": "How much of the job is done, 0-100.",
            }
        )
        cols.append(column("Size", ".status.diskSize", "string", status_cls))
        cols.append(column("URL", ".status.url", "string", status_cls, priority=1))
    if "replicas" in status_cls.model_fields:
        cols.append(column("Replicas", ".status.replicas", "integer", status_cls))
    if "suspend" in spec_cls.model_fields:
        cols.append(column("Suspended", ".spec.suspend", "boolean", spec_cls))
    cols.append(
        {
            "name": "Age",
            "type": "date",
            "jsonPath": ".metadata.creationTimestamp",
        }
    )
    return cols


def crd_for(cls: type[Resource]) -> JSON:
    """The CustomResourceDefinition of one kind, as a plain dict."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{cls.PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": cls.KIND,
                "listKind": f"{cls.KIND}List",
                "plural": cls.PLURAL,
                "singular": cls.KIND.lower(),
                "shortNames": list(cls.SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": _root_schema(cls)},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _printer_columns(cls),
                }
            ],
        },
    }


def all_crds() -> list[JSON]:
    """The CRDs of every kind, in the order of ``KINDS``."""
    return [crd_for(cls) for cls in KINDS.values()]


class _Dumper(yaml.SafeDumper):
    """Writes shared sub-objects out in full instead of as YAML anchors and aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _dump(doc: JSON) -> str:
    return yaml.dump(
        doc,
        Dumper=_Dumper,
        sort_keys=True,
        default_flow_style=False,
        allow_unicode=True,
        width=10_000,
    )


def crds_yaml() -> str:
    """Every CRD, then the admission policy for what their schemas cannot check, as one
    multi-document YAML text with a header saying it is generated."""
    return HEADER + "".join(f"---\n{_dump(doc)}" for doc in [*all_crds(), *policies()])


def crd_file_name(cls: type[Resource]) -> str:
    return f"{GROUP}_{cls.PLURAL}.yaml"


def crd_files() -> dict[str, str]:
    """File name -> text, one file per kind, as committed under deploy/crds."""
    files = {crd_file_name(cls): HEADER + "---\n" + _dump(crd_for(cls)) for cls in KINDS.values()}
    files[POLICY_FILE] = HEADER + "".join(f"---\n{_dump(doc)}" for doc in policies())
    return files


CHART_TEMPLATE = "templates/crds.yaml"
KEEP = {"helm.sh/resource-policy": "keep"}


def chart_crds() -> str:
    """The Helm chart's template of the same documents: installed and upgraded with the chart
    while ``crds.install`` is on; the CRDs are kept on uninstall (deleting a CRD deletes every
    object of its kind)."""
    kept = []
    for crd in all_crds():
        crd = copy.deepcopy(crd)
        crd["metadata"].setdefault("annotations", {}).update(KEEP)
        kept.append(crd)
    body = "".join(f"---\n{_dump(doc)}" for doc in [*kept, *policies()])
    if "{{" in body:  # Helm would read it as a template action
        raise ValueError("a CRD or policy holds '{{', which the chart's template cannot carry")
    header = HEADER.replace("--write deploy/crds", "--write charts/substratus")
    return header + "{{- if .Values.crds.install }}\n" + body + "{{- end }}\n"


def generated_files(directory: Path) -> dict[str, str]:
    """What ``--write`` puts in ``directory``: a chart's CRD template where it holds a
    Chart.yaml, else one YAML file per kind (deploy/crds)."""
    if (directory / "Chart.yaml").is_file():
        return {CHART_TEMPLATE: chart_crds()}
    return crd_files()


def _stale(directory: Path) -> Iterator[str]:
    for name, text in generated_files(directory).items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            yield str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m substratus.api.crds",
        description=__doc__.split("\n\n")[0] if __doc__ else "",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--write",
        metavar="DIR",
        help="write one YAML file per kind into DIR (a chart's directory: its CRD template)",
    )
    group.add_argument("--check", metavar="DIR", help="exit 1 if the files in DIR are stale")
    args = parser.parse_args(argv)
    if args.write:
        directory = Path(args.write)
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in generated_files(directory).items():
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            (directory / name).write_text(text, encoding="utf-8")
            print(directory / name)
        return 0
    if args.check:
        stale = list(_stale(Path(args.check)))
        for path in stale:
            print(f"stale: {path} (run python -m substratus.api.crds --write {args.check})")
        return 1 if stale else 0
    sys.stdout.write(crds_yaml())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
