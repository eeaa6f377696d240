"""The generated CRDs: fresh on disk, structural, complete, and carrying the models' checks."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from substratus.api import crds
from substratus.api.common import ENV_NAME_RE, NAME_RE, GitSource, Image
from substratus.api.compat import ORIGINAL_FIELDS
from substratus.api.kinds import GROUP, KINDS, CommonSpec, Resource
from substratus.api.policy import POLICY_FILE, policies

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "deploy" / "crds"

# What apiextensions.k8s.io/v1 JSONSchemaProps accepts in a CRD (everything else is an error
# there, or, like $ref, forbidden in CRDs).
ALLOWED_KEYS = {
    "description",
    "type",
    "format",
    "title",
    "default",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "uniqueItems",
    "multipleOf",
    "enum",
    "maxProperties",
    "minProperties",
    "required",
    "items",
    "allOf",
    "oneOf",
    "anyOf",
    "not",
    "properties",
    "additionalProperties",
    "example",
    "externalDocs",
    "nullable",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-list-type",
    "x-kubernetes-map-type",
    "x-kubernetes-validations",
}
TYPES = {"object", "array", "string", "integer", "number", "boolean"}


def schema_of(crd: dict[str, Any]) -> dict[str, Any]:
    versions = crd["spec"]["versions"]
    assert len(versions) == 1
    schema: dict[str, Any] = versions[0]["schema"]["openAPIV3Schema"]
    return schema


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its JSON path (``.<key>`` for map values, ``[]`` for items)."""
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}.<key>")
    if isinstance(schema.get("items"), dict):
        yield from nodes(schema["items"], f"{path}[]")


def all_keys(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, sub in value.items():
            yield key
            yield from all_keys(sub)
    elif isinstance(value, list):
        for sub in value:
            yield from all_keys(sub)


@pytest.fixture(scope="module", params=list(KINDS.values()), ids=list(KINDS))
def kind(request: pytest.FixtureRequest) -> type[Resource]:
    cls: type[Resource] = request.param
    return cls


# --- freshness -----------------------------------------------------------------------------------


def test_committed_crds_are_fresh() -> None:
    stale = [
        name
        for name, text in crds.crd_files().items()
        if not (CRD_DIR / name).is_file() or (CRD_DIR / name).read_text(encoding="utf-8") != text
    ]
    assert not stale, f"regenerate with: python -m substratus.api.crds --write deploy/crds {stale}"


def test_no_leftover_crd_files() -> None:
    generated = set(crds.crd_files())
    on_disk = {p.name for p in CRD_DIR.glob("*.yaml")}
    assert on_disk == generated


def test_files_are_named_after_group_and_plural() -> None:
    expected = [f"{GROUP}_{c.PLURAL}.yaml" for c in KINDS.values()] + [POLICY_FILE]
    assert sorted(crds.crd_files()) == sorted(expected)


def test_the_admission_policy_covers_every_kind() -> None:
    docs = policies()
    bound = {d["spec"]["policyName"] for d in docs if d["kind"].endswith("Binding")}
    checked = {
        r: d
        for d in docs
        if d["kind"] == "ValidatingAdmissionPolicy"
        for rule in d["spec"]["matchConstraints"]["resourceRules"]
        for r in rule["resources"]
    }
    assert set(checked) == {c.PLURAL for c in KINDS.values()}
    assert bound == {d["metadata"]["name"] for d in checked.values()}
    server = [v["message"] for v in checked["servers"]["spec"]["validations"]]
    assert "spec.model: required field is missing" in server
    assert "spec.image: set at most one of git and upload" in server


def test_generation_is_deterministic() -> None:
    assert crds.crds_yaml() == crds.crds_yaml()
    assert crds.all_crds() == crds.all_crds()


def test_crds_yaml_is_multi_document_with_header() -> None:
    text = crds.crds_yaml()
    assert text.startswith("# Generated from the models")
    assert "Do not edit by hand" in text.splitlines()[1]
    docs = list(yaml.safe_load_all(text))
    assert docs == crds.all_crds() + policies()  # the CRDs, then their admission policy
    assert [d["spec"]["names"]["kind"] for d in docs[: len(KINDS)]] == list(KINDS)
    assert "&id" not in text and "*id" not in text  # no YAML anchors or aliases


def test_each_file_parses_to_its_crd() -> None:
    for cls in KINDS.values():
        text = crds.crd_files()[crds.crd_file_name(cls)]
        assert text.startswith(crds.HEADER)
        (doc,) = list(yaml.safe_load_all(text))
        assert doc == crds.crd_for(cls)


def test_main_write_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert crds.main(["--check", str(tmp_path)]) == 1
    assert crds.main(["--write", str(tmp_path / "out")]) == 0
    assert crds.main(["--check", str(tmp_path / "out")]) == 0
    first = tmp_path / "out" / crds.crd_file_name(KINDS["Model"])
    first.write_text(first.read_text() + "# edited\n")
    assert crds.main(["--check", str(tmp_path / "out")]) == 1
    assert "stale:" in capsys.readouterr().out
    assert crds.main([]) == 0
    assert capsys.readouterr().out == crds.crds_yaml()


# --- the CRD object ------------------------------------------------------------------------------


def test_crd_metadata_and_names(kind: type[Resource]) -> None:
    crd = crds.crd_for(kind)
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == f"{kind.PLURAL}.{GROUP}"
    spec = crd["spec"]
    assert spec["group"] == GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": kind.KIND,
        "listKind": f"{kind.KIND}List",
        "plural": kind.PLURAL,
        "singular": kind.KIND.lower(),
        "shortNames": kind.SHORT_NAMES,
        "categories": ["ai"],
    }
    (version,) = spec["versions"]
    assert version["name"] == "v1"
    assert version["served"] is True
    assert version["storage"] is True
    assert version["subresources"] == {"status": {}}


def test_printer_columns(kind: type[Resource]) -> None:
    (version,) = crds.crd_for(kind)["spec"]["versions"]
    cols = {c["name"]: c for c in version["additionalPrinterColumns"]}
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names[0] == "Ready"
    assert names[-1] == "Age"
    assert cols["Ready"]["jsonPath"] == ".status.ready"
    assert cols["Ready"]["type"] == "boolean"
    assert cols["Age"] == {
        "name": "Age",
        "type": "date",
        "jsonPath": ".metadata.creationTimestamp",
    }
    expected = {"Ready", "Age"}
    if kind.KIND in ("Model", "Dataset"):
        expected |= {"Progress", "Size", "URL"}
        assert cols["Progress"]["jsonPath"] == ".status.progress.percent"
        assert cols["Size"]["jsonPath"] == ".status.diskSize"
        assert cols["URL"]["jsonPath"] == ".status.url"
        assert cols["URL"]["priority"] == 1
        assert "priority" not in cols["Size"]
    if kind.KIND == "Server":
        expected.add("Replicas")
        assert cols["Replicas"]["jsonPath"] == ".status.replicas"
        assert cols["Replicas"]["type"] == "integer"
    if kind.KIND == "Notebook":
        expected.add("Suspended")
        assert cols["Suspended"]["jsonPath"] == ".spec.suspend"
        assert cols["Suspended"]["type"] == "boolean"
    assert set(cols) == expected
    # Every column points at a field the schema has (Age at server-owned metadata).
    paths = {path for path, _ in nodes(schema_of(crds.crd_for(kind)))}
    for col in version["additionalPrinterColumns"]:
        assert col["type"] in {"integer", "number", "string", "boolean", "date"}
        if col["name"] != "Age":
            assert col["jsonPath"] in paths, col


# --- structural schema ---------------------------------------------------------------------------


def test_no_refs_defs_or_closed_objects(kind: type[Resource]) -> None:
    crd = crds.crd_for(kind)
    keys = set(all_keys(schema_of(crd)))
    assert "$ref" not in keys
    assert "$defs" not in keys
    assert "definitions" not in keys
    assert "const" not in keys
    assert "title" not in keys
    for path, node in nodes(schema_of(crd)):
        assert node.get("additionalProperties", True) is not False, path
    text = crds.crd_files()[crds.crd_file_name(kind)]
    assert "$ref" not in text
    assert "$defs" not in text
    assert "additionalProperties: false" not in text


def test_schema_is_structural(kind: type[Resource]) -> None:
    schema = schema_of(crds.crd_for(kind))
    assert schema["type"] == "object"
    assert "additionalProperties" not in schema  # forbidden at the root
    for path, node in nodes(schema):
        where = path or "<root>"
        assert set(node) <= ALLOWED_KEYS, (where, set(node) - ALLOWED_KEYS)
        untyped_ok = node.get("x-kubernetes-preserve-unknown-fields") is True or (
            node.get("x-kubernetes-int-or-string") is True
        )
        assert "type" in node or untyped_ok, f"{where}: no type"
        if "type" in node:
            assert node["type"] in TYPES, where
        if "properties" in node and "type" in node:
            assert node["type"] == "object", where
        if "additionalProperties" in node:
            assert node["type"] == "object", where
            assert "properties" not in node, where  # mutually exclusive in CRDs
        if node.get("type") == "array":
            assert isinstance(node.get("items"), dict), where
        if "items" in node:
            assert node["type"] == "array", where
        assert "nullable" not in node, where
        assert not (node.get("x-kubernetes-int-or-string") and "type" in node), where
        assert not (
            node.get("x-kubernetes-int-or-string")
            and node.get("x-kubernetes-preserve-unknown-fields")
        ), where
        # No types (or anything else structural) inside junctors: we use none at all.
        for junctor in ("anyOf", "oneOf", "allOf", "not"):
            assert junctor not in node, where
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            if bound in node:
                assert node[bound] is True, where  # OpenAPI 3.0: a boolean
                assert ("minimum" if bound == "exclusiveMinimum" else "maximum") in node, where
        for name in node.get("required", []):
            assert name in node.get("properties", {}), (where, name)
        if "pattern" in node:
            re.compile(node["pattern"])
        for rule in node.get("x-kubernetes-validations", []):
            assert set(rule) <= {"rule", "message", "messageExpression", "reason", "fieldPath"}
            assert rule["rule"] and rule["message"], where


def test_root_fields(kind: type[Resource]) -> None:
    schema = schema_of(crds.crd_for(kind))
    props = schema["properties"]
    assert set(props) == {"apiVersion", "kind", "metadata", "spec", "status"}
    assert props["apiVersion"]["type"] == "string"
    assert props["kind"]["type"] == "string"
    # metadata: only name (and generateName) may be restricted, and nothing else said.
    meta = props["metadata"]
    assert meta == {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 63, "pattern": NAME_RE.pattern}},
    }
    assert schema["required"] == ["spec"]
    assert props["spec"]["type"] == "object"
    assert props["status"]["type"] == "object"
    assert schema["description"]


def test_descriptions_kept(kind: type[Resource]) -> None:
    props = schema_of(crds.crd_for(kind))["properties"]
    spec = props["spec"]["properties"]
    description = CommonSpec.model_fields["image"].description
    assert description and spec["image"]["description"].startswith(description)
    git = spec["image"]["properties"]["git"]
    assert git["properties"]["url"]["description"] == GitSource.model_fields["url"].description
    assert (
        props["status"]["properties"]["ready"]["description"] == "True once the object is usable."
    )


def test_defaults_enums_and_bounds() -> None:
    server = schema_of(crds.crd_for(KINDS["Server"]))
    spec = server["properties"]["spec"]["properties"]
    assert spec["quantization"]["properties"]["bits"] == {
        "type": "integer",
        "enum": [4, 8, 16],
        "default": 16,
        "description": spec["quantization"]["properties"]["bits"]["description"],
    }
    assert spec["replicas"]["default"] == 1
    assert spec["replicas"]["minimum"] == 0
    res = spec["resources"]["properties"]
    assert res["cpu"]["type"] == "number"
    assert res["cpu"]["minimum"] == 0
    assert res["cpu"]["exclusiveMinimum"] is True
    assert res["gpu"]["properties"]["count"]["minimum"] == 0
    assert res["gpu"]["properties"]["type"]["default"] == "nvidia-l4"
    status = server["properties"]["status"]["properties"]
    assert status["ready"]["default"] is False
    cond = status["conditions"]
    assert cond["x-kubernetes-list-type"] == "map"
    assert cond["x-kubernetes-list-map-keys"] == ["type"]
    assert cond["items"]["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert set(cond["items"]["required"]) == {"type", "status"}
    assert spec["command"]["minItems"] == 1


def test_optional_fields_are_not_required_and_not_nullable() -> None:
    schema = schema_of(crds.crd_for(KINDS["Model"]))
    spec = schema["properties"]["spec"]
    # image is required in either spelling (image or the original's build): the models check.
    assert "required" not in spec
    git = spec["properties"]["image"]["properties"]["git"]
    assert git["required"] == ["url"]
    assert git["properties"]["branch"] == {"type": "string", "description": "Branch to check out."}
    assert "default" not in spec["properties"]["baseModel"]


def test_params_and_env_values_preserve_unknown_fields(kind: type[Resource]) -> None:
    spec = schema_of(crds.crd_for(kind))["properties"]["spec"]["properties"]
    for name in ("params", "env"):
        assert spec[name]["type"] == "object"
        assert spec[name]["additionalProperties"] == {"x-kubernetes-preserve-unknown-fields": True}


def test_plain_name_shorthand_fields_accept_strings() -> None:
    for kind_name, field in (("Notebook", "model"), ("Notebook", "dataset"), ("Server", "model")):
        spec = schema_of(crds.crd_for(KINDS[kind_name]))["properties"]["spec"]
        prop = spec["properties"][field]
        assert "type" not in prop
        assert prop["x-kubernetes-preserve-unknown-fields"] is True
        assert prop["properties"]["name"]["type"] == "string"
        assert prop["required"] == ["name"]
    for kind in KINDS.values():
        image = schema_of(crds.crd_for(kind))["properties"]["spec"]["properties"]["image"]
        assert "type" not in image and image["x-kubernetes-preserve-unknown-fields"] is True
        # The API server compiles no CEL rule on or under a node without a type.
        assert "x-kubernetes-validations" not in set(all_keys(image))
    # ... and the models do accept the plain name there.
    for owner, field in crds.SHORTHAND_FIELDS:
        cls = crds.model_classes(KINDS["Notebook"]) | crds.model_classes(KINDS["Server"])
        spec_cls = {**cls, "CommonSpec": KINDS["Server"].model_fields["spec"].annotation}[owner]
        assert isinstance(spec_cls, type) and issubclass(spec_cls, BaseModel)
        model_field = spec_cls.model_fields[field]
        assert model_field.alias in (None, field)
        extra = {"model": "m"} if field != "model" and "Server" in spec_cls.__name__ else {}
        parsed = spec_cls.model_validate({"image": {"name": "i"}, **extra, field: "some-name"})
        assert getattr(parsed, field).name == "some-name"


# --- completeness: every model field is in the schema --------------------------------------------


def _model_types(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in getattr(annotation, "__args__", ()):
        yield from _model_types(arg)


def _container(annotation: Any) -> str | None:
    origin = getattr(annotation, "__origin__", None)
    if origin is list:
        return "items"
    if origin is dict:
        return "additionalProperties"
    for arg in getattr(annotation, "__args__", ()):
        found = _container(arg)
        if found:
            return found
    return None


def _missing_fields(cls: type[BaseModel], node: dict[str, Any], path: str) -> Iterator[str]:
    props = node.get("properties", {})
    for name, info in cls.model_fields.items():
        alias = info.alias or name
        sub_path = f"{path}.{alias}"
        if alias not in props:
            yield sub_path
            continue
        sub = props[alias]
        container = _container(info.annotation)
        if container == "items":
            sub = sub.get("items", {})
        elif container == "additionalProperties":
            sub = sub.get("additionalProperties", {})
            if sub.get("x-kubernetes-preserve-unknown-fields"):
                continue  # str | EnvFrom and scalar unions: no structural schema for the values
        for model in _model_types(info.annotation):
            yield from _missing_fields(model, sub, sub_path)


def test_schema_includes_every_model_field(kind: type[Resource]) -> None:
    schema = schema_of(crds.crd_for(kind))
    props = schema["properties"]
    for name, info in kind.model_fields.items():
        assert (info.alias or name) in props
    for section in ("spec", "status"):
        section_cls = kind.model_fields[section].annotation
        assert isinstance(section_cls, type) and issubclass(section_cls, BaseModel)
        missing = list(_missing_fields(section_cls, props[section], section))
        assert not missing, missing


def test_schema_has_no_field_the_models_lack(kind: type[Resource]) -> None:
    schema = schema_of(crds.crd_for(kind))
    for section in ("spec", "status"):
        section_cls = kind.model_fields[section].annotation
        assert isinstance(section_cls, type) and issubclass(section_cls, BaseModel)
        aliases = {(i.alias or n) for n, i in section_cls.model_fields.items()}
        if section == "spec":  # and the original project's spelling (api/compat.py)
            original = ORIGINAL_FIELDS[section_cls.__name__].model_fields.items()
            aliases |= {(i.alias or n) for n, i in original}
        assert set(schema["properties"][section]["properties"]) == aliases


# --- CEL rules -----------------------------------------------------------------------------------


def _rules(node: dict[str, Any]) -> dict[str, str]:
    return {r["message"]: r["rule"] for r in node.get("x-kubernetes-validations", [])}


def test_cel_rules_for_build_and_git(kind: type[Resource]) -> None:
    # spec.image takes a string too, so it has no type and carries no rule (the models check
    # it); the original's spec.build is typed and carries the same checks.
    build = schema_of(crds.crd_for(kind))["properties"]["spec"]["properties"]["build"]
    assert _rules(build) == {
        "set at most one of git and upload": "!(has(self.git) && has(self.upload))",
        "set git or upload": "has(self.git) || has(self.upload)",
    }
    image = build
    git_rules = _rules(image["properties"]["git"])
    assert "set branch or tag, not both" in git_rules
    assert "path must be relative and stay inside the repository" in git_rules
    url_rule = next(
        r
        for r in image["properties"]["git"]["x-kubernetes-validations"]
        if r.get("fieldPath") == ".url"
    )
    assert url_rule["message"] == "must not be empty"


def test_cel_rule_messages_match_the_models() -> None:
    """The cluster says what the models say: every CEL message is a model validator's reason."""
    from substratus.api import ValidationFailed, parse_object

    def reason(spec_image: dict[str, Any]) -> list[tuple[str, str]]:
        doc = {
            "apiVersion": "substratus.ai/v1",
            "kind": "Model",
            "metadata": {"name": "m"},
            "spec": {"image": spec_image},
        }
        with pytest.raises(ValidationFailed) as info:
            parse_object(doc)
        return info.value.problems

    image_rules = crds.cel_rules(Image)
    assert reason({"git": {"url": "u"}, "upload": {}}) == [
        ("spec.image", image_rules[0]["message"])
    ]
    assert reason({}) == [("spec.image", image_rules[1]["message"])]
    git_msgs = {
        r["message"]: r.get("fieldPath", "")
        for r in crds.cel_rules(crds.model_classes(KINDS["Model"])["GitSource"])
    }
    cases = {
        "must not be empty": {"url": " "},
        "set branch or tag, not both": {"url": "u", "branch": "b", "tag": "t"},
        "path must be relative and stay inside the repository": {"url": "u", "path": "/x"},
    }
    assert set(cases) == set(git_msgs)
    for message, git in cases.items():
        assert reason({"git": git}) == [("spec.image.git" + git_msgs[message], message)]


def test_env_name_pattern_is_the_models() -> None:
    # Documented (CEL cannot see untyped map values); keep the docs' pattern the models' one.
    assert ENV_NAME_RE.pattern == "^[A-Za-z_][A-Za-z0-9_]*$"


# --- defaults validate against their own schema --------------------------------------------------


def _valid(value: Any, node: dict[str, Any]) -> bool:
    typ = node.get("type")
    checks = {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
    }
    if typ is not None and not checks[typ](value):
        return False
    if "enum" in node and value not in node["enum"]:
        return False
    if "minimum" in node:
        if node.get("exclusiveMinimum") and not value > node["minimum"]:
            return False
        if value < node["minimum"]:
            return False
    if "maximum" in node:
        if node.get("exclusiveMaximum") and not value < node["maximum"]:
            return False
        if value > node["maximum"]:
            return False
    if "pattern" in node and not re.search(node["pattern"], value):
        return False
    if isinstance(value, dict):
        for name in node.get("required", []):
            if name not in value:
                return False
        for name, sub in value.items():
            if name in node.get("properties", {}) and not _valid(sub, node["properties"][name]):
                return False
    return True


def test_defaults_validate_against_their_schema(kind: type[Resource]) -> None:
    found = 0
    for path, node in nodes(schema_of(crds.crd_for(kind))):
        if "default" in node:
            found += 1
            assert node["default"] is not None, path
            assert _valid(node["default"], node), (path, node["default"])
    assert found > 0


def test_printer_column_descriptions_come_from_the_models() -> None:
    (version,) = crds.crd_for(KINDS["Model"])["spec"]["versions"]
    cols = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert cols["Size"]["description"] == "Total size of the artifacts, e.g. 27Gi."


def test_the_charts_crds_are_fresh_and_kept_on_uninstall() -> None:
    chart = CRD_DIR.parent.parent / "charts" / "substratus"
    committed = (chart / crds.CHART_TEMPLATE).read_text(encoding="utf-8")
    assert committed == crds.chart_crds(), (
        "regenerate with: python -m substratus.api.crds --write charts/substratus"
    )
    docs = [d for d in yaml.safe_load_all(committed.split("\n", 3)[3].rsplit("{{", 1)[0]) if d]
    kinds = [d["kind"] for d in docs]
    assert kinds.count("CustomResourceDefinition") == len(KINDS)
    for doc in docs:
        keep = (doc["metadata"].get("annotations") or {}).get("helm.sh/resource-policy")
        assert keep == ("keep" if doc["kind"] == "CustomResourceDefinition" else None)
