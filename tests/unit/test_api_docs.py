"""docs/api.md: generated from the models, fresh on disk, and naming every field."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from substratus.api import docs
from substratus.api.crds import cel_rules, model_classes
from substratus.api.kinds import KINDS, Resource

ROOT = Path(__file__).resolve().parents[2]
API_MD = ROOT / "docs" / "api.md"


def _model_types(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in getattr(annotation, "__args__", ()):
        yield from _model_types(arg)


def _container_suffix(annotation: Any) -> str:
    origin = getattr(annotation, "__origin__", None)
    if origin is list:
        return "[]"
    if origin is dict:
        return ".<key>"
    for arg in getattr(annotation, "__args__", ()):
        found = _container_suffix(arg)
        if found:
            return found
    return ""


def field_paths(cls: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every field's JSON path under a model, and its pydantic FieldInfo."""
    for name, info in cls.model_fields.items():
        path = f"{prefix}.{info.alias or name}" if prefix else (info.alias or name)
        yield path, info
        inner = path + _container_suffix(info.annotation)
        for model in _model_types(info.annotation):
            yield from field_paths(model, inner)


def test_committed_api_md_is_fresh() -> None:
    assert API_MD.is_file(), "generate with: python -m substratus.api.docs --write docs/api.md"
    assert API_MD.read_text(encoding="utf-8") == docs.api_markdown(), (
        "docs/api.md is stale: python -m substratus.api.docs --write docs/api.md"
    )


def test_generation_is_deterministic() -> None:
    assert docs.api_markdown() == docs.api_markdown()


def test_header_says_generated() -> None:
    text = docs.api_markdown()
    assert text.startswith("<!-- Generated from the models")
    assert "Do not edit by hand" in text.split("-->")[0]


def test_every_kind_has_a_section() -> None:
    text = docs.api_markdown()
    for cls in KINDS.values():
        assert f"\n## {cls.KIND}\n" in text
        assert f"[{cls.KIND}](#{cls.KIND.lower()})" in text
        assert f"`{cls.PLURAL}`" in text


@pytest.mark.parametrize("kind", list(KINDS.values()), ids=list(KINDS))
def test_every_field_has_a_row(kind: type[Resource]) -> None:
    rows = {row.path: row for row in docs.kind_doc(kind).rows}
    for path, info in field_paths(kind):
        assert path in rows, path
        row = rows[path]
        assert row.type, path
        if info.description:
            assert row.description.startswith(info.description), path
        if info.is_required():
            assert row.default == "required", path


@pytest.mark.parametrize("kind", list(KINDS.values()), ids=list(KINDS))
def test_rows_appear_in_the_kinds_section(kind: type[Resource]) -> None:
    text = docs.api_markdown()
    start = text.index(f"\n## {kind.KIND}\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else None]
    for row in docs.kind_doc(kind).rows:
        assert f"| `{row.path}` |" in section, row.path


def test_types_defaults_and_descriptions() -> None:
    rows = {row.path: row for row in docs.kind_doc(KINDS["Server"]).rows}
    assert rows["spec.replicas"].type == "integer (>= 0, <= 1024)"
    assert rows["spec.replicas"].default == "`1`"
    assert rows["spec.quantization.bits"].type == "one of `4`, `8`, `16`"
    assert rows["spec.quantization.bits"].default == "`16`"
    assert rows["spec.image"].default == "required"
    assert rows["spec.command"].type == "list of string"
    assert rows["spec.command"].default == "unset"
    assert rows["spec.params"].type == "map of string to (string, integer, number or boolean)"
    assert rows["spec.params"].default == "`{}`"
    assert rows["spec.env"].type == "map of string to (string or object)"
    assert rows["spec.env.<key>.secretKeyRef.name"].default == "required"
    assert rows["spec.resources.gpu.count"].type == "integer (>= 0, <= 64)"
    assert rows["metadata.name"].type == "string"
    assert "DNS label" in rows["metadata.name"].description
    assert rows["status.conditions[].status"].type == 'one of `"True"`, `"False"`, `"Unknown"`'
    assert rows["spec.model"].type == "object or string"
    assert "plain name" in rows["spec.model"].description
    assert rows["apiVersion"].default == '`"substratus.ai/v1"`'


def test_checks_list_the_cel_rules() -> None:
    doc = docs.kind_doc(KINDS["Model"])
    messages = {message for _, message in doc.checks}
    classes = model_classes(KINDS["Model"])
    for name in ("Image", "GitSource"):
        for rule in cel_rules(classes[name]):
            assert rule["message"] in messages
    assert ("spec.image", "set at most one of git and upload") in doc.checks
    assert ("spec.image.git.url", "must not be empty") in doc.checks


def test_table_cells_escape_pipes() -> None:
    lines = docs._table([docs.Row("a", "x | y", "", "b|c")])
    assert lines[-1] == "| `a` | x \\| y |  | b\\|c |"


def test_main_write_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "docs" / "api.md"
    assert docs.main(["--check", str(out)]) == 1
    assert docs.main(["--write", str(out)]) == 0
    assert docs.main(["--check", str(out)]) == 0
    out.write_text(out.read_text() + "edited\n")
    assert docs.main(["--check", str(out)]) == 1
    capsys.readouterr()
    assert docs.main([]) == 0
    assert capsys.readouterr().out == docs.api_markdown()
