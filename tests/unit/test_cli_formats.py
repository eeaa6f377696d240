"""`sub get`'s output formats and selectors, as kubectl defines them: JSONPath templates,
custom columns, -o name, label selectors."""

from __future__ import annotations

from typing import Any

import pytest

from substratus.cli import jsonpath
from substratus.cli.output import check_output, render
from substratus.cli.selectors import SelectorError, parse_selector
from substratus.cli.targets import parse_target


def obj(
    name: str, ready: bool, labels: dict[str, str] | None = None, **status: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "substratus.ai/v1",
        "kind": "Model",
        "metadata": {"name": name, "namespace": "default", "labels": labels or {}},
        "spec": {"image": "substratusai/base"},
        "status": {
            "ready": ready,
            "conditions": [
                {
                    "type": "Ready",
                    "status": str(ready),
                    "reason": "Succeeded" if ready else "JobRunning",
                }
            ],
            **status,
        },
    }


A = obj("a", True, {"team": "nlp", "tier": "gold"}, files=["config.json", "model.safetensors"])
B = obj("b", False, {"team": "vision"})
LIST = {"apiVersion": "v1", "kind": "List", "items": [A, B]}


@pytest.mark.parametrize(
    ("template", "want"),
    [
        ("{.metadata.name}", "a"),
        ("{$.metadata.name}", "a"),
        ("{.status.files[0]}", "config.json"),
        ("{.status.files[-1]}", "model.safetensors"),
        ("{.status.files[*]}", "config.json model.safetensors"),
        ("{.status.files[0:1]}", "config.json"),
        ("{.metadata.labels.team}", "nlp"),
        ("{.metadata.labels['team']}", "nlp"),
        ('{.status.conditions[?(@.type=="Ready")].reason}', "Succeeded"),
        ("{.status.ready}", "true"),
        ("{.metadata.labels}", '{"team":"nlp","tier":"gold"}'),
        ("name: {.metadata.name}{'\\n'}", "name: a\n"),
        ('{.metadata.name}{"\\t"}{.status.ready}', "a\ttrue"),
        ("{.nothing.here}", ""),
        ("{..reason}", "Succeeded"),
    ],
)
def test_jsonpath_on_one_object(template: str, want: str) -> None:
    assert jsonpath.render(jsonpath.parse(template), A) == want


def test_jsonpath_on_a_list_with_range_and_filters() -> None:
    names = "{range .items[*]}{.metadata.name}={.status.ready}{'\\n'}{end}"
    assert jsonpath.render(jsonpath.parse(names), LIST) == "a=true\nb=false\n"
    ready = "{.items[?(@.status.ready==true)].metadata.name}"
    assert jsonpath.render(jsonpath.parse(ready), LIST) == "a"
    assert jsonpath.render(jsonpath.parse("{.items[*].metadata.name}"), LIST) == "a b"
    assert (
        jsonpath.render(jsonpath.parse("{.items[?(@.metadata.labels.tier)].metadata.name}"), LIST)
        == "a"
    )


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("jsonpath={.a", "unclosed"),
        ("jsonpath={range .items[*]}{.a}", "without {end}"),
        ("custom-columns=NAME", "NAME:PATH"),
        ("table", "is not one of"),
        ("jsonpath=", "is not one of"),
    ],
)
def test_bad_output_formats_name_the_flag(output: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        check_output(output)
    assert str(caught.value).startswith("--output")


def test_name_and_custom_columns() -> None:
    assert render([A, B], "name", single=False) == "model.substratus.ai/a\nmodel.substratus.ai/b"
    # What -o name prints is a target the other verbs take.
    assert parse_target(["model.substratus.ai/a"]) == (["Model"], "a")
    table = render(
        [A, B], "custom-columns=NAME:.metadata.name,TEAM:{.metadata.labels.team},X:.x", single=False
    )
    assert table.splitlines() == [
        "NAME   TEAM     X",
        "a      nlp      <none>",
        "b      vision   <none>",
    ]


@pytest.mark.parametrize(
    ("selector", "names"),
    [
        ("team=nlp", ["a"]),
        ("team==nlp", ["a"]),
        ("team!=nlp", ["b"]),
        ("tier", ["a"]),
        ("!tier", ["b"]),
        ("team in (nlp, vision)", ["a", "b"]),
        ("team notin (nlp)", ["b"]),
        ("team=nlp,tier=gold", ["a"]),
        ("team=nlp,tier=silver", []),
    ],
)
def test_label_selectors(selector: str, names: list[str]) -> None:
    match = parse_selector(selector)
    assert [o["metadata"]["name"] for o in (A, B) if match(o)] == names


def test_a_bad_selector_names_the_flag() -> None:
    with pytest.raises(SelectorError, match="--selector"):
        parse_selector("team=(nlp")


def test_explain_a_kind_and_a_field_from_the_crd_schema() -> None:
    from substratus.cli.explain import explain
    from substratus.cli.targets import UsageError

    kind = explain("models")
    assert kind.startswith("GROUP:      substratus.ai\nKIND:       Model\nVERSION:    v1\n")
    assert "  spec\t<Object> -required-" in kind
    field = explain("server.spec.autoscaling")
    assert "FIELD: autoscaling <Object>" in field
    assert "  queueLimit\t<integer>\n    Requests held while no replica is ready" in field
    assert "FIELD: files <[]string>" in explain("model.status.files")
    with pytest.raises(
        UsageError, match=r'field "nope" does not exist in server.spec \(fields: .*autoscaling'
    ):
        explain("server.spec.nope")
    with pytest.raises(UsageError, match="unknown kind"):
        explain("pods")


def test_progress_lines_that_logs_draws_as_bars() -> None:
    from substratus.cli.logbars import parse

    found = parse("loading s3://b/x.jsonl: 12.5 MB of 100.0 MB (3.1 MB/s) …")
    assert found is not None and (found["what"], found["done"], found["total"]) == (
        "loading s3://b/x.jsonl",
        12.5,
        100.0,
    )
    rows = parse("loading rows: 1200 rows (300.0 rows/s) done")
    assert rows is not None and rows["total"] is None and rows["finished"] is True
    for other in ("step 3/8 loss 1.2", "hello: world", "x: 1 MB (fast) maybe"):
        assert parse(other) is None
