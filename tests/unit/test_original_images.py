"""The original project's image names (substratusai/runbooks' examples) run our built-in
workloads locally; any other name stays a foreign image."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from substratus.api import parse_object
from substratus.api.kinds import Resource
from substratus.core.images import BUILTIN_IMAGES, ORIGINAL_IMAGES, builtin_module
from substratus.runtimes.local.launch import ImageInfo, image_problem, workload_argv

# Every `image:` the original's 31 examples name, and the module each runs here.
EXAMPLE_IMAGES = {
    "substratusai/model-loader-huggingface": "substratus.workloads.model_loader",
    "substratusai/model-trainer-huggingface": "substratus.workloads.trainer",
    "substratusai/model-server-basaran": "substratus.workloads.server",
    "substratusai/model-server-llama-cpp:latest": "substratus.workloads.server.llama_cpp",
    "substratusai/model-server-llama-cpp:latest-gpu": "substratus.workloads.server.llama_cpp",
    "substratusai/base": "substratus.workloads.base",
    "substratusai/base:latest": "substratus.workloads.base",
}


@pytest.mark.parametrize(("image", "module"), sorted(EXAMPLE_IMAGES.items()))
def test_example_images_run_built_in_modules(image: str, module: str) -> None:
    assert builtin_module(image) == module
    assert builtin_module(f"docker.io/{image}") == module  # the registry the original used
    assert importlib.util.find_spec(module) is not None
    assert image_problem(image, engine=None) is None  # runs with no container engine


@pytest.mark.parametrize("name", sorted(ORIGINAL_IMAGES))
def test_each_alias_runs_its_catalog_image_module(name: str) -> None:
    original = ORIGINAL_IMAGES[name]
    assert name not in BUILTIN_IMAGES, "an alias must not shadow one of our images"
    catalog_module = BUILTIN_IMAGES[original.catalog]
    # The same program, or an entry point of it (llama-cpp: the server, llama.cpp by default).
    assert original.module == catalog_module or original.module.startswith(catalog_module + ".")
    assert builtin_module(f"{name}:v0.9.0") == original.module


def test_the_http_dataset_loader_is_our_dataset_loader() -> None:
    # Its only param in the original's k8s-instructions example is `urls`, which ours reads.
    assert (
        builtin_module("substratusai/dataset-loader-http")
        == BUILTIN_IMAGES["substratusai/dataset-loader"]
    )


@pytest.mark.parametrize(
    "image",
    [
        "substratusai/dataset-squad",  # a dataset packed in an image with its load.sh: foreign
        "substratusai/model-server-basaran-extra",
        "ghcr.io/substratusai/model-server-basaran",  # another registry is someone else's image
        "me/model-server-llama-cpp:latest",
    ],
)
def test_other_names_stay_foreign(image: str) -> None:
    assert builtin_module(image) is None
    problem = image_problem(image, engine=None)
    assert problem is not None and "not a built-in image" in problem


def server(image: str) -> Resource:
    return parse_object(
        {
            "apiVersion": "substratus.ai/v1",
            "kind": "Server",
            "metadata": {"name": "llama"},
            "spec": {"image": {"name": image}, "model": {"name": "m"}},
        }
    )


def test_llama_cpp_image_runs_the_llama_cpp_entry_point() -> None:
    image = "substratusai/model-server-llama-cpp:latest-gpu"
    obj = server(image)
    argv = workload_argv(obj, ImageInfo(ref=image, kind="builtin"))
    assert argv == [sys.executable, "-m", "substratus.workloads.server.llama_cpp"]
    basaran = "substratusai/model-server-basaran"
    argv = workload_argv(server(basaran), ImageInfo(ref=basaran, kind="builtin"))
    assert argv == [sys.executable, "-m", "substratus.workloads.server"]
