"""Fixtures shared by all tests: an isolated local supervisor with fast retries."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from substratus.runtimes.local.client import LocalClient
from substratus.runtimes.local.paths import LocalPaths
from tests.integration.servers import Azurite, FakeGCS, SeaweedS3, ServerUnavailable

FAST_ENV = {
    "SUBSTRATUS_BACKOFF_SECONDS": "0.2",
    "SUBSTRATUS_JOB_ATTEMPTS": "2",
    # Deterministic: tests that need a container engine ask for one explicitly.
    "SUBSTRATUS_CONTAINER_ENGINE": "none",
}


class Local:
    """A supervisor under a private SUBSTRATUS_HOME, and helpers to drive it."""

    def __init__(self, home: Path):
        self.paths = LocalPaths(home)
        self.client = LocalClient(self.paths)

    def apply(self, kind: str, name: str, spec: dict[str, Any], **meta: Any) -> dict[str, Any]:
        doc = {
            "apiVersion": "substratus.ai/v1",
            "kind": kind,
            "metadata": {"name": name, **meta},
            "spec": spec,
        }
        return self.client.apply(doc).object

    def get(self, kind: str, name: str, namespace: str = "default") -> dict[str, Any]:
        return self.client.get(kind, namespace, name)

    def wait(
        self,
        kind: str,
        name: str,
        pred: Any = None,
        timeout: float = 30,
        namespace: str = "default",
    ) -> dict[str, Any]:
        """Until ``pred(obj)`` (default: Ready for the current generation) holds."""
        pred = pred or (
            lambda o: (
                o["status"].get("ready")
                and o["status"].get("observedGeneration") == o["metadata"]["generation"]
            )
        )
        deadline = time.monotonic() + timeout
        obj: dict[str, Any] = {}
        while time.monotonic() < deadline:
            obj = self.client.get(kind, namespace, name)
            if obj.get("status") and pred(obj):
                return obj
            time.sleep(0.05)
        raise AssertionError(f"{kind}/{name} did not get there in {timeout}s: {obj.get('status')}")

    def reason(self, obj: dict[str, Any]) -> str:
        conds = obj["status"].get("conditions", [])
        return next((str(c["reason"]) for c in conds if c["type"] == "Ready"), "")

    def wait_reason(self, kind: str, name: str, reason: str, timeout: float = 30) -> dict[str, Any]:
        return self.wait(kind, name, lambda o: self.reason(o) == reason, timeout)

    def supervisor_pid(self) -> int:
        return int(self.client.health()["pid"])

    def kill_supervisor(self) -> None:
        pid = self.supervisor_pid()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.02)
        self.client.close()


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Local]:
    home = tmp_path / "home"
    monkeypatch.setenv("SUBSTRATUS_HOME", str(home))
    for k, v in FAST_ENV.items():
        monkeypatch.setenv(k, v)
    env = Local(home)
    try:
        yield env
    finally:
        _stop(env)


def _stop(env: Local) -> None:
    """Stop the supervisor and every workload it started, whatever state the test left."""
    from substratus.runtimes.local.client import supervisor_running

    try:
        if supervisor_running(env.paths):
            env.client.shutdown()
            deadline = time.monotonic() + 20
            while supervisor_running(env.paths) and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        env.client.close()
        _kill_leftovers(env.paths.home)


def _kill_leftovers(home: Path) -> None:
    """Any process whose environment names this SUBSTRATUS_HOME is killed."""
    needle = f"SUBSTRATUS_HOME={home}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


# -- real storage servers, session-wide (see tests/integration/servers.py) ----------

S = TypeVar("S", SeaweedS3, FakeGCS, Azurite)


def _serve(server: S) -> Iterator[S]:
    """Start ``server``, skip if it cannot run here, and always stop it."""
    try:
        try:
            server.start()
        except ServerUnavailable as e:
            pytest.skip(str(e))
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedS3]:
    """SeaweedFS with its S3 API on 127.0.0.1; ``.env`` holds the client settings."""
    yield from _serve(SeaweedS3())


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[FakeGCS]:
    """fake-gcs-server on 127.0.0.1; ``.env`` holds STORAGE_EMULATOR_HOST and credentials."""
    yield from _serve(FakeGCS())


@pytest.fixture(scope="session")
def azurite_server() -> Iterator[Azurite]:
    """Azurite's blob service on 127.0.0.1; ``.env`` holds the connection string."""
    yield from _serve(Azurite())
