"""The typed API: the seed's examples parse, and bad input is rejected with the field path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from substratus.api import (
    Dataset,
    Model,
    Notebook,
    ObjectRef,
    Resource,
    Server,
    ValidationFailed,
    parse_documents,
    parse_object,
)
from substratus.api.common import EnvFrom, Image, Resources, UploadSource
from substratus.api.kinds import KINDS
from substratus.api.loading import kind_of

SEED = Path(__file__).parent / "data" / "seed"
VALID_SEED_FILES = [
    "model-import-huggingface.yaml",
    "model-finetune.yaml",
    "model-from-notebook.yaml",
    "notebook-stock-image.yaml",
    "notebook-upload.yaml",
    "server-fixed.yaml",
]


def seed(name: str) -> str:
    return (SEED / name).read_text(encoding="utf-8")


def parse_one(text: str, source: str = "test.yaml") -> Resource:
    objs = parse_documents(text, source)
    assert len(objs) == 1
    return objs[0]


def problems_of(doc: Any) -> list[tuple[str, str]]:
    """The (path, reason) pairs parse_object reports for a document (text or decoded)."""
    with pytest.raises(ValidationFailed) as info:
        if isinstance(doc, str):
            parse_documents(doc, "test.yaml")
        else:
            parse_object(doc, "test.yaml")
    return info.value.problems


def only_problem(doc: Any) -> tuple[str, str]:
    problems = problems_of(doc)
    assert len(problems) == 1, problems
    return problems[0]


def model(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "substratus.ai/v1",
        "kind": "Model",
        "metadata": {"name": "m"},
        "spec": {"image": {"name": "img"}, **spec},
    }


def server(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "substratus.ai/v1",
        "kind": "Server",
        "metadata": {"name": "s"},
        "spec": {"image": {"name": "img"}, "model": {"name": "m"}, **spec},
    }


# --- the seed's examples -------------------------------------------------------------------------


@pytest.mark.parametrize("name", VALID_SEED_FILES)
def test_seed_example_parses_and_round_trips(name: str) -> None:
    obj = parse_one(seed(name), name)
    assert obj.api_version == "substratus.ai/v1"
    again = parse_object(obj.dump(), "dump")
    assert again == obj
    assert again.dump() == obj.dump()


def test_seed_all_examples_in_one_stream() -> None:
    text = "\n---\n".join(seed(name) for name in VALID_SEED_FILES)
    objs = parse_documents(text, "seed.yaml")
    assert [type(o) for o in objs] == [Model, Model, Model, Notebook, Notebook, Server]


def test_seed_model_import_huggingface() -> None:
    obj = parse_one(seed("model-import-huggingface.yaml"))
    assert isinstance(obj, Model)
    assert obj.key == ("Model", "default", "falcon-7b")
    git = obj.spec.image.git
    assert git is not None
    assert git.url == "https://github.com/substratusai/model-loader-huggingface"
    assert git.branch == "main"
    assert obj.spec.image.has_build
    assert obj.spec.params == {"name": "tiiuae/falcon-7b"}
    assert obj.status.url == "gcs://my-bucket/my-model/"
    assert obj.status.files == ["pytorch-001.bin", "config.json"]
    assert obj.status.disk_size == "27Gi"


def test_seed_model_finetune() -> None:
    obj = parse_one(seed("model-finetune.yaml"))
    assert isinstance(obj, Model)
    assert obj.spec.base_model == ObjectRef(name="falcon-7b")
    assert obj.spec.base_model.namespace is None
    assert obj.spec.training_dataset == ObjectRef(name="k8s-instructions")
    assert obj.spec.params == {"epochs": 1}
    assert isinstance(obj.spec.params["epochs"], int)
    dumped = obj.dump()
    assert dumped["spec"]["baseModel"] == {"name": "falcon-7b"}
    assert dumped["spec"]["trainingDataset"] == {"name": "k8s-instructions"}


def test_seed_model_from_notebook() -> None:
    obj = parse_one(seed("model-from-notebook.yaml"))
    assert isinstance(obj, Model)
    assert obj.spec.image.name == "my-org/model-falcon-7b-k8s-trainer-1690000000"
    assert not obj.spec.image.has_build
    assert obj.spec.resources == Resources()


def test_seed_notebook_stock_image() -> None:
    obj = parse_one(seed("notebook-stock-image.yaml"))
    assert isinstance(obj, Notebook)
    assert obj.spec.image.name == "substratusai/notebook-gpu"
    assert obj.spec.resources.gpu is not None
    assert obj.spec.resources.gpu.count == 4
    assert obj.spec.resources.gpu.type == "nvidia-l4"
    assert obj.spec.resources.gpu_count == 4
    assert obj.spec.model is None
    assert obj.spec.suspend is False


def test_seed_notebook_plain_name_model_shorthand() -> None:
    obj = parse_one(seed("notebook-upload.yaml"))
    assert isinstance(obj, Notebook)
    assert obj.spec.model == ObjectRef(name="falcon-7b")
    assert obj.spec.image.upload == UploadSource()
    assert obj.spec.image.has_build
    assert obj.status.upload_url == "https://some-signed-url..."
    assert obj.status.token == "aklsdjfkasdljfs"
    # The shorthand is written back in full.
    assert obj.dump()["spec"]["model"] == {"name": "falcon-7b"}


def test_notebook_dataset_plain_name_shorthand() -> None:
    doc = {
        "apiVersion": "substratus.ai/v1",
        "kind": "Notebook",
        "metadata": {"name": "nb"},
        "spec": {"image": {"name": "img"}, "dataset": "squad", "model": {"name": "m"}},
    }
    obj = parse_object(doc)
    assert isinstance(obj, Notebook)
    assert obj.spec.dataset == ObjectRef(name="squad")
    assert obj.spec.model == ObjectRef(name="m")


def test_server_plain_name_model_shorthand() -> None:
    obj = parse_object(server(model="falcon-7b"))
    assert isinstance(obj, Server)
    assert obj.spec.model == ObjectRef(name="falcon-7b")


def test_seed_server_image_image_typo_is_an_unknown_field() -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_documents(seed("server.yaml"), "server.yaml")
    exc = info.value
    assert exc.problems == [("spec.image.image", "unknown field")]
    assert "server.yaml: Server/falcon-7b-k8s" in str(exc)
    assert "spec.image.image: unknown field" in str(exc)


def test_seed_server_fixed_with_quantization() -> None:
    obj = parse_one(seed("server-fixed.yaml"))
    assert isinstance(obj, Server)
    assert obj.spec.image.name == "substratusai/basaran"
    assert obj.spec.model == ObjectRef(name="falcon-7b-k8s")
    assert obj.spec.quantization is not None
    assert obj.spec.quantization.bits == 4
    assert obj.spec.replicas == 1


def test_seed_resources_fragment() -> None:
    fragment = yaml.safe_load(
        """
        gpu:
          count: 3
          type: nvidia-l4
        cpu: 6
        disk: 30 # Gigabytes
        memory: 48 # Gigabytes
        """
    )
    res = Resources.model_validate(fragment)
    assert (res.cpu, res.memory, res.disk, res.gpu_count) == (6, 48, 30, 3)
    obj = parse_object(model(resources=fragment))
    assert obj.spec.resources == res


def test_seed_command_fragment() -> None:
    obj = parse_object(model(command=["train.sh"]))
    assert obj.spec.command == ["train.sh"]


def test_seed_image_fragment_with_every_source_is_rejected() -> None:
    # The seed's "Container Images" block lists git, upload and name as alternatives; all at once
    # is ambiguous.
    fragment = {
        "git": {"url": "https://github.com/substratusai/hf-model-loader"},
        "upload": {},
        "name": "substratusai/hf-model-loader",
    }
    assert only_problem(model(image=fragment)) == (
        "spec.image",
        "set at most one of git and upload",
    )
    assert Image.model_validate({"git": fragment["git"]}).has_build
    assert Image.model_validate({"name": fragment["name"], "upload": {}}).has_build


def test_every_kind_minimal() -> None:
    for kind, cls in KINDS.items():
        spec: dict[str, Any] = {"image": {"name": "img"}}
        if kind == "Server":
            spec["model"] = "m"
        obj = parse_object(
            {
                "apiVersion": "substratus.ai/v1",
                "kind": kind,
                "metadata": {"name": "x"},
                "spec": spec,
            }
        )
        assert type(obj) is cls
        assert obj.kind == kind
        assert obj.metadata.namespace == "default"
        assert obj.status.ready is False
        assert obj.status.conditions == []


def test_env_values_string_and_secret_ref() -> None:
    obj = parse_object(
        model(env={"HF_HUB_OFFLINE": "1", "HF_TOKEN": {"secretKeyRef": {"name": "hf", "key": "t"}}})
    )
    assert obj.spec.env["HF_HUB_OFFLINE"] == "1"
    ref = obj.spec.env["HF_TOKEN"]
    assert isinstance(ref, EnvFrom)
    assert (ref.secret_key_ref.name, ref.secret_key_ref.key) == ("hf", "t")
    assert obj.dump()["spec"]["env"]["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "t"}}


def test_params_scalar_types_kept() -> None:
    obj = parse_object(
        model(params={"epochs": 3, "lr": 0.0001, "fp16": True, "name": "x", "_k": 1})
    )
    params = obj.spec.params
    assert params == {"epochs": 3, "lr": 0.0001, "fp16": True, "name": "x", "_k": 1}
    assert type(params["epochs"]) is int
    assert type(params["lr"]) is float
    assert type(params["fp16"]) is bool


def test_json_text_is_accepted() -> None:
    objs = parse_documents(
        '{"apiVersion": "substratus.ai/v1", "kind": "Dataset", "metadata": {"name": "d"},'
        ' "spec": {"image": {"name": "loader"}}}'
    )
    assert len(objs) == 1
    assert isinstance(objs[0], Dataset)


def test_empty_documents_are_skipped() -> None:
    assert parse_documents("") == []
    assert parse_documents("---\n---\n# nothing\n") == []


def test_server_managed_metadata_is_accepted() -> None:
    doc = model()
    doc["metadata"].update(
        uid="1234",
        generation=3,
        resourceVersion="99",
        creationTimestamp="2024-01-01T00:00:00Z",
        managedFields=[{"manager": "kubectl"}],
        ownerReferences=[],
    )
    obj = parse_object(doc)
    assert obj.metadata.generation == 3
    assert obj.metadata.resource_version == "99"


# --- bad input: each with the field path -------------------------------------------------------


def test_malformed_yaml_reports_line_and_column() -> None:
    text = "apiVersion: substratus.ai/v1\nkind: Model\nmetadata:\n  name: a\n spec: [\n"
    path, reason = only_problem(text)
    assert path == ""
    assert reason.startswith("malformed YAML (line 5, column 2): ")
    with pytest.raises(ValidationFailed, match=r"^broken\.yaml: invalid"):
        parse_documents(text, "broken.yaml")


def test_malformed_yaml_unclosed_flow_mapping() -> None:
    path, reason = only_problem("kind: Model\nspec: {image: {name: x}\n")
    assert path == ""
    assert "malformed YAML (line 3, column 1)" in reason


def test_document_not_a_mapping() -> None:
    assert only_problem("- a\n- b\n") == ("", "expected a mapping with apiVersion, kind, metadata")
    assert only_problem(["a"]) == ("", "expected a mapping with apiVersion, kind, metadata")


def test_unknown_kind() -> None:
    doc = model()
    doc["kind"] = "Modle"
    path, reason = only_problem(doc)
    assert path == "kind"
    assert reason == "unknown kind 'Modle': expected one of Dataset, Model, Notebook, Server"


def test_missing_kind() -> None:
    doc = model()
    del doc["kind"]
    assert only_problem(doc) == ("kind", "required field is missing")


def test_wrong_api_version() -> None:
    doc = model()
    doc["apiVersion"] = "substratus.ai/v2"
    assert only_problem(doc) == (
        "apiVersion",
        "expected 'substratus.ai/v1', got 'substratus.ai/v2'",
    )
    del doc["apiVersion"]
    assert only_problem(doc) == ("apiVersion", "expected 'substratus.ai/v1', got None")


def test_missing_metadata_and_spec() -> None:
    doc = model()
    del doc["metadata"]
    del doc["spec"]
    problems = problems_of(doc)
    assert ("metadata", "required field is missing") in problems
    assert ("spec", "required field is missing") in problems


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (lambda d: d.update(foo=1), "foo"),
        (lambda d: d["spec"].update(imagee={"name": "x"}), "spec.imagee"),
        (lambda d: d["spec"]["image"].update(image="x"), "spec.image.image"),
        (lambda d: d["spec"].update(resources={"gpus": 1}), "spec.resources.gpus"),
        (
            lambda d: d["spec"].update(resources={"gpu": {"count": 1, "kind": "l4"}}),
            "spec.resources.gpu.kind",
        ),
        (
            lambda d: d["spec"].update(image={"git": {"url": "u", "ref": "main"}}),
            "spec.image.git.ref",
        ),
        (
            lambda d: d["spec"].update(baseModel={"name": "b", "version": 2}),
            "spec.baseModel.version",
        ),
    ],
)
def test_unknown_field(change: Any, path: str) -> None:
    doc = model()
    change(doc)
    assert only_problem(doc) == (path, "unknown field")


@pytest.mark.parametrize(
    ("spec", "path", "reason"),
    [
        ({"replicas": "two"}, "spec.replicas", "valid integer"),
        ({"replicas": -1}, "spec.replicas", "greater than or equal to 0"),
        ({"command": "train.sh"}, "spec.command", "valid list"),
        ({"command": ["train.sh", 1]}, "spec.command[1]", "valid string"),
        ({"model": 5}, "spec.model", "valid dictionary"),
        ({"model": {"namespace": "x"}}, "spec.model.name", "required field is missing"),
        ({"image": ["img"]}, "spec.image", "must be an image name or {name, git, upload}"),
        ({"resources": {"cpu": "lots"}}, "spec.resources.cpu", "valid number"),
        ({"resources": {"cpu": 0}}, "spec.resources.cpu", "greater than 0"),
        ({"resources": {"gpu": {"count": "many"}}}, "spec.resources.gpu.count", "valid integer"),
        ({"resources": {"gpu": {"count": -1}}}, "spec.resources.gpu.count", ">= 0"),
        ({"params": ["a"]}, "spec.params", "valid dictionary"),
        ({"env": "A=1"}, "spec.env", "valid dictionary"),
    ],
)
def test_wrong_types(spec: dict[str, Any], path: str, reason: str) -> None:
    doc = server(**spec)
    got_path, got_reason = only_problem(doc)
    assert got_path == path
    expected = reason.replace(">= 0", "greater than or equal to 0")
    assert expected in got_reason


def test_notebook_suspend_wrong_type() -> None:
    doc = {
        "apiVersion": "substratus.ai/v1",
        "kind": "Notebook",
        "metadata": {"name": "nb"},
        "spec": {"image": {"name": "img"}, "suspend": "maybe"},
    }
    path, reason = only_problem(doc)
    assert path == "spec.suspend"
    assert "valid boolean" in reason


def test_several_problems_are_all_reported() -> None:
    doc = server(replicas="two", quantization={"bits": 3}, extra=1)
    paths = {path for path, _ in problems_of(doc)}
    assert paths == {"spec.replicas", "spec.quantization.bits", "spec.extra"}


@pytest.mark.parametrize("key", ["1bad", "bad-name", "has space", "dotted.key", ""])
def test_params_key_must_be_an_env_name(key: str) -> None:
    path, reason = only_problem(model(params={key: 1}))
    assert path == "spec.params"
    assert f"params key {key!r} cannot become an environment variable" in reason


@pytest.mark.parametrize("value", [[1, 2], {"nested": 1}, None])
def test_params_values_must_be_scalars(value: Any) -> None:
    path, reason = only_problem(model(params={"ok": value}))
    assert path == "spec.params"
    assert "params key 'ok': value must be a string, number or boolean" in reason


@pytest.mark.parametrize("key", ["bad-name", "9LIVES"])
def test_env_key_must_be_an_env_name(key: str) -> None:
    path, reason = only_problem(model(env={key: "x"}))
    assert path == "spec.env"
    assert f"env key {key!r} cannot become an environment variable" in reason


@pytest.mark.parametrize(
    "value",
    [
        1,
        True,
        None,
        ["a"],
        {"secretKeyRef": {"name": "s"}},
        {"secretKeyRef": {"name": "s", "key": "k", "optional": True}},
        {"secretKeyRef": {"name": "", "key": "k"}},
        {"secretKeyRef": "s/k"},
        {"configMapKeyRef": {"name": "c", "key": "k"}},
        {"secretKeyRef": {"name": "s", "key": "k"}, "value": "x"},
    ],
)
def test_env_value_shape(value: Any) -> None:
    path, reason = only_problem(model(env={"TOKEN": value}))
    assert path == "spec.env"
    assert reason == (
        "env key 'TOKEN': value must be a string or {secretKeyRef: {name: SECRET, key: KEY}}"
    )


def test_git_with_branch_and_tag() -> None:
    doc = model(image={"git": {"url": "https://x", "branch": "main", "tag": "v1"}})
    assert only_problem(doc) == ("spec.image.git", "set branch or tag, not both")


def test_git_with_only_branch_or_only_tag() -> None:
    for ref in ({"branch": "main"}, {"tag": "v1"}, {"branch": "", "tag": "v1"}):
        obj = parse_object(model(image={"git": {"url": "https://x", **ref}}))
        assert obj.spec.image.git is not None


@pytest.mark.parametrize("url", ["", "   "])
def test_git_url_must_not_be_blank(url: str) -> None:
    assert only_problem(model(image={"git": {"url": url}})) == (
        "spec.image.git.url",
        "must not be empty",
    )


@pytest.mark.parametrize("sub", ["/abs", "..", "../up", "a/../../b"])
def test_git_path_must_stay_inside(sub: str) -> None:
    assert only_problem(model(image={"git": {"url": "u", "path": sub}})) == (
        "spec.image.git",
        "path must be relative and stay inside the repository",
    )


def test_git_path_relative_is_fine() -> None:
    obj = parse_object(model(image={"git": {"url": "u", "path": "models/..llama/x"}}))
    assert obj.spec.image.git is not None
    assert obj.spec.image.git.path == "models/..llama/x"


def test_image_with_both_git_and_upload() -> None:
    doc = model(image={"git": {"url": "https://x"}, "upload": {}})
    assert only_problem(doc) == ("spec.image", "set at most one of git and upload")


def test_image_with_no_source() -> None:
    assert only_problem(model(image={})) == ("spec.image", "set one of name, git or upload")


def test_command_must_not_be_empty() -> None:
    assert only_problem(model(command=[])) == ("spec.command", "must name a program when set")


@pytest.mark.parametrize(
    "name",
    ["Bad_Name", "UPPER", "-leading", "trailing-", "dot.ted", "", "a" * 64, "under_score"],
)
def test_invalid_metadata_name(name: str) -> None:
    doc = model()
    doc["metadata"]["name"] = name
    path, reason = only_problem(doc)
    assert path == "metadata.name"
    assert reason.startswith(f"{name!r} is not a valid name")


def test_valid_metadata_names() -> None:
    for name in ["a", "falcon-7b", "0", "a" * 63]:
        doc = model()
        doc["metadata"]["name"] = name
        assert parse_object(doc).metadata.name == name


def test_invalid_metadata_namespace() -> None:
    doc = model()
    doc["metadata"]["namespace"] = "Team_A"
    path, reason = only_problem(doc)
    assert path == "metadata.namespace"
    assert "is not a valid name" in reason


def test_missing_metadata_name() -> None:
    doc = model()
    doc["metadata"] = {"namespace": "x"}
    assert only_problem(doc) == ("metadata.name", "required field is missing")


@pytest.mark.parametrize("bits", [3, 0, 32, "four"])
def test_quantization_bits(bits: Any) -> None:
    path, reason = only_problem(server(quantization={"bits": bits}))
    assert path == "spec.quantization.bits"
    assert "4, 8 or 16" in reason


def test_quantization_default_bits() -> None:
    obj = parse_object(server(quantization={}))
    assert isinstance(obj, Server)
    assert obj.spec.quantization is not None
    assert obj.spec.quantization.bits == 16


def test_error_names_source_kind_and_object() -> None:
    text = seed("model-finetune.yaml") + "\n---\n" + yaml.safe_dump(model(command=[]))
    with pytest.raises(ValidationFailed) as info:
        parse_documents(text, "two.yaml")
    assert info.value.source == "two.yaml: Model/m"
    assert (
        str(info.value)
        == "two.yaml: Model/m: invalid\n  spec.command: must name a program when set"
    )
    assert isinstance(info.value, ValueError)


# --- kind_of -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("Model", Model),
        ("model", Model),
        ("MODEL", Model),
        ("models", Model),
        ("Models", Model),
        ("ml", Model),
        ("models.substratus.ai", Model),
        ("Dataset", Dataset),
        ("datasets", Dataset),
        ("ds", Dataset),
        ("DS", Dataset),
        ("Notebook", Notebook),
        ("notebooks", Notebook),
        ("nb", Notebook),
        ("Server", Server),
        ("servers", Server),
        ("srv", Server),
        ("servers.substratus.ai", Server),
    ],
)
def test_kind_of(name: str, kind: type[Resource]) -> None:
    assert kind_of(name) is kind


@pytest.mark.parametrize("name", ["", "x", "pods", "modelz", "ai"])
def test_kind_of_unknown(name: str) -> None:
    with pytest.raises(ValueError, match="expected one of Dataset, Model, Notebook, Server"):
        kind_of(name)


def test_kind_of_covers_every_name_of_every_kind() -> None:
    for cls in KINDS.values():
        for name in (cls.KIND, cls.KIND.lower(), cls.PLURAL, cls.PLURAL.upper(), *cls.SHORT_NAMES):
            assert kind_of(name) is cls
