"""The original Substratus's manifests through `sub`, as its users have them: written shapes come
back as written, uploads in the original's shape work, and its facebook-opt-125m flow (dataset,
base model, fine-tuned model, server) runs to Ready on the local runtime."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Local
from tests.integration.test_cli import apply_project, sub, write
from tests.workloads.fake_hub import FakeHub
from tests.workloads.tiny import make_tiny_llama

pytestmark = pytest.mark.integration

ORIGINAL = Path(__file__).resolve().parents[1] / "data" / "original-examples"


def _original(path: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ORIGINAL / path).read_text())
    return doc


def test_what_a_user_wrote_is_what_get_shows(local: Local) -> None:
    doc = {
        "apiVersion": "substratus.ai/v1",
        "kind": "Model",
        "metadata": {"name": "written"},
        "spec": {
            "image": "substratusai/base",
            "command": ["sh", "-c", "echo w > artifacts/w"],
            "params": {"x": 123},
        },
    }
    assert (
        sub("apply", "-f", "-", "--wait", "--timeout", "60s", input=json.dumps(doc)).returncode == 0
    )
    shown = yaml.safe_load(sub("get", "model/written", "-o", "yaml").stdout)
    assert shown["spec"] == doc["spec"]  # a string image stays a string
    assert shown["status"]["artifacts"]["url"] == shown["status"]["url"]
    wide = sub("get", "models", "-o", "wide")
    assert wide.returncode == 0 and "substratusai/base" in wide.stdout, wide.stderr


def test_an_upload_in_the_original_shape_is_sent_and_built(local: Local, tmp_path: Path) -> None:
    r = apply_project(
        tmp_path / "project",
        {"run.sh": "echo built-from-upload > artifacts/out\n"},
        "kind: Model\nmetadata: {name: up}\nspec: {build: {upload: {}}, command: [sh, run.sh]}\n",
    )
    assert r.returncode == 0, r.stderr
    shown = yaml.safe_load(sub("get", "model/up", "-o", "yaml").stdout)
    upload = shown["spec"]["build"]["upload"]
    assert set(upload) == {"md5Checksum", "requestID"} and "image" not in shown["spec"]
    assert shown["status"]["buildUpload"]["requestID"] == upload["requestID"]
    out = Path(shown["status"]["url"].removeprefix("file://")) / "out"
    assert out.read_text() == "built-from-upload\n"


def test_the_original_opt_125m_flow_runs_to_ready(
    local: Local, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The original's manifests, unchanged but for what cannot be reached from here: the hub
    is the tests' loopback hub serving a tiny random model as facebook/opt-125m, and the squad
    Dataset (a foreign image, substratusai/dataset-squad) is the original's own http dataset
    loader reading a local file."""
    tiny = make_tiny_llama(tmp_path / "tiny")
    rows = [{"text": f"Question {i}: what is {i} plus one? Answer: {i + 1}."} for i in range(16)]
    data = write(tmp_path / "squad.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    with FakeHub(tmp_path / "hub") as hub:
        hub.add_repo(
            "facebook/opt-125m", {p.name: p.read_bytes() for p in tiny.iterdir() if p.is_file()}
        )
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        dataset = _original("datasets/k8s-instructions.yaml")
        dataset["metadata"]["name"] = "squad"
        dataset["spec"] = {"image": "substratusai/dataset-loader-http"}
        dataset["spec"]["params"] = {"urls": data.as_uri()}
        docs = [
            dataset,
            _original("facebook-opt-125m/base-model.yaml"),
            _original("facebook-opt-125m/finetuned-model.yaml"),
            _original("facebook-opt-125m/base-server.yaml"),
        ]
        text = "---\n".join(yaml.safe_dump(d) for d in docs)
        r = sub("apply", "-f", "-", "--wait", "--timeout", "100s", input=text)
        assert r.returncode == 0, r.stdout + r.stderr
    tuned = local.get("Model", "fb-opt-125m-squad")
    assert tuned["status"]["ready"] and "model.safetensors" in tuned["status"]["files"]
    assert local.get("Server", "facebook-opt-125m")["status"]["ready"]


def test_the_original_base_image_notebook_serves_jupyter(local: Local) -> None:
    pytest.importorskip("jupyterlab")
    doc = _original("notebook/notebook.yaml")  # image: substratusai/base:latest, no command
    r = sub("apply", "-f", "-", "--wait", "--timeout", "120s", input=yaml.safe_dump(doc))
    assert r.returncode == 0, r.stderr
    nb = local.get("Notebook", "example")
    request = urllib.request.Request(
        nb["status"]["url"] + "/api/contents/params.json",
        headers={"Authorization": f"token {nb['status']['token']}"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert json.loads(json.loads(resp.read())["content"]) == {"abc": "xyz", "x": 123}
