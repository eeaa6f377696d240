"""The real node (tests/kube/node.py): real containers under a real kubelet, next to kwok's node.

Each test pins its pods to the real node (``kubernetes.io/hostname``), runs them from images made
locally (the toolbox image of hack/node.sh, our own images of hack/images.sh, or one pushed to
the local registry), and reads the result back through the API, kubectl or the network.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.kube.cluster import GPU_NODE, find_kubectl, pinned_versions
from tests.kube.node import TOOLBOX_IMAGE, RealNode
from tests.kube.registry import LocalRegistry

pytestmark = pytest.mark.integration


def pod(name: str, node: RealNode, command: str, **spec: Any) -> dict[str, Any]:
    container = {
        "name": "main",
        "image": TOOLBOX_IMAGE,
        "imagePullPolicy": "Never",
        "command": ["sh", "-c", command],
        **spec.pop("container", {}),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node.name},
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
            **spec,
        },
    }


def apply(node: RealNode, ns: str, *objects: dict[str, Any]) -> None:
    node.plane.kubectl(
        "apply",
        "-n",
        ns,
        "-f",
        "-",
        input=json.dumps({"kind": "List", "apiVersion": "v1", "items": list(objects)}),
    )


def kubectl(node: RealNode, ns: str, *args: str, timeout: float = 120) -> str:
    return node.plane.kubectl("-n", ns, *args, timeout=timeout).stdout


def wait_phase(
    node: RealNode, ns: str, name: str, phase: str = "Succeeded", timeout: int = 120
) -> None:
    r = node.plane.kubectl(
        "-n",
        ns,
        "wait",
        f"--for=jsonpath={{.status.phase}}={phase}",
        f"pod/{name}",
        f"--timeout={timeout}s",
        check=False,
        timeout=timeout + 10,
    )
    if r.returncode != 0:
        described = node.plane.kubectl("-n", ns, "describe", f"pod/{name}", check=False).stdout
        raise AssertionError(
            f"pod {name} not {phase}: {r.stderr}\n{described[-3000:]}\n{node.logs()}"
        )


def test_node_is_ready_beside_the_kwok_node(kube_node: RealNode) -> None:
    nodes = json.loads(kube_node.plane.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    by_name = {n["metadata"]["name"]: n for n in nodes}
    assert {kube_node.name, GPU_NODE} <= set(by_name)
    info = by_name[kube_node.name]["status"]["nodeInfo"]
    assert info["kubeletVersion"] == pinned_versions()["KUBERNETES_VERSION"]
    assert info["containerRuntimeVersion"].startswith("containerd://1.")
    addresses = by_name[kube_node.name]["status"]["addresses"]
    assert {"type": "InternalIP", "address": kube_node.ip} in addresses


def test_a_pod_runs_and_its_log_is_read_back(
    kube_node: RealNode, kube_namespace: str, kube_timings: dict[str, float]
) -> None:
    t0 = time.monotonic()
    apply(kube_node, kube_namespace, pod("hello", kube_node, "echo hello from $(hostname)"))
    wait_phase(kube_node, kube_namespace, "hello")
    kube_timings["pod created -> Succeeded"] = time.monotonic() - t0
    assert kubectl(kube_node, kube_namespace, "logs", "hello").strip() == "hello from hello"


def test_a_job_runs_to_completion(kube_node: RealNode, kube_namespace: str) -> None:
    template = pod("job", kube_node, "echo job-ran; exit 0")
    del template["metadata"]["name"]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "job"},
        "spec": {
            "backoffLimit": 0,
            "template": {"metadata": template["metadata"], "spec": template["spec"]},
        },
    }
    apply(kube_node, kube_namespace, job)
    kubectl(
        kube_node,
        kube_namespace,
        "wait",
        "--for=condition=Complete",
        "job/job",
        "--timeout=120s",
        timeout=130,
    )
    assert kubectl(kube_node, kube_namespace, "logs", "job/job").strip() == "job-ran"


def test_emptydir_hostpath_and_configmap_volumes(
    kube_node: RealNode, kube_namespace: str, tmp_path: Path
) -> None:
    (tmp_path / "from-host.txt").write_text("host says hi\n")
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cfg"},
        "data": {"greeting": "configmap says hi"},
    }
    script = (
        "echo scratch > /scratch/f && cat /scratch/f && cat /host/from-host.txt && "
        "cat /config/greeting && echo && echo written-by-pod > /host/from-pod.txt"
    )
    p = pod(
        "volumes",
        kube_node,
        script,
        container={
            "volumeMounts": [
                {"name": "scratch", "mountPath": "/scratch"},
                {"name": "host", "mountPath": "/host"},
                {"name": "config", "mountPath": "/config"},
            ]
        },
        volumes=[
            {"name": "scratch", "emptyDir": {}},
            {"name": "host", "hostPath": {"path": str(tmp_path), "type": "Directory"}},
            {"name": "config", "configMap": {"name": "cfg"}},
        ],
    )
    apply(kube_node, kube_namespace, config, p)
    wait_phase(kube_node, kube_namespace, "volumes")
    out = kubectl(kube_node, kube_namespace, "logs", "volumes").split("\n")
    assert out[:3] == ["scratch", "host says hi", "configmap says hi"]
    assert (tmp_path / "from-pod.txt").read_text() == "written-by-pod\n"


@pytest.fixture
def web(kube_node: RealNode, kube_namespace: str) -> dict[str, str]:
    """A pod serving a page with busybox httpd, behind a ClusterIP Service."""
    server = pod(
        "web",
        kube_node,
        "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 8080 -h /www",
        container={
            "ports": [{"containerPort": 8080}],
            "readinessProbe": {
                "httpGet": {"path": "/index.html", "port": 8080},
                "periodSeconds": 1,
            },
        },
    )
    server["spec"]["restartPolicy"] = "Always"
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    apply(kube_node, kube_namespace, server, service)
    kubectl(
        kube_node,
        kube_namespace,
        "wait",
        "--for=condition=Ready",
        "pod/web",
        "--timeout=120s",
        timeout=130,
    )
    return {
        "pod_ip": kubectl(
            kube_node, kube_namespace, "get", "pod", "web", "-o", "jsonpath={.status.podIP}"
        ),
        "cluster_ip": kubectl(
            kube_node, kube_namespace, "get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"
        ),
    }


def _get(url: str, attempts: int = 40) -> str:
    for i in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                return str(r.read().decode())
        except OSError:
            if i == attempts - 1:
                raise
            time.sleep(0.25)
    return ""


def test_pod_networking_from_the_host_and_through_a_service(
    kube_node: RealNode, kube_namespace: str, web: dict[str, str]
) -> None:
    assert web["pod_ip"].startswith("10.245.")
    assert _get(f"http://{web['pod_ip']}:8080/index.html") == "hello-from-web\n"
    # kube-proxy (iptables mode) routes the ClusterIP to the pod.
    assert _get(f"http://{web['cluster_ip']}/index.html") == "hello-from-web\n"
    # From another pod, through the Service's environment variables.
    apply(
        kube_node,
        kube_namespace,
        pod("client", kube_node, "wget -qO- http://$WEB_SERVICE_HOST:$WEB_SERVICE_PORT/index.html"),
    )
    wait_phase(kube_node, kube_namespace, "client")
    assert kubectl(kube_node, kube_namespace, "logs", "client") == "hello-from-web\n"


def test_exec_and_port_forward(
    kube_node: RealNode, kube_namespace: str, web: dict[str, str]
) -> None:
    assert (
        kubectl(kube_node, kube_namespace, "exec", "web", "--", "cat", "/www/index.html")
        == "hello-from-web\n"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [
        str(find_kubectl()),
        f"--kubeconfig={kube_node.plane.kubeconfig}",
        "-n",
        kube_namespace,
        "port-forward",
        "pod/web",
        f"{port}:8080",
    ]
    forward = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert _get(f"http://127.0.0.1:{port}/index.html") == "hello-from-web\n"
    finally:
        forward.kill()
        forward.wait()


def test_a_memory_limit_is_enforced_and_oomkilled_reported(
    kube_node: RealNode, kube_namespace: str
) -> None:
    limits = {"memory": "32Mi", "cpu": "100m"}
    p = pod(
        "hog",
        kube_node,
        # busybox dd holds one 200 MiB block in memory.
        "dd if=/dev/zero of=/dev/null bs=200M count=1",
        container={"resources": {"limits": limits, "requests": limits}},
    )
    apply(kube_node, kube_namespace, p)
    wait_phase(kube_node, kube_namespace, "hog", phase="Failed")
    status = json.loads(kubectl(kube_node, kube_namespace, "get", "pod", "hog", "-o", "json"))[
        "status"
    ]
    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert terminated["reason"] == "OOMKilled", terminated


def test_an_image_pushed_to_the_local_registry_is_pulled_by_the_node(
    kube_node: RealNode, local_registry: LocalRegistry, kube_namespace: str
) -> None:
    ref = f"{local_registry.address}/tests/toolbox:pushed"
    kube_node.ctr("images", "tag", "--force", TOOLBOX_IMAGE, ref)
    kube_node.ctr("images", "push", "--plain-http", ref)
    kube_node.ctr("images", "remove", ref)
    assert ref not in kube_node.images()
    with urllib.request.urlopen(f"{local_registry.url}/v2/tests/toolbox/tags/list") as r:
        assert json.load(r)["tags"] == ["pushed"]
    apply(
        kube_node,
        kube_namespace,
        pod(
            "pulled",
            kube_node,
            "echo pulled",
            container={"image": ref, "imagePullPolicy": "Always"},
        ),
    )
    wait_phase(kube_node, kube_namespace, "pulled")
    assert kubectl(kube_node, kube_namespace, "logs", "pulled") == "pulled\n"
    assert ref in kube_node.images()


# ---------------------------------------------------------------------------------------------
# One of our images, built by hack/images.sh


@contextlib.contextmanager
def serve_file(body: bytes, host: str) -> Iterator[str]:
    """An HTTP server on ``host`` (the node's address: pods reach it) serving ``body``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# The first run on a machine builds the image (hack/images.sh: minutes), within this test's time.
@pytest.mark.timeout(1800)
def test_our_dataset_loader_image_runs_as_a_job_and_writes_its_artifacts(
    kube_node: RealNode, kube_namespace: str, dataset_loader_image: str, tmp_path: Path
) -> None:
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    artifacts.chmod(0o777)  # the image runs as UID 10001
    csv = b"question,answer\nWhat is 2+2?,4\nCapital of France?,Paris\n"
    with serve_file(csv, kube_node.ip) as url:
        template = pod(
            "loader",
            kube_node,
            "",
            container={
                "image": dataset_loader_image,
                "imagePullPolicy": "Never",
                "command": None,
                "env": [{"name": "PARAM_URLS", "value": f"{url}/qa.csv"}],
                "volumeMounts": [{"name": "artifacts", "mountPath": "/content/artifacts"}],
            },
            volumes=[
                {"name": "artifacts", "hostPath": {"path": str(artifacts), "type": "Directory"}}
            ],
        )
        del template["spec"]["containers"][0]["command"]
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "loader"},
            "spec": {"backoffLimit": 0, "template": {"spec": template["spec"]}},
        }
        apply(kube_node, kube_namespace, job)
        r = kube_node.plane.kubectl(
            "-n",
            kube_namespace,
            "wait",
            "--for=condition=Complete",
            "job/loader",
            "--timeout=180s",
            check=False,
            timeout=190,
        )
        logs = kube_node.plane.kubectl("-n", kube_namespace, "logs", "job/loader", check=False)
        assert r.returncode == 0, f"{r.stderr}\n{logs.stdout}{logs.stderr}"
    rows = [json.loads(line) for line in (artifacts / "data.jsonl").read_text().splitlines()]
    assert rows == [
        {"question": "What is 2+2?", "answer": "4"},
        {"question": "Capital of France?", "answer": "Paris"},
    ]
    assert json.loads((artifacts / "dataset.json").read_text())["rows"] == 2
