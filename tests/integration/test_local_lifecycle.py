"""Deleting, stopping and idling: no workload outlives its object or the supervisor, and an
idle supervisor does no work."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from substratus.core.client import ClientError
from tests.conftest import Local

pytestmark = pytest.mark.integration

BASE = {"name": "substratusai/base"}
STUBBORN = ["sh", "-c", "trap '' TERM; sleep 60"]  # ignores SIGTERM: the stop grace applies


def workload_pids(home: Path, name: str | None = None) -> list[int]:
    """Live processes started by the supervisor of ``home`` (for object ``name``)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z" or f"SUBSTRATUS_HOME={home}".encode() not in env:
            continue
        ours = b"SUBSTRATUS_KIND=Model" in env or b"SUBSTRATUS_KIND=Server" in env
        if ours and (name is None or f"SUBSTRATUS_NAME={name}".encode() in env):
            pids.append(int(proc.name))
    return pids


def until(pred: object, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_deleting_a_running_job_leaves_no_process(local: Local) -> None:
    local.apply("Model", "m", {"image": BASE, "command": STUBBORN})
    local.wait_reason("Model", "m", "JobRunning")
    assert workload_pids(local.paths.home, "m")
    # Events during the stop grace (a secret apply re-queues every object) must not restart it.
    local.client.apply(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "v"}}
    )
    local.client.delete("Model", "default", "m")
    assert until(lambda: not workload_pids(local.paths.home, "m"), 15)
    time.sleep(1)
    assert workload_pids(local.paths.home, "m") == []


def test_local_stop_stops_every_workload(local: Local) -> None:
    local.apply("Model", "m", {"image": {"name": "substratusai/base"}, "command": ["sleep", "60"]})
    local.apply("Model", "retrying", {"image": BASE, "command": ["sh", "-c", "exit 1"]})
    serve = ["python", "-m", "http.server", "--bind", "127.0.0.1"]
    local.apply("Server", "s", {"image": BASE, "model": "m", "command": serve})
    local.wait_reason("Model", "m", "JobRunning")
    r = subprocess.run(
        [sys.executable, "-m", "substratus.cli.main", "local", "stop"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert r.returncode == 0, r.stderr
    assert until(lambda: not workload_pids(local.paths.home), 10)


def test_idle_supervisor_does_no_work(local: Local) -> None:
    local.apply("Notebook", "nb", {"image": BASE, "command": ["true"], "suspend": True})
    local.apply("Model", "x", {"image": {"name": "example.com/not/builtin"}})
    local.wait_reason("Notebook", "nb", "Suspended")
    local.wait_reason("Model", "x", "ImageUnavailable")
    pid = local.supervisor_pid()
    ticks = os.sysconf("SC_CLK_TCK")

    def cpu() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks

    before = cpu()
    time.sleep(2)
    # A busy loop would burn ~2 s of CPU here; settled objects should cost next to nothing.
    assert cpu() - before < 0.5


def test_watch_with_a_bad_kind_is_a_clean_error(local: Local) -> None:
    local.client.health()
    with pytest.raises(ClientError, match="unknown kind 'nope'"):
        list(local.client.watch("nope", None, timeout=1))
