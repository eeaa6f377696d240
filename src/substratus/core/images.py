"""Built-in image names and the project modules that implement them."""

from __future__ import annotations

# Image name (without registry tag) -> module run as `python -m MODULE` by the local runtime.
# The cluster runs the same module from the image built by images/<name>/Dockerfile.
BUILTIN_IMAGES: dict[str, str] = {
    "substratusai/base": "substratus.workloads.base",
}

# The generic base image runs `spec.command` directly in the platform's Python environment.
BASE_IMAGE = "substratusai/base"


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
