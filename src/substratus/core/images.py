"""Built-in image names and the project modules that implement them."""

from __future__ import annotations

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
    return BUILTIN_IMAGES.get(image_repository(ref))
