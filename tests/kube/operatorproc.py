"""The operator as a process beside a test cluster, the way it runs in one: with only the
permissions of deploy/operator/rbac.yaml (a token of its ServiceAccount; the chart's rendering,
tests/kube/test_chart.py), configured for a
bucket and a helper image. Used by tests/kube/test_operator.py and the dev cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from tests.kube.cluster import REPO, ControlPlane, Proc, free_port, spawn

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


def node_settings(bucket: Any, helper_image: str, **extra: str) -> dict[str, str]:
    """The operator's settings on the real node: the bucket (SeaweedFS), our helper image,
    imported images only (``Never`` pulled), and ``extra`` (SUBSTRATUS_* names)."""
    return {
        **bucket.env,
        "SUBSTRATUS_ARTIFACT_URL": "s3://artifacts",
        "SUBSTRATUS_HELPER_IMAGE": helper_image,
        "SUBSTRATUS_IMAGE_PULL_POLICY": "Never",
        **extra,
    }


def start_operator(
    plane: ControlPlane,
    workdir: Path,
    settings: Mapping[str, str],
    timeout: float = 30,
    wait: bool = True,
    kubeconfig: Path | None = None,
) -> Proc:
    """``python -m substratus.runtimes.kubernetes`` with ``settings`` (SUBSTRATUS_*, the
    bucket's AWS_*); returns once it leads and has started watching (unless ``wait`` is
    false: a second replica waits for the lease). ``kubeconfig``: one that
    ``operator_kubeconfig`` wrote before (a restart), else a new one in ``workdir``."""
    if kubeconfig is None:
        kubeconfig = operator_kubeconfig(plane, workdir / "operator-kubeconfig")
    # Its metrics and probes on a port of its own: replicas run side by side here.
    metrics = {"SUBSTRATUS_METRICS_LISTEN": f"127.0.0.1:{free_port()}"}
    env = {**os.environ, **metrics, **settings, "KUBECONFIG": str(kubeconfig)}
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


@contextmanager
def running_operator(
    plane: ControlPlane, workdir: Path, settings: Mapping[str, str]
) -> Iterator[Proc]:
    """``start_operator`` for the length of a ``with`` block (a module's fixture)."""
    proc = start_operator(plane, workdir, settings)
    try:
        yield proc
    finally:
        stop_operator(proc)


def stop_operator(proc: Proc) -> None:
    proc.popen.terminate()  # kopf stops its watches and runs the cleanup handlers
    try:
        proc.popen.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def apply(plane: ControlPlane, ns: str, kind: str, name: str, spec: dict[str, Any]) -> None:
    doc = {"apiVersion": "substratus.ai/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}
    plane.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(doc))


class Running(Protocol):
    """What ``wait_for`` reads of an operator: a process here, or the pod of its Deployment."""

    def alive(self) -> bool: ...

    def tail(self, lines: int = 30) -> str: ...


def wait_for(
    plane: ControlPlane,
    operator: Running,
    ns: str,
    kind: str,
    name: str,
    reason: str,
    timeout: float = 180,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = plane.kubectl("get", "-n", ns, kind.lower(), name, "-o", "json", check=False)
        if r.returncode == 0:
            last = json.loads(r.stdout)
            status = last.get("status") or {}
            conditions: list[dict[str, Any]] = status.get("conditions", [])
            ready = next((c for c in conditions if c["type"] == "Ready"), {})
            if ready.get("reason") == reason:
                return last
        if not operator.alive():
            break
        time.sleep(0.5)
    pods = plane.kubectl("get", "pods", "-n", ns, "-o", "wide", check=False).stdout
    raise AssertionError(
        f"{kind}/{name} never reached {reason}; status: {json.dumps(last.get('status'), indent=1)}"
        f"\npods:\n{pods}\noperator log:\n{operator.tail(60)}"
    )


def read(bucket: Any, url: str) -> bytes:
    path = url.removeprefix("s3://")
    name, _, key = path.partition("/")
    return bytes(bucket.client().get_object(Bucket=name, Key=key)["Body"].read())


@contextmanager
def sub_open(plane: ControlPlane, ns: str, target: str) -> Iterator[str]:
    """`sub open TARGET --no-browser` against the cluster: the page it prints, usable while
    its port-forward lasts (until it is stopped, as Ctrl-C would)."""
    env = {
        **os.environ,
        "KUBECONFIG": str(plane.kubeconfig),
        "SUBSTRATUS_CONTEXT": "substratus-test",  # the test cluster's kubeconfig context
    }
    opener = subprocess.Popen(
        [str(Path(sys.executable).parent / "sub"), "open", target, "-n", ns, "--no-browser"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert opener.stdout is not None
        page = opener.stdout.readline().strip()
        if not page.startswith("http://127.0.0.1:"):
            opener.terminate()
            _, errors = opener.communicate(timeout=10)
            raise AssertionError(f"sub open {target} printed {page!r}: {errors}")
        yield page
    finally:
        opener.terminate()
        opener.wait(10)
