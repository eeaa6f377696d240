"""The container contract, locally: a working directory, an environment and an argv.

A workload sees ``model/`` and ``data/`` (read-only), ``artifacts/`` (its output),
``params.json``, ``PARAM_*`` variables and, for services, ``PORT``: the same as in a pod.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from substratus.api.kinds import Notebook, Resource, Server
from substratus.core.images import BASE_IMAGE, builtin_module, image_repository
from substratus.core.params import params_env, params_json
from substratus.runtimes.local.engines import Engine

RESERVED = {"model", "data", "artifacts", "params.json"}
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TORCH_NUM_THREADS")


class LaunchError(Exception):
    """The workload cannot be started as specified; the message names the field."""


@dataclass(frozen=True)
class Mounts:
    model: Path | None = None
    data: Path | None = None


@dataclass(frozen=True)
class ImageInfo:
    """How to run ``status.image``/``spec.image.name``: a built-in, a build, or a container."""

    ref: str
    kind: str  # builtin | venv | dir | container
    root: Path | None = None  # source directory of venv/dir builds
    python: Path | None = None  # interpreter of venv builds


def image_problem(ref: str, engine: Engine | None) -> str | None:
    """Why ``ref`` (an image name, not a local build) cannot run here, or None."""
    module = builtin_module(ref)
    if module is not None:
        if importlib.util.find_spec(module) is None:
            return f"spec.image.name: built-in image {ref!r} needs module {module}, not installed"
        return None
    if engine is None:
        return (
            f"spec.image.name: {ref!r} is not a built-in image and no container engine "
            "(podman or docker) is installed to run it"
        )
    return None


@cache
def bind_mounts_available() -> bool:
    """Root can give a workload truly read-only mounts in a private mount namespace; file
    permissions alone do not stop root. Other users get symlinks to read-only files."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, check=False
    )
    return probe.returncode == 0


def prepare_workdir(
    workdir: Path, obj: Resource, mounts: Mounts, image: ImageInfo, bind: bool
) -> None:
    (workdir / "artifacts").mkdir(parents=True, exist_ok=True)
    (workdir / "params.json").write_text(params_json(obj.spec.params))
    for name, target in (("model", mounts.model), ("data", mounts.data)):
        if target is not None:
            if bind:
                (workdir / name).mkdir()
            else:
                (workdir / name).symlink_to(target, target_is_directory=True)
    if image.root is not None and image.kind in ("venv", "dir"):
        # The build's sources sit beside the contract's files, as a Dockerfile's COPY puts them.
        for entry in sorted(image.root.iterdir()):
            if entry.name not in RESERVED and not entry.name.startswith(".git"):
                (workdir / entry.name).symlink_to(entry)


def workload_env(
    obj: Resource,
    image: ImageInfo,
    secrets: dict[str, str],
    *,
    port: int | None = None,
    token: str | None = None,
    gpus: list[int] | None = None,
) -> dict[str, str]:
    env = dict(os.environ)
    bin_dirs = [str(Path(sys.executable).parent)]
    if image.kind == "venv" and image.python is not None:
        bin_dirs.insert(0, str(image.python.parent))
    if image.root is not None:
        bin_dirs.insert(0, str(image.root))
    env["PATH"] = os.pathsep.join([*bin_dirs, env.get("PATH", "/usr/bin:/bin")])
    env.pop("VIRTUAL_ENV", None)
    env.update(params_env(obj.spec.params))
    env.update(secrets)
    env["SUBSTRATUS_KIND"] = obj.KIND
    env["SUBSTRATUS_NAME"] = obj.metadata.name
    env["SUBSTRATUS_NAMESPACE"] = obj.metadata.namespace
    env["PYTHONUNBUFFERED"] = "1"
    cpu = obj.spec.resources.cpu
    if cpu is not None:
        for var in THREAD_VARS:
            env[var] = str(max(1, math.ceil(cpu)))
    # Only the GPUs given to this workload are visible, none when it asked for none.
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus or [])
    if port is not None:
        env["PORT"] = str(port)
    if token is not None:
        env["NOTEBOOK_TOKEN"] = token
    if isinstance(obj, Server) and obj.spec.quantization is not None:
        env["QUANTIZATION_BITS"] = str(obj.spec.quantization.bits)
    if isinstance(obj, Notebook | Server):
        env.setdefault("HOST", "127.0.0.1")
    return env


# Bind-mounts "$1" read-only on "$2" for each pair before the marker, then runs the rest.
_MOUNT_SCRIPT = (
    'while [ "$1" != "--" ]; do mount --bind -o ro "$1" "$2" || exit 125; shift 2; done; '
    'shift; exec "$@"'
)


def with_readonly_mounts(argv: list[str], workdir: Path, mounts: Mounts) -> list[str]:
    pairs: list[str] = []
    for name, target in (("model", mounts.model), ("data", mounts.data)):
        if target is not None:
            pairs += [str(target), str(workdir / name)]
    if not pairs:
        return argv
    return [
        "unshare", "--mount", "--propagation", "private",
        "sh", "-c", _MOUNT_SCRIPT, "mounts", *pairs, "--", *argv,
    ]  # fmt: skip


def workload_argv(obj: Resource, image: ImageInfo) -> list[str]:
    command = obj.spec.command
    if image.kind == "builtin":
        module = builtin_module(image.ref)
        if image_repository(image.ref) == BASE_IMAGE:
            if not command:
                raise LaunchError(f"spec.command: required with the {BASE_IMAGE} image")
            return list(command)
        # Like a pod's `command`, spec.command replaces the image's entrypoint.
        return list(command) if command else [sys.executable, "-m", str(module)]
    if image.kind in ("venv", "dir"):
        if not command:
            raise LaunchError(
                "spec.command: required when the image is built without a container engine"
            )
        return list(command)
    raise LaunchError(f"image kind {image.kind!r} is not run as a process")
