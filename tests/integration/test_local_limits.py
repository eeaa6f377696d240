"""resources.memory and resources.cpu enforced on local processes (cgroups), and GPUs handed to
containers by index.

The cgroup tests need root (as on CI) and a writable cgroup hierarchy; elsewhere they skip with
the reason. Each checks that the run's cgroup is gone when the run ends.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from substratus.runtimes.local import limits
from tests.conftest import Local

pytestmark = pytest.mark.integration

BASE = {"name": "substratusai/base"}
# Touches every page of 300 MB, so the memory is really used.
HOG = [sys.executable, "-c", "x = b'x' * (300 * 10**6); open('artifacts/ok', 'w').write('1')"]


def cgroup_parents() -> list[Path]:
    from substratus.runtimes.local.limits import _parent

    return [_parent(h) for h in limits.system_hierarchies()]


def runs_left() -> list[Path]:
    return [
        p for parent in cgroup_parents() if parent.is_dir() for p in parent.iterdir() if p.is_dir()
    ]


@pytest.fixture
def cgroups() -> None:
    if os.geteuid() != 0:
        pytest.skip("cgroup limits are tested as root (CI runs as root)")
    try:
        made = limits.create(limits.run_name(Path("/probe"), "probe"), 0.1, 1.0)
    except limits.CgroupError as exc:
        pytest.skip(f"no writable cgroup hierarchy here: {exc}")
    limits.remove(made)


def test_job_over_its_memory_limit_is_killed(local: Local, cgroups: None) -> None:
    spec = {"image": BASE, "command": HOG, "resources": {"memory": 0.1}}
    local.apply("Model", "hog", spec)
    obj = local.wait_reason("Model", "hog", "JobFailed", timeout=60)
    message = obj["status"]["conditions"][0]["message"]
    assert "exit code 137" in message, message
    assert runs_left() == []


def test_job_under_its_memory_limit_succeeds(local: Local, cgroups: None) -> None:
    local.apply("Model", "fits", {"image": BASE, "command": HOG, "resources": {"memory": 0.6}})
    local.wait("Model", "fits", timeout=60)
    assert runs_left() == []


def test_cpu_limit_caps_a_busy_job(local: Local, cgroups: None) -> None:
    # Spins for 1.5 s of wall time; with a fifth of a core it gets about 0.3 s of CPU.
    busy = (
        "import json, os, time\n"
        "end = time.monotonic() + 1.5\n"
        "while time.monotonic() < end: pass\n"
        "t = os.times()\n"
        "json.dump({'cpu': t.user + t.system}, open('artifacts/cpu.json', 'w'))\n"
    )
    spec = {"image": BASE, "command": [sys.executable, "-c", busy], "resources": {"cpu": 0.2}}
    local.apply("Model", "busy", spec)
    obj = local.wait("Model", "busy", timeout=60)
    used = json.loads((Path(obj["status"]["url"].removeprefix("file://")) / "cpu.json").read_text())
    assert used["cpu"] < 0.75, used  # unlimited, it would be about 1.5 s
    assert runs_left() == []


def test_service_cgroup_is_removed_when_it_stops(local: Local, cgroups: None) -> None:
    cmd = ["sh", "-c", "exec python -m http.server $PORT --bind 127.0.0.1"]
    spec = {"image": BASE, "command": cmd, "resources": {"memory": 0.5, "cpu": 1}}
    local.apply("Notebook", "nb", {**spec, "suspend": False})
    local.wait("Notebook", "nb", lambda o: bool(runs_left()) or o["status"].get("ready"))
    assert runs_left(), "a running notebook with limits has its cgroup"
    local.client.delete("Notebook", "default", "nb")
    deadline = time.monotonic() + 20
    while runs_left() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert runs_left() == []


FAKE_DOCKER = """#!/bin/sh
# A stand-in docker: answers info and image inspect, records each `run`, and holds every run
# until two have started, so both containers hold their GPUs at the same time.
case "$1" in
  info|image|stop|rm) exit 0 ;;
  run)
    echo "$*" >> "$RUNS"
    for i in $(seq 100); do [ "$(wc -l < "$RUNS")" -ge 2 ] && exit 0; sleep 0.1; done
    exit 1 ;;
esac
exit 0
"""
FAKE_SMI = """#!/bin/sh
echo "GPU 0: NVIDIA L4 (UUID: GPU-0)"
echo "GPU 1: NVIDIA L4 (UUID: GPU-1)"
"""


# No GPU and no docker exist here: a stand-in nvidia-smi reports two GPUs and a stand-in docker
# records the argv it gets. Two one-GPU containers must get GPU 0 and GPU 1, not both GPU 0.
def test_two_gpu_containers_get_different_gpus(
    local: Local, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("docker", FAKE_DOCKER), ("nvidia-smi", FAKE_SMI)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    runs = tmp_path / "runs.txt"
    runs.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("RUNS", str(runs))
    monkeypatch.setenv("SUBSTRATUS_CONTAINER_ENGINE", "docker")
    spec = {"image": {"name": "me/trainer:1"}, "resources": {"gpu": {"count": 1}}}
    local.apply("Model", "a", spec)
    local.apply("Model", "b", spec)
    local.wait("Model", "a", timeout=60)
    local.wait("Model", "b", timeout=60)
    lines = runs.read_text().splitlines()
    devices = sorted(line.split("--gpus ", 1)[1].split()[0] for line in lines)
    assert devices == ['"device=0"', '"device=1"'], lines
