"""The Helm chart (charts/substratus) through the real helm (built by hack/control-plane.sh):
render it, and install the operator with it into the test cluster.

helm keeps its own state (repositories, cache, registry logins) under XDG directories: each
call gets private ones, so the tests never read or change the user's."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from tests.kube.cluster import (
    REPO,
    ControlPlane,
    ControlPlaneUnavailable,
    find_binaries,
    pinned_versions,
)

CHART = REPO / "charts" / "substratus"
_STATE = Path(tempfile.mkdtemp(prefix="substratus-helm-"))
# Rendering without a cluster: the test cluster's Kubernetes version (the chart's kubeVersion).
KUBE = ("--kube-version", pinned_versions()["KUBERNETES_VERSION"])


def helm_binary() -> Path:
    """The cached helm; missing, a skip (an error under CI, which builds it)."""
    try:
        return find_binaries(["helm"])["helm"]
    except ControlPlaneUnavailable as e:
        if os.environ.get("CI"):
            pytest.fail(str(e))
        pytest.skip(str(e))


def helm(
    *args: str, plane: ControlPlane | None = None, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "XDG_CACHE_HOME": str(_STATE / "cache"),
        "XDG_CONFIG_HOME": str(_STATE / "config"),
        "XDG_DATA_HOME": str(_STATE / "data"),
    }
    if plane is not None:
        env["KUBECONFIG"] = str(plane.kubeconfig)
    r = subprocess.run(
        [str(helm_binary()), *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    if check and r.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
    return r


def values_file(values: Mapping[str, Any], directory: Path) -> Path:
    fd, name = tempfile.mkstemp(suffix=".yaml", dir=directory)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(dict(values), f)
    return Path(name)


def template(
    values: Mapping[str, Any], release: str = "substratus", namespace: str = "substratus-system"
) -> list[dict[str, Any]]:
    """``helm template`` of the chart with ``values``: its documents."""
    path = values_file(values, _STATE)
    out = helm("template", release, str(CHART), "-n", namespace, "-f", str(path), *KUBE).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} in the rendering"
    return found[0]


class InCluster:
    """The chart's operator as ``operatorproc.wait_for`` reads a process: alive, and its log."""

    def __init__(self, plane: ControlPlane, namespace: str, deployment: str) -> None:
        self.plane = plane
        self.namespace = namespace
        self.deployment = deployment

    def alive(self) -> bool:
        return True  # the Deployment restarts it; its log says what went wrong

    def tail(self, lines: int = 30) -> str:
        r = self.plane.kubectl(
            "logs",
            "-n",
            self.namespace,
            f"deploy/{self.deployment}",
            f"--tail={lines}",
            check=False,
        )
        return r.stdout + r.stderr

    def pods(self) -> list[dict[str, Any]]:
        r = self.plane.kubectl(
            "get",
            "pods",
            "-n",
            self.namespace,
            "-l",
            "app.kubernetes.io/component=operator",
            "-o",
            "json",
        )
        items = json.loads(r.stdout)["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]


@contextlib.contextmanager
def installed(
    plane: ControlPlane,
    release: str,
    namespace: str,
    values: Mapping[str, Any],
    secrets: Mapping[str, Mapping[str, str]] | None = None,
) -> Iterator[InCluster]:
    """``helm install --wait`` of the chart (the operator's pod Ready: its readiness probe
    answered); ``secrets`` (name -> data) made in ``namespace`` first. Uninstalled after, and
    its pods gone, so the next operator finds its Lease free."""
    plane.kubectl("create", "namespace", namespace, check=False)
    for name, data in (secrets or {}).items():
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "stringData": dict(data),
        }
        plane.kubectl("apply", "-f", "-", input=json.dumps(secret))
    path = values_file(values, _STATE)
    fullname = release if "substratus" in release else f"{release}-substratus"
    deployment = f"{fullname}-operator"
    operator = InCluster(plane, namespace, deployment)
    t0 = time.monotonic()
    r = helm(
        "install",
        release,
        str(CHART),
        "-n",
        namespace,
        "-f",
        str(path),
        "--wait",
        "--timeout",
        "180s",
        plane=plane,
        check=False,
    )
    try:
        if r.returncode != 0:
            pods = plane.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False)
            raise AssertionError(
                f"helm install failed:\n{r.stderr}\n{pods.stdout}\n{operator.tail(60)}"
            )
        print(f"helm install --wait: {time.monotonic() - t0:.1f}s")
        yield operator
    finally:
        helm("uninstall", release, "-n", namespace, "--wait", plane=plane, check=False)
        plane.kubectl(
            "wait",
            "--for=delete",
            "pod",
            "-n",
            namespace,
            "-l",
            "app.kubernetes.io/component=operator",
            "--timeout=60s",
            check=False,
        )


def node_values(plane: ControlPlane, image: str, metrics_port: int) -> dict[str, Any]:
    """The chart's values on the real node: what a user sets (the bucket URL, its keys in the
    Secret ``bucket-keys``, JSON logs) and what the tests' cluster needs: our imported images
    (never pulled), a metrics port of its own, and, since its API server listens on loopback,
    the node's network with that address in KUBERNETES_SERVICE_HOST/PORT, where in-cluster
    clients (kopf, lightkube) look for it."""
    repository, _, tag = image.rpartition(":")
    api = urlparse(plane.url)
    return {
        "artifactURL": "s3://artifacts",
        "bucket": {"credentialsSecret": "bucket-keys"},
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "workloadImages": {"pullPolicy": "Never"},
        # The session applied deploy/crds, and the builds namespace may exist: not the
        # chart's to own here (tests/kube/test_chart.py renders and dry-runs both).
        "crds": {"install": False},
        "builds": {"createNamespace": False},
        "metrics": {"port": metrics_port},
        "operator": {
            "logFormat": "json",
            "hostNetwork": True,
            "extraEnv": [
                {"name": "KUBERNETES_SERVICE_HOST", "value": api.hostname},
                {"name": "KUBERNETES_SERVICE_PORT", "value": str(api.port)},
            ],
        },
    }
