"""Which Notebook a `sub notebook` / `kubectl open notebook` target means.

- A directory (``-f DIR``, ``.`` by default): a Notebook named after the directory, built from
  it (``image.upload``), with ``model``, ``dataset``, ``params``, ``env`` and ``resources`` taken
  from the directory's ``model.yaml`` (or the first Model manifest in it), as the design's plugin
  does. On a cluster, a directory without a Dockerfile cannot be built: the stock notebook image
  serves it and the sync brings the files in.
- A manifest file: its Notebook (built from its directory when it asks for an upload).
- ``notebook/NAME``: that Notebook, resumed.
- ``model/NAME``, ``dataset/NAME``, ``server/NAME``: a notebook that mimics that object's
  environment, as the original ``sub notebook`` made: its image (the stock notebook image for a
  built-in one, whose program is not Jupyter), env, params and resources, with a Model's base
  model and dataset (a Server's model; the Dataset itself) mounted.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from substratus.api.documents import load_yaml_documents
from substratus.api.loading import kind_of
from substratus.api.names import dns_label_problem
from substratus.cli.targets import UsageError
from substratus.core.images import NOTEBOOK_IMAGE, builtin_module
from substratus.storage.buildcontext import DOCKERIGNORE

MODEL_FILES = ("model.yaml", "model.yml")
DOCKERFILES = ("Dockerfile", "Containerfile")
API_VERSION = "substratus.ai/v1"


def name_for_directory(directory: Path) -> str:
    """A DNS label from the directory's name: ``My_Trainer`` → ``my-trainer``."""
    text = re.sub(r"[^a-z0-9-]+", "-", directory.resolve().name.lower()).strip("-")[:63]
    text = text.strip("-") or "notebook"
    return text if text[0].isalpha() else f"nb-{text}"[:63].rstrip("-")


def has_dockerfile(directory: Path) -> bool:
    return any((directory / f).is_file() for f in DOCKERFILES)


def _yaml_docs(path: Path) -> list[dict[str, Any]]:
    try:
        docs = load_yaml_documents(path.read_text(), str(path))
    except (OSError, ValueError):
        return []
    return [d for d in docs if isinstance(d, dict)]


def model_manifest(directory: Path) -> tuple[dict[str, Any], Path] | None:
    """The Model this directory's code trains: ``model.yaml``, else the first Model manifest
    among its top-level ``.yaml``/``.yml`` files (in name order)."""
    named = [directory / f for f in MODEL_FILES if (directory / f).is_file()]
    others = sorted(
        p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p not in named
    )
    for path in named + others:
        for doc in _yaml_docs(path):
            if doc.get("kind") == "Model" and isinstance(doc.get("spec"), dict):
                return doc, path
    return None


def _ref(value: Any) -> dict[str, Any] | None:
    if isinstance(value, str):
        return {"name": value}
    return dict(value) if isinstance(value, dict) and value.get("name") else None


def _environment(spec: dict[str, Any]) -> dict[str, Any]:
    """What a notebook keeps of another object's spec to mimic its environment."""
    return {k: copy.deepcopy(spec[k]) for k in ("env", "params", "resources") if spec.get(k)}


def _image_for_notebook(spec: dict[str, Any]) -> dict[str, Any]:
    """The object's image, but the stock notebook image for built-in images (their programs
    load, train or serve; the notebook image has the same libraries and serves Jupyter)."""
    image = spec.get("image")
    if isinstance(image, str):
        image = {"name": image}
    if not isinstance(image, dict) or not (image.get("git") or image.get("upload")):
        name = image.get("name") if isinstance(image, dict) else None
        if not name or builtin_module(str(name)) is not None:
            return {"name": NOTEBOOK_IMAGE}
        return {"name": name}
    return copy.deepcopy(image)


def notebook_for_object(obj: dict[str, Any]) -> dict[str, Any]:
    """A Notebook for an existing object (``notebook/NAME`` itself, resumed)."""
    kind, meta = obj["kind"], obj["metadata"]
    spec = obj.get("spec") or {}
    if kind == "Notebook":
        body = {k: copy.deepcopy(obj[k]) for k in ("apiVersion", "kind", "spec")}
        body["metadata"] = {"name": meta["name"], "namespace": meta["namespace"]}
        body["spec"]["suspend"] = False
        return body
    nb_spec: dict[str, Any] = {"image": _image_for_notebook(spec), **_environment(spec)}
    if kind == "Model":
        base = _ref(spec.get("baseModel"))
        nb_spec["model"] = base or {"name": meta["name"]}
        if dataset := _ref(spec.get("trainingDataset")):
            nb_spec["dataset"] = dataset
    elif kind == "Server":
        if model := _ref(spec.get("model")):
            nb_spec["model"] = model
    elif kind == "Dataset":
        nb_spec["dataset"] = {"name": meta["name"]}
    return {
        "apiVersion": API_VERSION,
        "kind": "Notebook",
        "metadata": {"name": f"{meta['name']}-notebook"[:63], "namespace": meta["namespace"]},
        "spec": nb_spec,
    }


def notebook_for_directory(
    directory: Path, namespace: str, name: str | None, cluster: bool
) -> tuple[dict[str, Any], str]:
    """The design's plugin: a Notebook for a directory of code. Returns it and a line saying
    where its settings came from."""
    name = name or name_for_directory(directory)
    if problem := dns_label_problem(name):
        raise UsageError(f"--name: {name!r}: {problem}")
    spec: dict[str, Any] = {}
    notes = []
    if cluster and not has_dockerfile(directory):
        spec["image"] = {"name": NOTEBOOK_IMAGE}
        notes.append(f"no Dockerfile: the stock {NOTEBOOK_IMAGE} image, your files synced in")
    else:
        spec["image"] = {"upload": {}}
        notes.append(f"built from {directory} ({DOCKERIGNORE} honoured)")
    found = model_manifest(directory)
    if found is not None:
        model, path = found
        mspec = model["spec"]
        spec.update(_environment(mspec))
        mname = str((model.get("metadata") or {}).get("name") or "")
        ref = _ref(mspec.get("baseModel")) or ({"name": mname} if mname else None)
        if ref:
            spec["model"] = ref
        if dataset := _ref(mspec.get("trainingDataset")):
            spec["dataset"] = dataset
        mounted = ", ".join(f"{k} {v['name']}" for k in ("model", "dataset") if (v := spec.get(k)))
        notes.append(f"{mounted or 'no mounts'} and resources from {path.name}")
    body = {
        "apiVersion": API_VERSION,
        "kind": "Notebook",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
    return body, "; ".join(notes)


def notebook_in_manifest(path: Path, namespace: str | None) -> dict[str, Any]:
    """The (first) Notebook of a manifest file."""
    for doc in _yaml_docs(path):
        if doc.get("kind") == "Notebook":
            meta = doc.setdefault("metadata", {})
            if namespace:
                meta["namespace"] = namespace
            return doc
    kinds = sorted({str(d.get("kind")) for d in _yaml_docs(path)})
    raise UsageError(f"{path}: holds no Notebook (kinds: {', '.join(kinds) or 'none'})")


def parse_object_target(target: str) -> tuple[str, str]:
    """``KIND/NAME`` → (Kind, name) for the kinds a notebook can be made for."""
    kind_text, _, name = target.partition("/")
    if not name:
        raise UsageError(
            f"{target!r}: give a directory (-f DIR) or KIND/NAME, e.g. model/falcon-7b"
        )
    try:
        kind = kind_of(kind_text).KIND
    except ValueError as e:
        raise UsageError(str(e)) from None
    return kind, name
