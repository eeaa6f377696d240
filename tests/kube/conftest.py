"""Fixtures: a real Kubernetes control plane for the tests (see cluster.py).

- ``kube_control_plane`` (session): etcd + kube-apiserver on loopback.
- ``kube_cluster`` (session): the same plus kube-controller-manager, kube-scheduler and kwok, with
  a simulated node ``GPU_NODE`` that has ``nvidia.com/gpu: 8``.
- ``kube_node`` (session): ``kube_cluster`` plus a real node (node.py: containerd, kubelet,
  kube-proxy running real containers) that pulls from ``local_registry`` (session, registry.py).
- ``kube_client``: a lightkube client as the admin; ``kube_namespace``: a fresh namespace per test;
  ``substratus_crds``: deploy/crds applied and Established.

Missing binaries skip these tests with the command that builds them (hack/control-plane.sh,
hack/node.sh); under CI (``CI`` set) a real node that is not prepared is an error instead, and
only a machine that cannot run one (not root, no cgroups) skips. Everything started is stopped at
the end of the session, also when a test fails or the run is interrupted.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.error
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kube.cluster import REPO, ControlPlane, ControlPlaneUnavailable
from tests.kube.node import RealNode, machine_problem, unprepared
from tests.kube.registry import LocalRegistry

CRD_DIR = REPO / "deploy" / "crds"
_TIMINGS = pytest.StashKey[dict[str, float]]()


@pytest.fixture(scope="session")
def kube_control_plane(request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver, started once per session and always torn down."""
    plane = ControlPlane()
    try:
        try:
            plane.start()
        except ControlPlaneUnavailable as e:
            pytest.skip(str(e))
        request.config.stash.setdefault(_TIMINGS, {})["kube-apiserver ready"] = plane.startup_s
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def kube_cluster(kube_control_plane: ControlPlane, request: pytest.FixtureRequest) -> ControlPlane:
    """The control plane plus controller-manager, scheduler and kwok's simulated GPU node."""
    try:
        kube_control_plane.start_nodes()
    except ControlPlaneUnavailable as e:
        pytest.skip(str(e))
    timings = request.config.stash.setdefault(_TIMINGS, {})
    timings["controllers + kwok node ready"] = kube_control_plane.nodes_startup_s
    return kube_control_plane


@pytest.fixture(scope="session")
def local_registry() -> Iterator[LocalRegistry]:
    """The distribution registry on loopback (plain HTTP), for pushes and the node's pulls."""
    registry = LocalRegistry()
    try:
        registry.start()
    except ControlPlaneUnavailable as e:
        unprepared(str(e))
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="session")
def kube_node(
    kube_cluster: ControlPlane, local_registry: LocalRegistry, request: pytest.FixtureRequest
) -> Iterator[RealNode]:
    """``kube_cluster`` plus one Ready real node; kwok's node stays for scheduling tests, so
    pods meant to run for real select ``kubernetes.io/hostname: <node.name>``. The teardown
    fails the session if anything the node did to the host is left."""
    problem = machine_problem()
    if problem:
        pytest.skip(problem)
    node = RealNode(kube_cluster, registry=local_registry.address)
    try:
        node.start()
    except ControlPlaneUnavailable as e:
        unprepared(str(e))
    request.config.stash.setdefault(_TIMINGS, {})["real node Ready"] = node.startup_s
    try:
        yield node
    finally:
        left = node.stop()
        assert not left, f"the real node's teardown left: {left}"


def node_image(node: RealNode, name: str) -> list[str]:
    """Image ``name`` of hack/images.sh (built once and cached), loaded into the node: its names."""
    r = subprocess.run(
        ["bash", "hack/images.sh", name],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    if r.returncode != 0:
        unprepared(f"hack/images.sh {name} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return node.load_image(Path(r.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="session")
def dataset_loader_image(kube_node: RealNode) -> str:
    """Our dataset-loader image, loaded into the node."""
    return next(n for n in node_image(kube_node, "dataset-loader") if n.endswith(":latest"))


@pytest.fixture(scope="session")
def operator_image(kube_node: RealNode) -> str:
    """Our operator image, loaded into the node: the operator in a pod, and the contract's
    helper (fetch, commit) in every workload pod."""
    return next(n for n in node_image(kube_node, "operator") if n.endswith(":latest"))


@pytest.fixture(scope="session")
def notebook_image(kube_node: RealNode) -> str:
    """The notebook image's JupyterLab stage (no ML stack), loaded into the node."""
    return node_image(kube_node, "notebook:jupyter")[0]


@pytest.fixture(scope="session")
def home_volumes(kube_node: RealNode) -> Iterator[str]:
    """A StorageClass of static volumes on the real node, for Notebooks' home claims."""
    name = "substratus-test-home"
    kube_node.add_volumes(name, 4)
    try:
        yield name
    finally:
        kube_node.remove_volumes(name, 4)


@pytest.fixture(scope="session")
def node_bucket(kube_node: RealNode) -> Iterator[Any]:
    """An S3-compatible bucket (SeaweedFS) on the node's address, so pods reach it too:
    ``.endpoint``, ``.env`` (AWS_* for clients), bucket ``artifacts``."""
    from tests.integration.servers import SeaweedS3, ServerUnavailable

    server = SeaweedS3(host=kube_node.ip)
    try:
        server.start()
    except ServerUnavailable as e:
        unprepared(str(e))
    try:
        server.create_bucket("artifacts")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kube_client(kube_control_plane: ControlPlane) -> Iterator[Any]:
    """A lightkube Client (admin) for the control plane."""
    pytest.importorskip("lightkube", reason="pip install lightkube")
    client = kube_control_plane.client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def substratus_crds(kube_control_plane: ControlPlane) -> list[str]:
    """Apply deploy/crds (the CRDs and their admission policy) with kubectl; return the CRD
    names once all are Established and the policy is in force."""
    try:
        kube_control_plane.kubectl("apply", "-f", str(CRD_DIR))
    except ControlPlaneUnavailable as e:
        pytest.skip(str(e))
    names = sorted(
        f"{p.name.split('_', 1)[1].removesuffix('.yaml')}.{p.name.split('_', 1)[0]}"
        for p in CRD_DIR.glob("substratus.ai_*.yaml")
    )
    kube_control_plane.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names]
    )
    _wait_for_policy(kube_control_plane)
    return names


def _wait_for_policy(plane: ControlPlane, timeout: float = 30) -> None:
    """A new admission policy is compiled in the background: until a bad object is refused."""
    bad = json.dumps(
        {
            "apiVersion": "substratus.ai/v1",
            "kind": "Model",
            "metadata": {"name": "policy-probe", "namespace": "default"},
            "spec": {"image": {"git": {"url": "u"}, "upload": {}}},
        }
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = plane.kubectl("create", "--dry-run=server", "-f", "-", input=bad, check=False)
        if r.returncode != 0 and "ValidatingAdmissionPolicy" in r.stderr:
            return
        time.sleep(0.5)
    raise AssertionError(f"the admission policy refuses nothing after {timeout}s")


@pytest.fixture
def kube_namespace(kube_control_plane: ControlPlane) -> Iterator[str]:
    """A namespace of its own for one test, deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    kube_control_plane.api(
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
    )
    try:
        yield name
    finally:
        # The control plane may already be gone.
        with contextlib.suppress(urllib.error.URLError, OSError):
            kube_control_plane.api("DELETE", f"/api/v1/namespaces/{name}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start their own real node go first: the session's node, once started, holds
    the machine's node lock until the session ends."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("node_exclusive") else 1)


@pytest.fixture
def kube_timings(request: pytest.FixtureRequest) -> dict[str, float]:
    """Durations to print in the session's summary (name -> seconds)."""
    return request.config.stash.setdefault(_TIMINGS, {})


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    timings = config.stash.get(_TIMINGS, {})
    if timings:
        parts = ", ".join(f"{k} in {v:.1f}s" for k, v in timings.items())
        terminalreporter.write_line(f"kube control plane: {parts}")
