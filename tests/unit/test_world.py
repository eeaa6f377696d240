"""What every runtime observes the same way (core/world.py) and names the same way
(core/naming.py), from lookups a runtime supplies."""

from __future__ import annotations

from typing import Any

from substratus.api import parse_object
from substratus.api.common import UploadSource
from substratus.core.naming import artifact_version, retains_artifacts, upload_file_name
from substratus.core.observed import DepState
from substratus.core.world import dependency_states, missing_secrets, mount_sources


def fine_tune(env: dict[str, Any] | None = None) -> Any:
    return parse_object(
        {
            "apiVersion": "substratus.ai/v1",
            "kind": "Model",
            "metadata": {"name": "ft", "namespace": "team"},
            "spec": {
                "image": {"name": "substratusai/base"},
                "command": ["true"],
                "baseModel": {"name": "base"},
                "trainingDataset": {"name": "data", "namespace": "shared"},
                "env": env or {},
            },
        }
    )


def test_dependency_states_come_from_the_runtimes_lookup() -> None:
    stored = {
        ("Model", "team", "base"): {"status": {"ready": True, "url": "s3://b/team/models/base/v/"}},
        ("Dataset", "shared", "data"): {"status": {"ready": False}},
    }
    deps = dependency_states(fine_tune(), stored.get)
    assert deps == {
        "baseModel": DepState(found=True, ready=True, url="s3://b/team/models/base/v/"),
        "trainingDataset": DepState(found=True, ready=False, url=None),
    }
    assert dependency_states(fine_tune(), lambda key: None)["baseModel"] == DepState(found=False)


def test_missing_secrets_name_the_env_variable_the_secret_and_the_key() -> None:
    env = {
        "A": {"secretKeyRef": {"name": "hf", "key": "token"}},
        "B": {"secretKeyRef": {"name": "gone", "key": "k"}},
        "C": {"secretKeyRef": {"name": "hf", "key": "other"}},
        "D": "plain",
    }
    secrets = {("team", "hf"): {"token": "x"}}
    assert missing_secrets(fine_tune(env), lambda ns, name: secrets.get((ns, name))) == [
        "env.B: secret 'gone' not found",
        "env.C: secret 'hf' has no key 'other'",
    ]


def test_mount_sources_map_either_spelling_to_model_and_data() -> None:
    model, data = DepState(found=True, url="m"), DepState(found=True, url="d")
    assert mount_sources({"baseModel": model, "trainingDataset": data}).model is model
    sources = mount_sources({"model": model, "dataset": data})
    assert (sources.model, sources.data) == (model, data)
    assert mount_sources({}).model is None


def test_names() -> None:
    assert artifact_version(3, 2, 17) == "g3-a2-17"
    upload = UploadSource(md5="d41d8cd98f00b204e9800998ecf8427e", requestId="r1")
    assert upload_file_name(upload) == "d41d8cd98f00b204e9800998ecf8427e.tar.gz"
    assert upload_file_name(UploadSource(requestId="r1")) == "request-r1.tar.gz"
    assert retains_artifacts({"substratus.ai/retain-artifacts": "True"})
    assert not retains_artifacts({"substratus.ai/retain-artifacts": "no"})
    assert retains_artifacts(None, requested=True)
