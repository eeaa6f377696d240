"""The container contract, locally: a working directory, an environment and an argv.

A workload sees ``model/`` and ``data/`` (read-only), ``artifacts/`` (its output),
``params.json``, ``PARAM_*`` variables and, for services, ``PORT``: the same as in a pod.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from substratus.api.kinds import Notebook, Resource, Server
from substratus.core.contract import contract_env
from substratus.core.images import BASE_IMAGE, NOTEBOOK_IMAGE, builtin_module, image_repository
from substratus.core.params import params_env, params_json
from substratus.runtimes.local import limits
from substratus.runtimes.local.engines import Engine
from substratus.runtimes.local.sandbox import CONTENT, SAVED_MODEL, Sandbox, binds

RESERVED = {"model", "data", "artifacts", "params.json"}
BUILD_MARKER = ".substratus-build"  # the image ref whose files a working directory holds
BIND_ENV = "SUBSTRATUS_BIND_ADDRESS"
MAX_ARG_BYTES = 128 * 1024  # the kernel's MAX_ARG_STRLEN, which counts the final NUL


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
        _copy_build(image.root, image.ref, workdir)


def _copy_build(root: Path, ref: str, workdir: Path) -> None:
    """The build's sources beside the contract's files, as a Dockerfile's COPY puts them.

    Copied, never linked: the build cache is keyed by its content, and a notebook that saves
    a file (or a job that writes one) must not change it. A notebook's kept directory may
    hold an earlier build's files, maybe edited since: the same build is left alone; a new
    one replaces the files (relative paths, recorded in the marker) the old one brought and
    keeps the user's own."""
    marker = workdir / BUILD_MARKER
    try:
        previous = json.loads(marker.read_text()) if marker.is_file() else {}
    except ValueError:
        previous = {}
    if not isinstance(previous, dict):
        previous = {}
    if previous.get("ref") == ref:
        return
    copied = [
        path
        for path in sorted(root.rglob("*"))
        if path.relative_to(root).parts[0] not in RESERVED
        and not path.relative_to(root).parts[0].startswith(".git")
    ]
    folders = [p for p in copied if p.is_dir() and not p.is_symlink()]
    files = [str(p.relative_to(root)) for p in copied if p not in folders]
    for rel in previous.get("files", []):
        old = workdir / rel
        if ".." not in Path(rel).parts and (old.is_symlink() or old.is_file()):
            old.unlink()
    for rel in [*(str(d.relative_to(root)) for d in folders), *files]:
        src, dst = root / rel, workdir / rel
        try:
            if src.is_dir() and not src.is_symlink():
                dst.mkdir(parents=True, exist_ok=True)
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.is_symlink() or dst.is_file():
                dst.unlink()
            # Not copy2: build contexts carry time 0 (reproducible tarballs); the copy is new.
            shutil.copy(src, dst, follow_symlinks=False)
        except OSError as exc:
            raise LaunchError(
                f"spec.image: the build's {rel} cannot be put in the working directory "
                f"({exc.strerror}); a file or folder of the same name is in the way"
            ) from None
    marker.write_text(json.dumps({"ref": ref, "files": files}))


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
    env.update(contract_env(obj))
    env.update(secrets)
    # Only the GPUs given to this workload are visible, none when it asked for none.
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus or [])
    if port is not None:
        env["PORT"] = str(port)
    if token is not None:
        env["NOTEBOOK_TOKEN"] = token
    if isinstance(obj, Notebook) and image.kind == "venv" and image.python is not None:
        env["NOTEBOOK_KERNEL_PYTHON"] = str(image.python)  # the kernel imports the build's
    if isinstance(obj, Server) and obj.spec.quantization is not None:
        env["QUANTIZATION_BITS"] = str(obj.spec.quantization.bits)
    if isinstance(obj, Notebook | Server):
        # Only the project's own setting decides: an ambient HOST must not open a server to
        # the network while status.url says 127.0.0.1.
        env["HOST"] = bind_address()
    return env


def bind_address() -> str:
    """Where local servers and notebooks listen: SUBSTRATUS_BIND_ADDRESS, else 127.0.0.1."""
    value = os.environ.get(BIND_ENV, "").strip() or "127.0.0.1"
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise LaunchError(f"{BIND_ENV}={value!r}: not an IP address") from None
    return value


def service_host() -> str:
    """The address clients (and readiness probes) use to reach a local service."""
    try:
        addr = ipaddress.ip_address(bind_address())
    except LaunchError:
        return "127.0.0.1"
    if addr.is_unspecified:
        return "127.0.0.1" if addr.version == 4 else "::1"
    return str(addr)


def service_url(port: int) -> str:
    host = service_host()
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def check_exec(obj: Resource, argv: list[str], env: dict[str, str]) -> None:
    """What execve would refuse, as a LaunchError naming the field it came from: a NUL byte,
    text that is not encodable, or one argument or variable over the kernel's 128 KiB."""
    for i, arg in enumerate(obj.spec.command or []):
        _check_text(f"spec.command[{i}]", arg)
    params = {name: key for key in obj.spec.params for name in params_env({key: ""})}
    for name, value in env.items():
        if name in obj.spec.env:
            field = f"spec.env.{name}"
        elif name in params:
            field = f"spec.params.{params[name]}"
        else:
            field = f"environment variable {name}"
        _check_text(field, f"{name}={value}")
    for i, arg in enumerate(argv):  # anything else the launch added (a container's -e ...)
        _check_text(f"argument {i} of {argv[0]}", arg)
    # Together too: execve refuses argv + environment past ARG_MAX (E2BIG). Half of it is
    # left for what the wrapper and the sandbox add.
    sizes = {f"spec.env.{k}": len(k) + len(v) + 2 for k, v in env.items() if k in obj.spec.env}
    sizes.update({f"spec.command[{i}]": len(a) + 1 for i, a in enumerate(obj.spec.command or [])})
    total = sum(len(a) + 1 for a in argv) + sum(len(k) + len(v) + 2 for k, v in env.items())
    if total > _ARG_MAX // 2:
        largest = ", ".join(sorted(sizes, key=lambda f: -sizes[f])[:3]) or "the environment"
        raise LaunchError(
            f"{largest}: the command and environment add up to {total} bytes, more than "
            f"{_ARG_MAX // 2} a process can be started with here"
        )


_ARG_MAX = os.sysconf("SC_ARG_MAX") if hasattr(os, "sysconf") else 2 * 2**20


def _check_text(field: str, text: str) -> None:
    if "\0" in text:
        raise LaunchError(f"{field}: contains a NUL byte, which no program can be given")
    try:
        size = len(text.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError as exc:
        raise LaunchError(f"{field}: not valid text ({exc.reason})") from None
    if size >= MAX_ARG_BYTES:
        raise LaunchError(
            f"{field}: {size} bytes; the kernel passes at most 128 KiB in one argument or variable"
        )


def container_argv(
    engine: Engine | None,
    obj: Resource,
    info: ImageInfo,
    workdir: Path,
    mounts: Mounts,
    env: dict[str, str],
    *,
    port: int | None,
    name: str,
    gpus: list[int],
) -> list[str]:
    """The engine's argv for a container workload: the contract's paths as volumes, the
    contract's variables, exactly the GPUs allocated to it, its memory and CPU limits."""
    if engine is None:
        raise LaunchError(f"image {info.ref!r} needs podman or docker, and neither is installed")
    vols = [(workdir / "artifacts", f"{CONTENT}/artifacts", False)]
    vols.append((workdir / "params.json", f"{CONTENT}/params.json", True))
    if mounts.model is not None:
        vols.append((mounts.model, f"{CONTENT}/model", True))
        vols.append((mounts.model, SAVED_MODEL, True))
    if mounts.data is not None:
        vols.append((mounts.data, f"{CONTENT}/data", True))
    keep = {k: v for k, v in env.items() if k.startswith("PARAM_") or k in obj.spec.env}
    for k in ("PORT", "NOTEBOOK_TOKEN", "QUANTIZATION_BITS", "SUBSTRATUS_KIND"):
        if k in env:
            keep[k] = env[k]
    if port is not None:
        keep["PORT"] = "8080"
    res = obj.spec.resources
    return engine.run_argv(
        info.ref,
        obj.spec.command,
        name=name,
        mounts=vols,
        env=keep,
        ports={port: 8080} if port is not None else {},
        workdir=CONTENT,
        gpus=gpus,
        memory_bytes=int(res.memory * 1e9) if res.memory is not None else None,
        cpus=res.cpu,
        bind=bind_address(),
    )


def confine(
    box: Sandbox,
    obj: Resource,
    argv: list[str],
    env: dict[str, str],
    workdir: Path,
    mounts: Mounts,
    log: Path,
    label: str,
) -> tuple[list[str], list[Path]]:
    """A process workload in its sandbox (the contract's paths) and cgroups (its limits).
    Returns the argv and the cgroups to join; what cannot be had here is noted in the log."""
    notes = []
    if box.mode is not None:
        argv = box.argv(argv, workdir, binds(obj.KIND, mounts.model, mounts.data))
        env["PWD"] = CONTENT
    else:
        notes.append(
            f"note: no private mount namespace ({box.reason}): the workload runs in {workdir}; "
            f"{CONTENT} and {SAVED_MODEL} do not exist"
        )
    cgroups: list[Path] = []
    res = obj.spec.resources
    if res.memory is not None or res.cpu is not None:
        meta = obj.metadata
        name = limits.run_name(workdir, f"{meta.namespace}.{obj.PLURAL}.{meta.name}.{label}")
        try:
            cgroups = limits.create(name, res.memory, res.cpu)
        except limits.CgroupError as exc:
            notes.append(f"note: spec.resources memory and cpu are not enforced here: {exc}")
    if notes:
        with open(log, "a") as f:
            f.write("".join(n + "\n" for n in notes))
    return argv, cgroups


def workload_argv(obj: Resource, image: ImageInfo) -> list[str]:
    command = obj.spec.command
    if image.kind == "builtin":
        module = builtin_module(image.ref)
        if image_repository(image.ref) == BASE_IMAGE:
            if command:
                return list(command)
            if isinstance(obj, Notebook):  # the original's base image served notebooks too
                return _jupyter()
            raise LaunchError(f"spec.command: required with the {BASE_IMAGE} image")
        # Like a pod's `command`, spec.command replaces the image's entrypoint.
        return list(command) if command else [sys.executable, "-m", str(module)]
    if image.kind in ("venv", "dir"):
        if command:
            return list(command)
        if isinstance(obj, Notebook):
            # The design's `kubectl open notebook` flow uploads a directory with no command:
            # Jupyter on the uploaded files, as the stock notebook image would serve them.
            return _jupyter()
        source = "git" if obj.spec.image.git is not None else "upload"
        raise LaunchError(
            f"spec.command: required: spec.image.{source} was built without a container "
            "engine (no podman or docker), so there is no image entrypoint to run"
        )
    raise LaunchError(f"image kind {image.kind!r} is not run as a process")


def _jupyter() -> list[str]:
    """What a Notebook with no command runs: the stock notebook image's program."""
    return [sys.executable, "-m", str(builtin_module(NOTEBOOK_IMAGE))]
