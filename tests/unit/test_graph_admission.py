"""References, cycles, admission checks and the params contract."""

from __future__ import annotations

from typing import Any

from substratus.api import parse_object
from substratus.api.kinds import Resource
from substratus.core.admission import admission_problems
from substratus.core.graph import Key, dependencies, dependents, find_cycle
from substratus.core.images import builtin_module, image_repository
from substratus.core.params import params_env, params_json


def model(name: str, base: str | None = None, ns: str = "default", **spec: Any) -> Resource:
    body: dict[str, Any] = {"image": {"name": "substratusai/base"}, "command": ["true"], **spec}
    if base:
        body["baseModel"] = {"name": base}
    return parse_object(
        {
            "apiVersion": "substratus.ai/v1",
            "kind": "Model",
            "metadata": {"name": name, "namespace": ns},
            "spec": body,
        }
    )


def store(*objs: Resource) -> dict[Key, Resource]:
    return {o.key: o for o in objs}


def test_dependencies_resolve_namespaces() -> None:
    obj = parse_object(
        {
            "apiVersion": "substratus.ai/v1",
            "kind": "Notebook",
            "metadata": {"name": "nb", "namespace": "team"},
            "spec": {
                "image": {"name": "i"},
                "model": "m",
                "dataset": {"name": "d", "namespace": "o"},
            },
        }
    )
    keys = [(d.field, d.key) for d in dependencies(obj)]
    assert keys == [("model", ("Model", "team", "m")), ("dataset", ("Dataset", "o", "d"))]


def test_cycle_through_stored_objects_is_found() -> None:
    a, b = model("a", base="b"), model("b", base="c")
    objs = store(a, b)
    c = model("c", base="a")
    cycle = find_cycle(c, objs.get)
    assert cycle == [
        ("Model", "default", "c"),
        ("Model", "default", "a"),
        ("Model", "default", "b"),
        ("Model", "default", "c"),
    ]
    assert find_cycle(model("c"), objs.get) is None
    assert dependents(("Model", "default", "b"), objs.values()) == [a]


def test_admission_rejects_self_reference_cycles_and_base_image_without_command() -> None:
    assert admission_problems(model("a", base="a"), {}.get) == [
        ("spec.baseModel", "an object cannot reference itself")
    ]
    objs = store(model("a", base="b"))
    problems = admission_problems(model("b", base="a"), objs.get)
    assert problems[0][0] == "spec.baseModel"
    assert "Model/b -> Model/a -> Model/b" in problems[0][1]
    nocmd = parse_object(
        {
            "apiVersion": "substratus.ai/v1",
            "kind": "Dataset",
            "metadata": {"name": "d"},
            "spec": {"image": {"name": "substratusai/base:latest"}},
        }
    )
    assert admission_problems(nocmd, {}.get) == [
        ("spec.command", "required with the substratusai/base image")
    ]
    assert admission_problems(model("ok", base="missing"), {}.get) == []
    # A Notebook on the base image runs Jupyter (the original's notebook/notebook.yaml).
    notebook = parse_object({**nocmd.dump(), "kind": "Notebook"})
    assert admission_problems(notebook, {}.get) == []


def test_params_become_env_and_json() -> None:
    params = {"name": "tiiuae/falcon-7b", "epochs": 1, "lr": 0.5, "merge": True}
    assert params_env(params) == {
        "PARAM_NAME": "tiiuae/falcon-7b",
        "PARAM_EPOCHS": "1",
        "PARAM_LR": "0.5",
        "PARAM_MERGE": "true",
    }
    assert '"epochs": 1' in params_json(params)


def test_image_names() -> None:
    assert image_repository("docker.io/substratusai/base:v1") == "substratusai/base"
    assert image_repository("reg:5000/a/b@sha256:00") == "reg:5000/a/b"
    assert builtin_module("substratusai/base:latest") == "substratus.workloads.base"
    assert builtin_module("other/image") is None
