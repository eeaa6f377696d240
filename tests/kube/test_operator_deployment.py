"""The operator as it runs in a cluster: deploy/operator/ (rbac.yaml, deployment.yaml) applied
with only what a user sets changed (the bucket URL and its credentials Secret; this machine's
imported images, never pulled), in a pod on the real node from our operator image, with its
ServiceAccount's token and the ConfigMap's settings: it leads under its pod's name and takes a
Model to Ready, and a rolling restart hands the Lease over.

One change for the tests' cluster alone: its API server listens on loopback, which a pod on the
node's network reaches, so the pod uses the node's network and is told that address through
KUBERNETES_SERVICE_HOST/PORT, where in-cluster clients (kopf, lightkube) look for it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from tests.kube.cluster import REPO, ControlPlane
from tests.kube.node import TOOLBOX_IMAGE, RealNode
from tests.kube.operatorproc import RBAC, apply, read, wait_for

pytestmark = pytest.mark.integration

DEPLOYMENT = REPO / "deploy" / "operator" / "deployment.yaml"
NS = "substratus-system"


class InCluster:
    """The operator's pod, as ``operatorproc.wait_for`` reads a process: alive, and its log."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    def alive(self) -> bool:
        return True  # the Deployment restarts it; its log says what went wrong

    def tail(self, lines: int = 30) -> str:
        r = self.plane.kubectl(
            "logs", "-n", NS, "deploy/substratus-operator", f"--tail={lines}", check=False
        )
        return r.stdout + r.stderr


def manifests(plane: ControlPlane, image: str) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(DEPLOYMENT.read_text()) if d]
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    settings = yaml.safe_load(config["data"]["config.yaml"])
    assert settings["artifact_url"] == "", "the shipped manifest leaves the bucket to the user"
    settings.update(artifact_url="s3://artifacts", helper_image=image, image_pull_policy="Never")
    config["data"]["config.yaml"] = yaml.safe_dump(settings)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    container.update(image=image, imagePullPolicy="Never")
    api = urlparse(plane.url)
    container["env"] += [
        {"name": "KUBERNETES_SERVICE_HOST", "value": api.hostname},
        {"name": "KUBERNETES_SERVICE_PORT", "value": str(api.port)},
    ]
    pod.update(hostNetwork=True, dnsPolicy="ClusterFirstWithHostNet")
    # On the host's network a declared port is a host port: two replicas on the one node
    # could not both run (the upload endpoint is off here anyway).
    container.pop("ports", None)
    return docs


def lease_holder(plane: ControlPlane) -> str | None:
    r = plane.kubectl("get", "lease", "-n", NS, "substratus-operator", "-o", "json", check=False)
    return json.loads(r.stdout)["spec"].get("holderIdentity") if r.returncode == 0 else None


def operator_pods(plane: ControlPlane) -> list[dict[str, Any]]:
    r = plane.kubectl(
        "get", "pods", "-n", NS, "-l", "app.kubernetes.io/name=substratus-operator", "-o", "json"
    )
    return [p for p in json.loads(r.stdout)["items"] if not p["metadata"].get("deletionTimestamp")]


def wait_until(what: str, check: Any, plane: ControlPlane, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := check():
            return got
        time.sleep(0.5)
    pods = plane.kubectl("get", "pods", "-n", NS, "-o", "wide", check=False).stdout
    raise AssertionError(f"{what}: not in {timeout}s\npods:\n{pods}\n{InCluster(plane).tail(60)}")


@pytest.fixture
def deployed(
    kube_node: RealNode, substratus_crds: list[str], operator_image: str, node_bucket: Any
) -> Iterator[InCluster]:
    plane = kube_node.plane
    plane.kubectl("apply", "-f", str(RBAC))
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "substratus-operator-bucket", "namespace": NS},
        "stringData": dict(node_bucket.env),
    }
    docs = [secret, *manifests(plane, operator_image)]
    text = "\n---\n".join(json.dumps(d) for d in docs)
    plane.kubectl("apply", "-f", "-", input=text)
    try:
        yield InCluster(plane)
    finally:
        # Gone with its pods, so that a later module's operator finds the Lease free.
        plane.kubectl("delete", "-f", "-", "--wait=true", input=text, check=False)
        plane.kubectl(
            "wait",
            "--for=delete",
            "pod",
            "-n",
            NS,
            "-l",
            "app.kubernetes.io/name=substratus-operator",
            "--timeout=60s",
            check=False,
        )


def test_the_operator_runs_in_its_deployment_and_takes_a_model_to_ready(
    deployed: InCluster, kube_node: RealNode, node_bucket: Any, kube_namespace: str
) -> None:
    plane, ns = kube_node.plane, kube_namespace

    def started_pod() -> str | None:
        pods = operator_pods(plane)
        if len(pods) == 1 and "operator started" in deployed.tail(200):
            return str(pods[0]["metadata"]["name"])
        return None

    first = wait_until("the operator started in its pod", started_pod, plane)
    assert lease_holder(plane) == first  # POD_NAME from the downward API
    pod = operator_pods(plane)[0]
    assert pod["spec"]["serviceAccountName"] == "substratus-operator"
    assert pod["spec"]["nodeName"] == kube_node.name

    spec = {
        "image": {"name": TOOLBOX_IMAGE},
        "command": ["sh", "-c", 'echo "$PARAM_WHO" > artifacts/who.txt'],
        "params": {"who": "in-cluster"},
    }
    apply(plane, ns, "Model", "deployed", spec)
    got = wait_for(plane, deployed, ns, "Model", "deployed", "Succeeded")
    assert read(node_bucket, got["status"]["url"].rstrip("/") + "/who.txt") == b"in-cluster\n"

    # A rolling restart: the new pod waits for the Lease, which the old one gives up as it
    # stops (SIGTERM); then the new one acts.
    plane.kubectl("rollout", "restart", "-n", NS, "deploy/substratus-operator")
    second = wait_until(
        "the restarted pod leads",
        lambda: (h := lease_holder(plane)) not in (None, first) and h,
        plane,
    )
    assert second in {p["metadata"]["name"] for p in operator_pods(plane)}
    apply(plane, ns, "Model", "after-restart", spec)
    wait_for(plane, deployed, ns, "Model", "after-restart", "Succeeded")
