"""Which Notebook `sub notebook` makes for a directory or an object, and the trainer manifest
it writes on the way out (cli/notebook/spec.py, trainer.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from substratus.api.loading import parse_object
from substratus.cli.notebook import spec as nbspec
from substratus.cli.notebook.trainer import git_source, trainer_command, trainer_manifest
from substratus.cli.targets import UsageError

MODEL_YAML = """\
apiVersion: substratus.ai/v1
kind: Model
metadata: {name: falcon-7b-k8s}
spec:
  image: {upload: {}}
  baseModel: {name: falcon-7b}
  trainingDataset: {name: k8s-instructions}
  params: {epochs: 1}
  resources: {cpu: 2, memory: 8}
"""


def test_a_directory_gets_a_notebook_built_from_it_with_its_model_yaml(tmp_path: Path) -> None:
    code = tmp_path / "My_Trainer"
    code.mkdir()
    (code / "model.yaml").write_text(MODEL_YAML)
    body, note = nbspec.notebook_for_directory(code, "team", None, cluster=False)
    assert body["metadata"] == {"name": "my-trainer", "namespace": "team"}
    assert body["spec"] == {
        "image": {"upload": {}},
        "model": {"name": "falcon-7b"},
        "dataset": {"name": "k8s-instructions"},
        "params": {"epochs": 1},
        "resources": {"cpu": 2, "memory": 8},
    }
    assert "model.yaml" in note
    parse_object(body, "test")  # a valid Notebook


def test_the_first_model_manifest_serves_when_there_is_no_model_yaml(tmp_path: Path) -> None:
    (tmp_path / "a-server.yaml").write_text("kind: Server\nspec: {model: x}\n")
    (tmp_path / "b.yaml").write_text(MODEL_YAML.replace("  baseModel: {name: falcon-7b}\n", ""))
    body, _ = nbspec.notebook_for_directory(tmp_path, "default", "nb", cluster=False)
    # An import Model (no baseModel) is itself the model mounted.
    assert body["spec"]["model"] == {"name": "falcon-7b-k8s"}


def test_on_a_cluster_a_directory_without_a_dockerfile_uses_the_stock_image(
    tmp_path: Path,
) -> None:
    body, note = nbspec.notebook_for_directory(tmp_path, "default", "nb", cluster=True)
    assert body["spec"]["image"] == {"name": "substratusai/notebook"}
    assert "Dockerfile" in note
    (tmp_path / "Dockerfile").write_text("FROM substratusai/notebook\n")
    body, _ = nbspec.notebook_for_directory(tmp_path, "default", "nb", cluster=True)
    assert body["spec"]["image"] == {"upload": {}}


def test_bad_names_are_refused_naming_the_flag(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--name"):
        nbspec.notebook_for_directory(tmp_path, "default", "Not_A_Name", cluster=False)
    assert nbspec.name_for_directory(tmp_path / "2024 runs") == "nb-2024-runs"


def obj(kind: str, spec: dict[str, Any], name: str = "x") -> dict[str, Any]:
    return {
        "apiVersion": "substratus.ai/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "ns", "uid": "u", "generation": 3},
        "spec": spec,
        "status": {"ready": True},
    }


def test_a_notebook_for_an_object_mimics_its_environment() -> None:
    model = obj(
        "Model",
        {
            "image": {"name": "substratusai/model-trainer-huggingface"},
            "baseModel": {"name": "base"},
            "trainingDataset": {"name": "data"},
            "params": {"epochs": 2},
            "env": {"HF_TOKEN": {"secretKeyRef": {"name": "hf", "key": "token"}}},
            "resources": {"gpu": {"type": "nvidia-l4", "count": 1}},
        },
    )
    nb = nbspec.notebook_for_object(model)
    assert nb["metadata"] == {"name": "x-notebook", "namespace": "ns"}
    # A built-in trainer's program is not Jupyter: the stock notebook image, same libraries.
    assert nb["spec"]["image"] == {"name": "substratusai/notebook"}
    assert nb["spec"]["model"] == {"name": "base"}
    assert nb["spec"]["dataset"] == {"name": "data"}
    assert nb["spec"]["params"] == {"epochs": 2}
    assert nb["spec"]["resources"]["gpu"]["count"] == 1
    assert "HF_TOKEN" in nb["spec"]["env"]
    parse_object(nb, "test")

    built = obj("Model", {"image": {"git": {"url": "https://example.com/r"}}})
    assert nbspec.notebook_for_object(built)["spec"]["image"] == {
        "git": {"url": "https://example.com/r"}
    }
    assert nbspec.notebook_for_object(built)["spec"]["model"] == {"name": "x"}
    server = obj("Server", {"image": "custom/server:1", "model": {"name": "m"}})
    assert nbspec.notebook_for_object(server)["spec"]["model"] == {"name": "m"}
    assert nbspec.notebook_for_object(server)["spec"]["image"] == {"name": "custom/server:1"}
    dataset = obj("Dataset", {"image": {"name": "substratusai/dataset-loader"}})
    assert nbspec.notebook_for_object(dataset)["spec"]["dataset"] == {"name": "x"}


def test_notebook_slash_name_resumes_that_notebook() -> None:
    nb = obj("Notebook", {"image": {"name": "substratusai/notebook"}, "suspend": True}, "lab")
    body = nbspec.notebook_for_object(nb)
    assert body["metadata"] == {"name": "lab", "namespace": "ns"}
    assert body["spec"]["suspend"] is False
    assert "status" not in body


def test_targets_name_a_kind() -> None:
    assert nbspec.parse_object_target("model/m") == ("Model", "m")
    assert nbspec.parse_object_target("nb/lab") == ("Notebook", "lab")
    with pytest.raises(UsageError, match="KIND/NAME"):
        nbspec.parse_object_target("model")
    with pytest.raises(UsageError):
        nbspec.parse_object_target("pods/x")


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_a_clean_pushed_checkout_is_recorded_as_its_repository_and_branch(
    tmp_path: Path,
) -> None:
    remote, work = tmp_path / "remote.git", tmp_path / "work"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    git(tmp_path, "clone", "-q", str(remote), str(work))
    (work / "trainer").mkdir()
    (work / "trainer" / "train.py").write_text("print(1)\n")
    git(work, "-c", "user.email=a@b", "-c", "user.name=a", "checkout", "-q", "-b", "exp/lr")
    git(work, "add", ".")
    git(work, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "-m", "x")
    assert git_source(work / "trainer")[1] == "branch exp/lr has no upstream remote"
    git(work, "push", "-q", "-u", "origin", "exp/lr")
    source, _ = git_source(work / "trainer")
    assert source == {"url": str(remote), "branch": "exp/lr", "path": "trainer"}
    (work / "trainer" / "train.py").write_text("print(2)\n")
    assert git_source(work / "trainer") == (None, "the checkout has uncommitted changes")
    git(work, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "-am", "y")
    assert git_source(work / "trainer")[1] == "branch exp/lr is not pushed to origin"
    assert git_source(tmp_path)[1] == "not a git checkout"


def test_the_trainer_command_is_found_or_asked_for(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--trainer-command"):
        trainer_command(tmp_path, None)
    (tmp_path / "finetune_train.py").write_text("")
    assert trainer_command(tmp_path, None) == ["python", "finetune_train.py"]
    (tmp_path / "train.py").write_text("")
    assert trainer_command(tmp_path, None) == ["python", "train.py"]
    assert trainer_command(tmp_path, "python -m pkg.run --lr 1e-4") == [
        "python", "-m", "pkg.run", "--lr", "1e-4",
    ]  # fmt: skip


def test_the_trainer_manifest_trains_the_notebooks_code_as_a_model(tmp_path: Path) -> None:
    nb = obj(
        "Notebook",
        {
            "image": {"upload": {"md5": "0" * 32}},
            "model": {"name": "base"},
            "params": {"epochs": 1},
            "resources": {"cpu": 2},
        },
        "lab",
    )
    nb["status"]["image"] = "venv:abc"
    name, text = trainer_manifest(nb, tmp_path, ["python", "train.py"], None)
    assert name.startswith("model-") and name.endswith(".yaml")
    assert "# The notebook had no dataset" in text
    body = yaml.safe_load(text)
    assert body["kind"] == "Model"
    assert body["metadata"]["name"] == "lab-" + name.removeprefix("model-").removesuffix(".yaml")
    assert body["spec"]["image"] == {"upload": {}}  # a local process build is no image name
    assert body["spec"]["baseModel"] == {"name": "base"}
    assert body["spec"]["trainingDataset"] == {}
    assert body["spec"]["command"] == ["python", "train.py"]
    assert body["spec"]["params"] == {"epochs": 1}

    # A registry image built from the same files is named, pinned; with git, the branch.
    from substratus.storage import pack_context

    md5 = pack_context(tmp_path, tmp_path.parent / "ctx.tar.gz")
    nb["spec"]["image"]["upload"]["md5"] = md5
    nb["spec"]["dataset"] = {"name": "d"}
    nb["status"]["image"] = "registry.local/ns/images@sha256:" + "1" * 64
    _, text = trainer_manifest(nb, tmp_path, ["python", "train.py"], None)
    body = yaml.safe_load(text)
    assert body["spec"]["image"] == {"name": nb["status"]["image"]}
    assert body["spec"]["trainingDataset"] == {"name": "d"}
    parse_object(body, "test")
    git_src = {"url": "https://example.com/r", "branch": "exp/LR"}
    name, text = trainer_manifest(nb, tmp_path, ["python", "train.py"], git_src)
    assert name == "model-exp-lr.yaml"
    assert yaml.safe_load(text)["spec"]["image"] == {"git": git_src}
