"""Built-in image names and the project modules that implement them."""

from __future__ import annotations

from dataclasses import dataclass

# Image name (without registry tag) -> module run as `python -m MODULE` by the local runtime.
# The cluster runs the same module from the image built by images/<name>/Dockerfile.
BUILTIN_IMAGES: dict[str, str] = {
    "substratusai/base": "substratus.workloads.base",
    "substratusai/model-loader-huggingface": "substratus.workloads.model_loader",
    "substratusai/dataset-loader": "substratus.workloads.dataset_loader",
    "substratusai/model-trainer-huggingface": "substratus.workloads.trainer",
    "substratusai/model-server": "substratus.workloads.server",
    # The seed's example server image; ours speaks the same OpenAI-style API.
    "substratusai/basaran": "substratus.workloads.server",
    "substratusai/notebook": "substratus.workloads.notebook",
    "substratusai/notebook-gpu": "substratus.workloads.notebook",
}

# The generic base image runs `spec.command` directly in the platform's Python environment.
BASE_IMAGE = "substratusai/base"
# What a Notebook built without a container engine and without a command runs.
NOTEBOOK_IMAGE = "substratusai/notebook"


@dataclass(frozen=True)
class OriginalImage:
    """An image of the original Go project (github.com/substratusai/images) that one of ours
    replaces: ``module`` runs in its place, doing what ``catalog``'s image does."""

    catalog: str  # our image (a key of BUILTIN_IMAGES)
    module: str


# Names the original project's manifests use. They are not built from images/ (their
# Dockerfiles live in the original repository); locally our module runs instead, so their
# manifests run unchanged. Names already in BUILTIN_IMAGES (model-loader-huggingface,
# model-trainer-huggingface, base) need no entry.
ORIGINAL_IMAGES: dict[str, OriginalImage] = {
    "substratusai/model-server-basaran": OriginalImage(
        "substratusai/model-server",
        "substratus.workloads.server",
    ),
    "substratusai/model-server-llama-cpp": OriginalImage(
        "substratusai/model-server",
        "substratus.workloads.server.llama_cpp",
    ),
    "substratusai/dataset-loader-http": OriginalImage(
        "substratusai/dataset-loader",
        "substratus.workloads.dataset_loader",
    ),
}


def image_repository(ref: str) -> str:
    """Strip a tag or digest and the default registry: 'docker.io/a/b:1' -> 'a/b'."""
    name = ref.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    for prefix in ("docker.io/", "index.docker.io/"):
        name = name.removeprefix(prefix)
    return name


def builtin_module(ref: str) -> str | None:
    """The module that runs image ``ref`` (ours, or an original one that ours replaces)."""
    repo = image_repository(ref)
    original = ORIGINAL_IMAGES.get(repo)
    return original.module if original is not None else BUILTIN_IMAGES.get(repo)
