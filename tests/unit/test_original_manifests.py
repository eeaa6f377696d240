"""The original Substratus's 31 example manifests (tests/data/original-examples) and its
spelling of a spec (api/compat.py): each validates and means what it says; mixed and
conflicting spellings are refused naming the fields; the written form round-trips."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from substratus.api import ValidationFailed, parse_object
from substratus.api.kinds import Resource

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "original-examples"
FILES = sorted(EXAMPLES.rglob("*.yaml"))

LOADER = "substratusai/model-loader-huggingface"
TRAINER = "substratusai/model-trainer-huggingface"
BASARAN = "substratusai/model-server-basaran"
IMAGES = "https://github.com/substratusai/images"
HF_TOKEN = {"name": "ai", "key": "HUGGING_FACE_HUB_TOKEN"}
FINETUNE_PARAMS = {"num_train_epochs": 1, "save_steps": 5}


def _git(path: str, branch: str | None = None) -> dict[str, Any]:
    return {"url": IMAGES, "path": path, **({"branch": branch} if branch else {})}


# Per example: what it means, as (dotted attribute path on the parsed object, value).
EXPECTED: dict[str, dict[str, Any]] = {
    "datasets/k8s-instructions.yaml": {
        "image.git": _git("dataset-loader-http"),
        "params": {
            "urls": "https://huggingface.co/datasets/substratusai/k8s-instructions/"
            "raw/main/k8s-instructions.jsonl"
        },
    },
    "datasets/squad-gitops.yaml": {
        "image.git": _git("dataset-squad", "main"),
        "command": ["load.sh"],
    },
    "datasets/squad.yaml": {"image.name": "substratusai/dataset-squad", "command": ["load.sh"]},
    "facebook-opt-125m/base-model.yaml": {
        "image.name": LOADER,
        "params": {"name": "facebook/opt-125m"},
        "base_model": None,
    },
    "facebook-opt-125m/base-notebook.yaml": {
        "image.git": _git("base"),
        "model.name": "facebook-opt-125m",
        "dataset.name": "squad",
        "suspend": True,
        "params": {"foo": "bar", "x": 123},
    },
    "facebook-opt-125m/base-server.yaml": {
        "image.name": BASARAN,
        "model.name": "facebook-opt-125m",
    },
    "facebook-opt-125m/finetuned-model-gitops.yaml": {
        "image.git": _git("model-trainer-huggingface"),
        "base_model.name": "facebook-opt-125m",
        "training_dataset.name": "squad",
        "params": {"epochs": 1},
    },
    "facebook-opt-125m/finetuned-model.yaml": {
        "image.name": TRAINER,
        "base_model.name": "facebook-opt-125m",
        "training_dataset.name": "squad",
        "params": {"epochs": 1},
    },
    "facebook-opt-125m/finetuned-notebook.yaml": {
        "image.name": "substratusai/base",
        "model.name": "fb-opt-125m-squad",
        "suspend": True,
    },
    "facebook-opt-125m/finetuned-server.yaml": {
        "image.git": _git("model-server-basaran"),
        "model.name": "fb-opt-125m-squad",
    },
    "falcon-40b/base-model.yaml": {"image.name": LOADER, "params": {"name": "tiiuae/falcon-40b"}},
    "falcon-40b/finetuned-model.yaml": {
        "image.name": TRAINER,
        "base_model.name": "falcon-40b",
        "training_dataset.name": "k8s-instructions",
        "params": {"epochs": 1},
        "resources.gpu.count": 8,
        "resources.gpu.type": "nvidia-l4",
    },
    "falcon-40b/notebook.yaml": {
        "image.git": _git("model-trainer-huggingface"),
        "command": ["notebook.sh"],
        "suspend": False,
        "model.name": "falcon-40b",
        "dataset.name": "k8s-instructions",
        "resources.disk": 50,
        "resources.gpu.count": 8,
    },
    "falcon-40b/server.yaml": {
        "image.name": BASARAN,
        "model.name": "falcon-40b",
        "env": {"MODEL_LOAD_IN_4BIT": "true"},
        "resources.gpu.count": 1,
    },
    "falcon-7b-instruct/base-model.yaml": {
        "image.name": LOADER,
        "params": {"name": "tiiuae/falcon-7b-instruct"},
    },
    "falcon-7b-instruct/finetuned-model-custom-prompt.yaml": {
        "image.name": TRAINER,
        "base_model.name": "falcon-7b-instruct",
        "training_dataset.name": "k8s-instructions",
        "params.num_train_epochs": 1,
        "params.save_steps": 5,
        "resources.gpu.count": 4,
    },
    "falcon-7b-instruct/finetuned-model.yaml": {
        "image.name": TRAINER,
        "base_model.name": "falcon-7b-instruct",
        "training_dataset.name": "k8s-instructions",
        "params": FINETUNE_PARAMS,
    },
    "falcon-7b-instruct/finetuned-server.yaml": {
        "image.name": BASARAN,
        "model.name": "falcon-7b-instruct-k8s",
        "env": {"MODEL_LOAD_IN_8BIT": "true"},
    },
    "falcon-7b-instruct/notebook.yaml": {
        "image.git": _git("model-trainer-huggingface"),
        "model.name": "falcon-7b-instruct",
        "dataset.name": "k8s-instructions",
        "resources.gpu.count": 4,
    },
    "falcon-7b-instruct/server-4bit-any-gpu.yaml": {
        "image.name": BASARAN,
        "model.name": "falcon-7b-instruct",
        "resources.gpu.count": 1,
    },
    "falcon-7b-instruct/server.yaml": {"image.name": BASARAN, "model.name": "falcon-7b-instruct"},
    "llama2-13b-chat-gguf/base-model.yaml": {
        "image.name": LOADER,
        "params": {"name": "substratusai/Llama-2-13B-chat-GGUF", "files": "model.bin"},
    },
    "llama2-13b-chat-gguf/server-cpu.yaml": {
        "image.name": "substratusai/model-server-llama-cpp:latest",
        "model.name": "llama2-13b-chat-gguf",
    },
    "llama2-13b-chat-gguf/server-gpu.yaml": {
        "image.name": "substratusai/model-server-llama-cpp:latest-gpu",
        "model.name": "llama2-13b-chat-gguf",
        "params": {"n_gpu_layers": 30},
    },
    "llama2-70b/base-model.yaml": {
        "image.name": LOADER,
        "params": {"name": "meta-llama/Llama-2-70b-hf"},
        "env.HUGGING_FACE_HUB_TOKEN.secret_key_ref": HF_TOKEN,
    },
    "llama2-70b/server.yaml": {
        "image.name": BASARAN,
        "model.name": "llama-2-70b",
        "resources.gpu.type": "nvidia-a100",
    },
    "llama2-7b/base-model.yaml": {
        "image.name": LOADER,
        "params": {"name": "meta-llama/Llama-2-7b-hf"},
        "env.HUGGING_FACE_HUB_TOKEN.secret_key_ref": HF_TOKEN,
    },
    "llama2-7b/finetuned-model.yaml": {
        "image.name": TRAINER,
        "base_model.name": "llama-2-7b",
        "training_dataset.name": "k8s-instructions",
        "params": FINETUNE_PARAMS,
    },
    "llama2-7b/finetuned-server.yaml": {"image.name": BASARAN, "model.name": "llama-2-7b-k8s"},
    "llama2-7b/server.yaml": {"image.name": BASARAN, "model.name": "llama-2-7b"},
    "notebook/notebook.yaml": {
        "image.name": "substratusai/base:latest",
        "params": {"abc": "xyz", "x": 123},
        "model": None,
    },
}


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    if hasattr(obj, "model_dump"):
        return obj.model_dump(exclude_none=True)
    return obj


def _load(path: Path) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert isinstance(doc, dict)
    return doc


def test_every_example_is_in_the_table() -> None:
    assert len(FILES) == 31
    assert sorted(str(p.relative_to(EXAMPLES)) for p in FILES) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_validates_and_means_what_it_says(name: str) -> None:
    doc = _load(EXAMPLES / name)
    obj = parse_object(copy.deepcopy(doc), name)
    assert doc["kind"] == obj.KIND
    spec = obj.spec
    for path, want in EXPECTED[name].items():
        assert _get(spec, path) == want, path
    # Nothing of the original spelling is left once normalised.
    dumped = obj.dump()["spec"]
    assert "build" not in dumped and "modelName" not in dumped
    assert isinstance(dumped["image"], dict)


def test_the_finetuned_model_reads_as_the_design_writes_it() -> None:
    obj = parse_object(_load(EXAMPLES / "facebook-opt-125m/finetuned-model.yaml"))
    design = {
        "apiVersion": "substratus.ai/v1",
        "kind": "Model",
        "metadata": {"name": "fb-opt-125m-squad"},
        "spec": {
            "image": {"name": TRAINER},
            "baseModel": {"name": "facebook-opt-125m"},
            "trainingDataset": {"name": "squad"},
            "params": {"epochs": 1},
        },
    }
    assert obj.dump() == parse_object(design).dump()


def _spec(kind: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "substratus.ai/v1", "kind": kind, "metadata": {"name": "x"}, "spec": spec}


GIT = {"url": "https://github.com/you/repo"}
UPLOAD = {"md5Checksum": "A" * 32, "requestID": "r1"}

REFUSED = [
    (
        _spec("Model", image={"git": GIT}, build={"git": GIT}),
        "spec.build.git",
        "conflicts with spec.image.git: set one, not both",
    ),
    (
        _spec("Dataset", image={"upload": {}}, build={"git": GIT}),
        "spec.build.git",
        "conflicts with spec.image.upload: set one, not both",
    ),
    (
        _spec("Model", image="i", model={"name": "a"}, baseModel={"name": "b"}),
        "spec.model",
        "conflicts with spec.baseModel: set one, not both",
    ),
    (
        _spec("Model", image="i", dataset={"name": "a"}, trainingDataset={"name": "b"}),
        "spec.dataset",
        "conflicts with spec.trainingDataset: set one, not both",
    ),
    (
        _spec("Server", image="i", modelName="a", model="b"),
        "spec.modelName",
        "conflicts with spec.model: set one, not both",
    ),
    (_spec("Notebook", image="i", modelName={"name": "a"}), "spec.modelName", "must be a name"),
    (_spec("Server", image=5, model="m"), "spec.image", "must be an image name or"),
    (_spec("Model", build={}), "spec.build", "set git or upload"),
    (_spec("Model", build={"git": GIT, "upload": UPLOAD}), "spec.build", "set at most one"),
    (_spec("Model", build={"upload": {"md5": "a" * 32}}), "spec.build.upload.md5", "unknown field"),
    (_spec("Model", build={"gitt": GIT}), "spec.build.gitt", "unknown field"),
    (_spec("Model", build={"git": {"url": " "}}), "spec.build.git.url", "must not be empty"),
    (
        _spec("Model", build={"upload": {"requestID": "a/b"}}),
        "spec.build.upload.requestID",
        "not a valid request id",
    ),
    (_spec("Model", image="i", model={"nam": "a"}), "spec.model.nam", "unknown field"),
    (_spec("Dataset", image="i", model={"name": "a"}), "spec.model", "unknown field"),
    (_spec("Server", image="i"), "spec.model", "required field is missing"),
    (
        _spec("Model", image="i", env={"T": "${{ secrets.ai }}"}),
        "spec.env",
        "env key 'T': '${{ secrets.ai }}' is not a secret reference",
    ),
    (
        _spec("Model", image="i", env={"T": "${{ secrets.Bad_Name.k }}"}),
        "spec.env",
        "env key 'T': secret 'Bad_Name' is not a valid name",
    ),
]


@pytest.mark.parametrize(("doc", "field", "reason"), REFUSED, ids=[f for _, f, _ in REFUSED])
def test_mixed_and_conflicting_shapes_are_refused_naming_the_field(
    doc: dict[str, Any], field: str, reason: str
) -> None:
    with pytest.raises(ValidationFailed) as err:
        parse_object(doc)
    assert any(f == field and reason in r for f, r in err.value.problems), err.value.problems


def test_upload_and_secret_references_normalise() -> None:
    obj = parse_object(
        _spec(
            "Model",
            image="registry/built:1",  # the original wrote the built image here
            build={"upload": UPLOAD},
            env={
                "A": "${{secrets.hf.token}}",
                "B": "  ${{  secrets.hf.other  }} ",
                "C": "x ${{",
                "D": "${{ secrets.tls.certs.crt }}",  # as the original split it: the last dot
            },
        )
    )
    image = obj.spec.image
    assert image.name == "registry/built:1"
    assert image.upload is not None
    assert (image.upload.md5, image.upload.request_id) == ("a" * 32, "r1")
    env = {
        k: v if isinstance(v, str) else v.secret_key_ref.model_dump()
        for k, v in obj.spec.env.items()
    }
    assert env == {
        "A": {"name": "hf", "key": "token"},
        "B": {"name": "hf", "key": "other"},
        "C": "x ${{",  # not a reference: only a whole ${{ ... }} value is one
        "D": {"name": "tls.certs", "key": "crt"},
    }


def _round_trip(doc: dict[str, Any]) -> Resource:
    return parse_object(copy.deepcopy(doc))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_written_form_round_trips(name: str) -> None:
    """Parsing never changes what the user wrote, and what is stored as written parses to the
    same meaning again (the local runtime stores the written spec)."""
    doc = _load(EXAMPLES / name)
    before = copy.deepcopy(doc)
    first = parse_object(doc)
    assert doc == before
    stored = {**doc, "spec": doc["spec"]}
    assert _round_trip(stored).dump() == first.dump()
    # The normalised dump is itself a valid object with the same meaning (design spelling).
    assert _round_trip(first.dump()).dump() == first.dump()
