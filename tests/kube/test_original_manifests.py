"""The original Substratus's 31 example manifests on a real kube-apiserver with our CRDs.

Each is created with a server-side dry run (``dryRun=All``, strict field validation, as kubectl
does): all are accepted as they are. Conflicting spellings (compat.py) that CEL can see are
refused by the CRDs' rules with the field named, as the models refuse them locally.
"""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube.cluster import REPO, ControlPlane

pytestmark = pytest.mark.integration

EXAMPLES = REPO / "tests" / "data" / "original-examples"
FILES = sorted(EXAMPLES.rglob("*.yaml"))
PLURALS = {"Model": "models", "Dataset": "datasets", "Notebook": "notebooks", "Server": "servers"}


def _dry_run_create(plane: ControlPlane, namespace: str, doc: dict[str, Any]) -> Any:
    """POST ``doc`` with dryRun=All; the answer, or the Status of a refusal (HTTP 4xx)."""
    path = (
        f"/apis/substratus.ai/v1/namespaces/{namespace}/{PLURALS[doc['kind']]}"
        "?dryRun=All&fieldValidation=Strict"
    )
    try:
        return plane.api("POST", path, doc)
    except urllib.error.HTTPError as e:
        status = json.loads(e.read())
        status["code"] = e.code
        return status


def test_all_31_examples_are_here() -> None:
    assert len(FILES) == 31


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(EXAMPLES)) for p in FILES])
def test_example_is_accepted_by_the_server(
    substratus_crds: list[str], kube_control_plane: ControlPlane, kube_namespace: str, path: Path
) -> None:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    doc["metadata"].pop("namespace", None)
    answer = _dry_run_create(kube_control_plane, kube_namespace, doc)
    assert answer.get("kind") == doc["kind"], answer
    # Kept as written (nothing pruned; defaults added): the controller normalises on every read.
    assert _written_in(doc["spec"], answer["spec"]), answer["spec"]


def _written_in(written: Any, stored: Any) -> bool:
    """Everything in ``written`` is in ``stored``, unchanged (which may add defaults)."""
    if isinstance(written, dict):
        return isinstance(stored, dict) and all(
            k in stored and _written_in(v, stored[k]) for k, v in written.items()
        )
    return bool(written == stored)


def _model(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "substratus.ai/v1",
        "kind": "Model",
        "metadata": {"name": "m"},
        "spec": spec,
    }


def _server(**spec: Any) -> dict[str, Any]:
    return {**_model(**spec), "kind": "Server"}


GIT = {"url": "https://github.com/substratusai/images", "path": "base"}
UPLOAD = {"md5Checksum": "0" * 32, "requestID": "r1"}

# The schema's CEL rules see typed fields only: a string-or-object field (image, a Server's
# model) has no type, so its checks and the conflicts involving it (build vs image, modelName
# vs model) are the admission policy's (api/policy.py), whose message names the field.
REFUSED = [
    (
        _model(image={"git": GIT}, build={"git": GIT}),
        "spec.build.git",
        "conflicts with spec.image.git: set one, not both",
    ),
    (
        _model(image={"upload": {}}, build={"git": GIT}),
        "spec.build.git",
        "conflicts with spec.image.upload: set one, not both",
    ),
    (_model(params={}), "spec.image", "required field is missing"),
    (_model(image=3), "spec.image", "must be an image name or {name, git, upload}"),
    (
        _server(image="i", model="a", modelName="a"),
        "spec.modelName",
        "conflicts with spec.model: set one, not both",
    ),
    (_server(image="i"), "spec.model", "required field is missing"),
    (_server(image="i", model={}), "spec.model.name", "Required value"),  # the schema's words
    (_model(image={"name": "x", "tag": "v1"}), "spec.image", "unknown field"),
    (_server(image="i", model={"name": "m", "nmae": "y"}), "spec.model", "unknown field"),
    (
        {**_model(image="i"), "kind": "Notebook", "spec": {"image": "i", "dataset": 42}},
        "spec.dataset.name",
        "required field is missing",
    ),
    (
        _model(image="i", model={"name": "a"}, baseModel={"name": "b"}),
        "spec.model",
        "conflicts with spec.baseModel: set one, not both",
    ),
    (
        _model(image="i", dataset={"name": "a"}, trainingDataset={"name": "b"}),
        "spec.dataset",
        "conflicts with spec.trainingDataset: set one, not both",
    ),
    (_model(build={}), "spec.build", "set git or upload"),
    (
        _model(build={"git": GIT, "upload": UPLOAD}),
        "spec.build",
        "set at most one of git and upload",
    ),
    (_model(build={"git": {"url": " "}}), "spec.build.git.url", "must not be empty"),
]


@pytest.mark.parametrize(
    ("doc", "field", "reason"), REFUSED, ids=[f"{f}: {r}" for _, f, r in REFUSED]
)
def test_mixed_and_conflicting_shapes_are_refused_with_the_field(
    substratus_crds: list[str],
    kube_control_plane: ControlPlane,
    kube_namespace: str,
    doc: dict[str, Any],
    field: str,
    reason: str,
) -> None:
    answer = _dry_run_create(kube_control_plane, kube_namespace, doc)
    assert answer.get("code") == 422, answer
    causes = [(c.get("field"), c.get("message", "")) for c in answer["details"].get("causes", [])]
    by_policy = f"{field}: {reason}" in answer.get("message", "")
    assert by_policy or any(f == field and reason in m for f, m in causes), answer


def test_a_string_image_with_a_build_is_accepted(
    substratus_crds: list[str], kube_control_plane: ControlPlane, kube_namespace: str
) -> None:
    # The original's own objects looked like this once built: the built image in spec.image.
    doc = _model(image="registry/built:1", build={"upload": UPLOAD})
    answer = _dry_run_create(kube_control_plane, kube_namespace, doc)
    assert answer.get("kind") == "Model", answer


def test_unknown_fields_in_the_original_shape_are_refused(
    substratus_crds: list[str], kube_control_plane: ControlPlane, kube_namespace: str
) -> None:
    doc = _model(build={"upload": {**UPLOAD, "md5": "0" * 32}})
    answer = _dry_run_create(kube_control_plane, kube_namespace, doc)
    assert answer.get("code") in (400, 422), answer
    assert "spec.build.upload.md5" in answer["message"], answer
