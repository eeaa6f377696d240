"""Bad manifests: bounded YAML, duplicate keys, empty, missing and oversized files.

The field-level checks (names, numbers, labels, uploads, Secrets) are in
test_bad_input_fields.py; the supervisor's side in tests/integration/test_bad_input_supervisor.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from substratus.api import ValidationFailed, parse_documents
from substratus.api.limits import MAX_ALIASES, MAX_DEPTH, MAX_MANIFEST_BYTES
from substratus.api.loading import load_yaml_documents, parse_object
from substratus.cli.manifests import read_documents
from substratus.core.client import NotFoundError

OBJ = """\
apiVersion: substratus.ai/v1
kind: Model
metadata:
  name: {name}
spec:
  image: {{name: substratusai/base}}
"""

# "Billion laughs" under metadata, where unknown fields are ignored: 9**8 values when expanded.
BOMB = OBJ.format(name="bomb").replace(
    "spec:",
    "  a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n"
    + "".join(
        f"  {x}: &{x} [{','.join([f'*{p}'] * 9)}]\n"
        for p, x in zip("abcdefg", "bcdefgh", strict=True)
    )
    + "spec:",
)


def problem(text: str) -> str:
    with pytest.raises(ValidationFailed) as info:
        for doc in load_yaml_documents(text, "t.yaml"):
            parse_object(doc, "t.yaml")
    assert len(info.value.problems) == 1, info.value.problems
    return info.value.problems[0][1]


# --- aliases, depth -------------------------------------------------------------------------------


def test_alias_bomb_is_refused_quickly_where_it_is() -> None:
    assert len(BOMB) < 500
    start = time.monotonic()
    reason = problem(BOMB)
    assert "aliases expand to more than" in reason and "(line " in reason
    assert time.monotonic() - start < 2


def test_too_many_aliases() -> None:
    text = OBJ.format(name="a").replace(
        "spec:", "  x: &x 1\n  y: [" + ",".join(["*x"] * (MAX_ALIASES + 1)) + "]\nspec:"
    )
    assert f"more than {MAX_ALIASES} aliases" in problem(text)


def test_alias_to_its_own_anchor() -> None:
    assert "refers to its own anchor" in problem("a: &a [1, *a]\n")


def test_a_few_aliases_and_merge_keys_still_work() -> None:
    text = OBJ.format(name="a").replace(
        "spec:\n  image: {name: substratusai/base}",
        "spec:\n  image: &img {name: substratusai/base}\n  env: &env {A: x}\n"
        "  params:\n    <<: {b: 1, c: 2}\n    c: 3\n",
    )
    (obj,) = parse_documents(text)
    assert obj.spec.env == {"A": "x"}
    assert obj.spec.params == {"b": 1, "c": 3}


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 10_000, 200_000])
def test_deep_yaml_nesting_is_invalid_input_not_a_recursion_error(depth: int) -> None:
    text = OBJ.format(name="a") + "status: " + "[" * depth + "]" * depth + "\n"
    assert f"nested deeper than {MAX_DEPTH} levels" in problem(text)


def test_deep_json_document_is_invalid_input() -> None:
    # As the supervisor receives it: decoded JSON, not YAML.
    doc = json.loads(
        '{"apiVersion":"substratus.ai/v1","kind":"Model","metadata":{"name":"a","x":'
        + "[" * 500
        + "]" * 500
        + '},"spec":{"image":{"name":"b"}}}'
    )
    with pytest.raises(ValidationFailed) as info:
        parse_object(doc)
    assert info.value.problems[0][1] == f"nested deeper than {MAX_DEPTH} levels"
    assert info.value.problems[0][0].startswith("metadata.x[0][0]")


def test_nesting_at_the_limit_is_fine() -> None:
    # Root mapping, metadata, x, then lists: MAX_DEPTH levels in all.
    inner = MAX_DEPTH - 3
    text = OBJ.format(name="a").replace("spec:", "  x: " + "[" * inner + "]" * inner + "\nspec:")
    assert parse_documents(text)[0].metadata.name == "a"


# --- duplicate keys, concatenated objects, non-JSON values -------------------------------------


def test_duplicate_key_is_refused_with_both_lines() -> None:
    text = OBJ.format(name="a").replace("spec:", "  name: b\nspec:")
    reason = problem(text)
    assert "duplicate key 'name' (first at line 4)" in reason and "(line 5," in reason


def test_objects_joined_without_separator_are_refused() -> None:
    reason = problem(OBJ.format(name="a") + OBJ.format(name="b"))
    assert "duplicate key 'apiVersion'" in reason and "'---'" in reason
    # With the separator both are read.
    both = parse_documents(OBJ.format(name="a") + "---\n" + OBJ.format(name="b"))
    assert [o.metadata.name for o in both] == ["a", "b"]


def test_timestamps_stay_strings_and_binary_is_refused() -> None:
    text = OBJ.format(name="a").replace("spec:", "  labels: {day: 2024-01-02}\nspec:")
    assert parse_documents(text)[0].metadata.labels == {"day": "2024-01-02"}
    binary = OBJ.format(name="a").replace("spec:", "  x: !!binary aGk=\nspec:")
    assert problem(binary) == "a bytes value is not JSON data; quote it"


# --- files: empty, missing, too large ------------------------------------------------------------


def test_empty_file_is_refused(tmp_path: Path) -> None:
    for text in ("", "# only a comment\n", "---\n---\n"):
        f = tmp_path / "empty.yaml"
        f.write_text(text)
        with pytest.raises(ValidationFailed) as info:
            read_documents([str(f)], None)
        assert info.value.problems == [("", "holds no objects")]


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no such file or directory"):
        read_documents([str(tmp_path / "nope.yaml")], None)


def test_oversized_file_is_refused_before_reading(tmp_path: Path) -> None:
    f = tmp_path / "big.yaml"
    with open(f, "wb") as out:
        out.truncate(MAX_MANIFEST_BYTES + 1)
    with pytest.raises(ValidationFailed, match="larger than the limit"):
        read_documents([str(f)], None)


def test_oversized_stdin_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("#" * (MAX_MANIFEST_BYTES + 10)))
    with pytest.raises(ValidationFailed, match="larger than the limit"):
        read_documents(["-"], None)


def test_secrets_in_manifests_are_bounded_too(tmp_path: Path) -> None:
    # Secrets skip the kinds' models in the CLI, but not the object size bound.
    f = tmp_path / "s.yaml"
    f.write_text(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n"
        f"stringData: {{k: {'x' * 2 * 1024 * 1024}}}\n"
    )
    with pytest.raises(ValidationFailed, match="more than the limit of 1572864"):
        read_documents([str(f)], None)
