"""The local container engine (podman or docker), if one answers on this machine.

`detect_engine()` finds it; an `Engine` builds images, checks that one exists, makes the argv
that runs a container in the foreground (so its logs and exit code flow to the caller as a
process's do) and stops a container by name. Nothing here talks to a registry: a build whose
base image is neither local nor reachable fails with the engine's own message.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

__all__ = [
    "ENGINE_ENV",
    "BuildFailed",
    "Engine",
    "EngineError",
    "clear_engine_cache",
    "detect_engine",
    "stream_command",
]

ENGINE_ENV = "SUBSTRATUS_CONTAINER_ENGINE"
ENGINE_NAMES = ("podman", "docker")
INFO_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 10
LOG_TAIL_LINES = 20


class BuildFailed(Exception):
    """An image build failed. The message says what failed and why, then the last log lines."""


class EngineError(RuntimeError):
    """The container engine cannot be used as asked (for example a forced engine that fails)."""


def _format_failure(what: str, tail: Iterable[str]) -> str:
    lines = [line.rstrip("\n") for line in tail]
    if not lines:
        return what
    return what + "\nlast log lines:\n" + "\n".join(lines)


def stream_command(
    argv: Sequence[str],
    log: TextIO,
    *,
    what: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> None:
    """Run argv, copying its stdout and stderr line by line to `log`.

    Raises BuildFailed naming `what`, the exit status and the last log lines when it fails.
    """
    log.write("$ " + " ".join(argv) + "\n")
    log.flush()
    tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
    try:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
        )
    except OSError as exc:
        raise BuildFailed(f"{what}: cannot run {argv[0]}: {exc}") from exc
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            tail.append(line)
            log.write(line)
            log.flush()
    finally:
        proc.stdout.close()
        rc = proc.wait()
    if rc != 0:
        raise BuildFailed(_format_failure(f"{what} failed (exit status {rc})", tail))


@dataclass(frozen=True)
class Engine:
    """A container engine CLI that answered `<binary> info`."""

    name: str  # "podman" | "docker"
    binary: str  # absolute path of the CLI
    # Run an init process as PID 1 (`--init`), so that SIGTERM from `stop` reaches programs that
    # install no handler for it (PID 1 ignores such signals) instead of waiting for SIGKILL.
    init: bool = False

    def _run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.binary, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )

    def build(
        self, context_dir: Path, tag: str, log: TextIO, dockerfile: Path | None = None
    ) -> None:
        """Build `context_dir` into the image `tag`, streaming the output to `log`."""
        argv = [self.binary, "build", "--force-rm", "--tag", tag]
        if dockerfile is not None:
            argv += ["--file", str(dockerfile)]
        argv.append(str(context_dir))
        stream_command(argv, log, what=f"image: {self.name} build of {tag}")

    def image_exists(self, ref: str) -> bool:
        try:
            return self._run("image", "inspect", ref).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def run_argv(
        self,
        image: str,
        command: list[str] | None,
        *,
        name: str,
        mounts: list[tuple[Path, str, bool]],
        env: dict[str, str],
        ports: dict[int, int],
        workdir: str = "/content",
        gpus: Sequence[int] = (),
        memory_bytes: int | None = None,
        cpus: float | None = None,
        bind: str = "127.0.0.1",
    ) -> list[str]:
        """The argv that runs `image` in the foreground as container `name`, removed on exit.

        mounts: (host path, container path, read_only). ports: {host port: container port},
        published on `bind` only. `--init` when the engine has an init binary. gpus: the host
        indices of exactly the NVIDIA GPUs this container gets (docker `--gpus "device=..."`,
        podman one CDI `--device nvidia.com/gpu=N` each).
        """
        argv = [self.binary, "run", "--rm", "--name", name, "-w", workdir]
        if self.init:
            argv.append("--init")
        for host, ctr, read_only in mounts:
            argv += ["-v", f"{Path(host).absolute()}:{ctr}" + (":ro" if read_only else "")]
        for key, value in env.items():
            argv += ["-e", f"{key}={value}"]
        host_ip = f"[{bind}]" if ":" in bind else bind
        for host_port, ctr_port in ports.items():
            argv += ["-p", f"{host_ip}:{host_port}:{ctr_port}"]
        if memory_bytes is not None:
            argv += ["--memory", str(memory_bytes)]
        if cpus is not None:
            argv += ["--cpus", f"{cpus:g}"]
        if gpus:
            if self.name == "docker":
                # The quotes are part of the value: docker splits --gpus on commas otherwise.
                argv += ["--gpus", '"device=' + ",".join(str(g) for g in gpus) + '"']
            else:
                for g in gpus:
                    argv += ["--device", f"nvidia.com/gpu={g}"]
        argv.append(image)
        if command:
            argv += command
        return argv

    def stop(self, name: str) -> None:
        """Stop and remove the container `name`; a container that does not exist is fine."""
        with contextlib.suppress(subprocess.TimeoutExpired):  # `rm --force` below kills it
            self._run("stop", "-t", str(STOP_TIMEOUT_S), name, timeout=STOP_TIMEOUT_S + 30)
        result = self._run("rm", "--force", name, timeout=60)
        if result.returncode == 0 or _gone(result.stderr):
            return
        # `run --rm` may be removing it at the same moment: only fail if it is still there.
        if self._run("container", "inspect", name).returncode != 0:
            return
        raise EngineError(f"{self.name} rm --force {name} failed: {result.stderr.strip()}")


def _gone(stderr: str) -> bool:
    text = stderr.lower()
    return "no such container" in text or "no container with name" in text


# Where podman looks for catatonit (containers.conf init_path and helper_binaries_dir defaults).
PODMAN_INIT_PATHS = (
    "/usr/libexec/podman/catatonit",
    "/usr/local/libexec/podman/catatonit",
    "/usr/lib/podman/catatonit",
    "/usr/local/lib/podman/catatonit",
)


def _has_init(name: str) -> bool:
    if name == "docker":
        return True  # docker-init (tini) ships with every Docker engine package
    return any(os.access(path, os.X_OK) for path in PODMAN_INIT_PATHS)


def _probe(name: str) -> tuple[Engine | None, str]:
    binary = shutil.which(name)
    if binary is None:
        return None, f"{name} is not installed (not on PATH)"
    engine = Engine(name=name, binary=str(Path(binary).absolute()), init=_has_init(name))
    try:
        result = engine._run("info", timeout=INFO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None, f"`{name} info` did not answer within {INFO_TIMEOUT_S:g} s"
    except OSError as exc:
        return None, f"cannot run {binary}: {exc}"
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {result.returncode}"
        return None, f"`{name} info` failed: {reason}"
    return engine, ""


@functools.cache
def _detect(choice: str, docker_host: str, container_host: str) -> Engine | None:
    # docker_host/container_host are only part of the cache key: the CLIs read them themselves.
    del docker_host, container_host
    if choice == "none":
        return None
    if choice in ENGINE_NAMES:
        engine, reason = _probe(choice)
        if engine is None:
            raise EngineError(f"{ENGINE_ENV}={choice}, but {reason}")
        return engine
    if choice:
        raise EngineError(f"{ENGINE_ENV}={choice!r}: use podman, docker or none")
    for name in ENGINE_NAMES:
        engine, _ = _probe(name)
        if engine is not None:
            return engine
    return None


def detect_engine() -> Engine | None:
    """The container engine to use, or None to run everything as local processes.

    SUBSTRATUS_CONTAINER_ENGINE=podman|docker|none decides; a named engine that does not answer
    raises EngineError rather than silently falling back. Unset, the first of podman and docker
    whose `info` exits 0 within a few seconds is used. The answer is cached per process (and per
    value of the variable); `clear_engine_cache()` forgets it.
    """
    choice = os.environ.get(ENGINE_ENV, "").strip().lower()
    return _detect(choice, os.environ.get("DOCKER_HOST", ""), os.environ.get("CONTAINER_HOST", ""))


def clear_engine_cache() -> None:
    _detect.cache_clear()
