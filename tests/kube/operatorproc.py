"""The operator as a process beside a test cluster, the way it runs in one: with only the
permissions of deploy/operator/rbac.yaml (a token of its ServiceAccount), configured for a
bucket and a helper image. Used by tests/kube/test_operator.py and the dev cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from tests.kube.cluster import REPO, ControlPlane, Proc, spawn

RBAC = REPO / "deploy" / "operator" / "rbac.yaml"


def operator_kubeconfig(plane: ControlPlane, path: Path) -> Path:
    """Apply the operator's RBAC; write a kubeconfig with a token of its ServiceAccount."""
    plane.kubectl("apply", "-f", str(RBAC))
    token = plane.kubectl(
        "create", "token", "substratus-operator", "-n", "substratus-system", "--duration=24h"
    ).stdout.strip()
    config = json.loads(plane.kubeconfig.read_text())
    config["users"] = [{"name": "operator", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = "operator"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


def start_operator(
    plane: ControlPlane,
    workdir: Path,
    settings: Mapping[str, str],
    timeout: float = 30,
    wait: bool = True,
) -> Proc:
    """``python -m substratus.runtimes.kubernetes`` with ``settings`` (SUBSTRATUS_*, the
    bucket's AWS_*); returns once it leads and has started watching (unless ``wait`` is
    false: a second replica waits for the lease)."""
    env = {
        **os.environ,
        **settings,
        "KUBECONFIG": str(operator_kubeconfig(plane, workdir / "operator-kubeconfig")),
    }
    log = workdir / "operator.log"
    proc = spawn(
        "operator", [sys.executable, "-m", "substratus.runtimes.kubernetes"], log, REPO, env
    )
    if not wait:
        return proc
    deadline = time.monotonic() + timeout
    while "operator started" not in proc.tail(200):
        if not proc.alive() or time.monotonic() > deadline:
            stop_operator(proc)
            raise RuntimeError(f"the operator did not start:\n{proc.tail(40)}")
        time.sleep(0.2)
    return proc


def stop_operator(proc: Proc) -> None:
    proc.popen.terminate()  # kopf stops its watches and runs the cleanup handlers
    try:
        proc.popen.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
