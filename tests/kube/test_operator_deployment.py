"""The operator installed with its Helm chart, as a user installs it: ``helm install --wait`` of
charts/substratus with only what a user sets (the bucket URL and its credentials Secret, JSON
logs) and what this machine needs (our imported operator image, never pulled), into the test
cluster with the real node. The operator's pod (our image, the chart's ServiceAccount, RBAC and
ConfigMap, ``POD_NAME`` as the Lease holder) becomes Ready through its readiness probe, takes a
Model to Ready, serves Prometheus metrics that count what it did, logs JSON lines naming the
object, and an upgrade (the Recreate strategy) hands the Lease to the new pod.

One change for the tests' cluster alone: its API server listens on loopback, which a pod on the
node's network reaches, so the pod uses the node's network (the chart's ``operator.hostNetwork``)
and is told that address through KUBERNETES_SERVICE_HOST/PORT (``operator.extraEnv``), where
in-cluster clients (kopf, lightkube) look for it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.kube.chart import CHART, InCluster, helm, installed, node_values, values_file
from tests.kube.cluster import ControlPlane, free_port
from tests.kube.node import TOOLBOX_IMAGE, RealNode
from tests.kube.operatorproc import apply, read, wait_for
from tests.prometheus import get, sample

pytestmark = pytest.mark.integration

RELEASE, NS = "chart-test", "substratus-chart"


def lease_holder(plane: ControlPlane) -> str | None:
    r = plane.kubectl("get", "lease", "-n", NS, "substratus-operator", "-o", "json", check=False)
    return json.loads(r.stdout)["spec"].get("holderIdentity") if r.returncode == 0 else None


def wait_until(what: str, check: Any, operator: InCluster, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := check():
            return got
        time.sleep(0.5)
    pods = operator.plane.kubectl("get", "pods", "-n", NS, "-o", "wide", check=False).stdout
    raise AssertionError(f"{what}: not in {timeout}s\npods:\n{pods}\n{operator.tail(60)}")


@pytest.fixture
def chart_operator(
    kube_node: RealNode, substratus_crds: list[str], operator_image: str, node_bucket: Any
) -> Iterator[tuple[InCluster, dict[str, Any]]]:
    plane = kube_node.plane
    values = node_values(plane, operator_image, free_port())
    with installed(plane, RELEASE, NS, values, {"bucket-keys": node_bucket.env}) as operator:
        yield operator, values


def test_the_chart_installs_the_operator_which_takes_a_model_to_ready(
    chart_operator: tuple[InCluster, dict[str, Any]],
    kube_node: RealNode,
    node_bucket: Any,
    kube_namespace: str,
    tmp_path: Any,
) -> None:
    operator, values = chart_operator
    plane, ns = kube_node.plane, kube_namespace
    port = values["metrics"]["port"]
    (pod,) = operator.pods()  # Ready: helm install --wait waited for its readiness probe
    first = pod["metadata"]["name"]
    assert pod["spec"]["serviceAccountName"] == f"{RELEASE}-substratus-operator"
    assert pod["spec"]["nodeName"] == kube_node.name
    wait_until("the operator leads", lambda: lease_holder(plane) == first, operator)
    assert get(port, "/readyz") == (200, "ok\n")
    assert get(port, "/healthz") == (200, "ok\n")

    spec = {
        "image": {"name": TOOLBOX_IMAGE},
        "command": ["sh", "-c", 'echo "$PARAM_WHO" > artifacts/who.txt'],
        "params": {"who": "in-cluster"},
    }
    apply(plane, ns, "Model", "deployed", spec)
    got = wait_for(plane, operator, ns, "Model", "deployed", "Succeeded")
    assert read(node_bucket, got["status"]["url"].rstrip("/") + "/who.txt") == b"in-cluster\n"

    # Its metrics count what it did.
    status, text = get(port)
    assert status == 200
    assert sample(text, "substratus_operator_leader") == 1
    ok = sample(text, "substratus_operator_reconciles_total", kind="Model", result="ok")
    assert ok is not None and ok >= 2
    jobs = sample(text, "substratus_operator_children_created_total", kind="Job", verb="created")
    assert jobs == 1
    timed = sample(text, "substratus_operator_reconcile_duration_seconds_count", kind="Model")
    assert timed is not None and timed >= ok
    models = sample(text, "substratus_operator_objects", kind="Model")
    assert models is not None and models >= 1
    assert sample(text, "substratus_operator_queue_depth") is not None

    # Its log lines are JSON, and those of a reconcile name the object.
    lines = [json.loads(line) for line in operator.tail(400).splitlines() if line.startswith("{")]
    created = [x for x in lines if "created Job" in x["message"] and ns in x["message"]]
    assert created, lines[-20:]
    assert (created[0]["kind"], created[0]["namespace"], created[0]["name"]) == (
        "Model",
        ns,
        "deployed",
    )

    # An upgrade (a changed setting rolls the pod: the config's checksum): Recreate stops the
    # old pod, which gives the Lease up; the new one leads and acts.
    values["operator"]["workers"] = 4
    path = values_file(values, tmp_path)
    helm(
        "upgrade",
        RELEASE,
        str(CHART),
        "-n",
        NS,
        "-f",
        str(path),
        "--wait",
        "--timeout",
        "180s",
        plane=plane,
    )
    second = wait_until(
        "the upgraded pod leads",
        lambda: (h := lease_holder(plane)) not in (None, first) and h,
        operator,
    )
    assert second in {p["metadata"]["name"] for p in operator.pods()}
    apply(plane, ns, "Model", "after-upgrade", spec)
    wait_for(plane, operator, ns, "Model", "after-upgrade", "Succeeded")
