"""An autoscaled Server on the real node through the operator: the proxy answers at
``status.url`` with no replica running, holds a burst of requests while the operator scales the
Deployment from zero, sends them to the replicas' pods (whose addresses the operator gives it,
with the token of the Secret the Server owns), and the operator scales back to zero after the
delay; turning autoscaling off removes the proxy."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.kube.cluster import ControlPlane, Proc
from tests.kube.node import TOOLBOX_IMAGE, RealNode
from tests.kube.operatorproc import apply, node_settings, running_operator, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def operator(
    kube_node: RealNode,
    substratus_crds: list[str],
    operator_image: str,
    node_bucket: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Proc]:
    settings = node_settings(node_bucket, operator_image)
    with running_operator(kube_node.plane, tmp_path_factory.mktemp("operator"), settings) as proc:
        yield proc


def _deployments(plane: ControlPlane, ns: str) -> dict[str, int]:
    items = json.loads(plane.kubectl("get", "deploy", "-n", ns, "-o", "json").stdout)["items"]
    return {d["metadata"]["name"]: d["spec"]["replicas"] for d in items}


def _get(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _get_all(url: str, n: int) -> list[tuple[int, str, str | None]]:
    """``n`` GETs at once: status, body and the proxy's queued-seconds header of each."""

    def one(_: int) -> tuple[int, str, str | None]:
        with urllib.request.urlopen(url, timeout=120) as r:
            return r.status, r.read().decode(), r.headers.get("X-Substratus-Queued-Seconds")

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def _pod_urls(plane: ControlPlane, ns: str) -> list[str]:
    pods = json.loads(
        plane.kubectl(
            "get", "pods", "-n", ns, "-l", "substratus.ai/role=service", "-o", "json"
        ).stdout
    )["items"]
    return sorted(
        f"http://{p['status']['podIP']}:8080"
        for p in pods
        if p["status"].get("podIP") and not p["metadata"].get("deletionTimestamp")
    )


def test_an_autoscaled_server_scales_from_zero_and_back_on_the_real_node(
    operator: Proc, kube_node: RealNode, kube_namespace: str
) -> None:
    plane, ns = kube_node.plane, kube_namespace
    model = {"image": {"name": TOOLBOX_IMAGE}, "command": ["sh", "-c", "echo w > artifacts/w"]}
    apply(plane, ns, "Model", "m", model)
    serve = (
        "mkdir -p /tmp/www && hostname > /tmp/www/index.html && exec httpd -f -p $PORT -h /tmp/www"
    )
    server = {
        "image": {"name": TOOLBOX_IMAGE},
        "command": ["sh", "-c", serve],
        "model": {"name": "m"},
        "autoscaling": {
            "minReplicas": 0,
            "maxReplicas": 2,
            "targetInFlight": 2,
            "scaleDownDelaySeconds": 3,
            "queueLimit": 10,
        },
    }
    apply(plane, ns, "Server", "auto", server)
    served = wait_for(plane, operator, ns, "Server", "auto", "Serving")
    assert served["status"]["url"] == f"http://auto-server-proxy.{ns}.svc.cluster.local:8080"
    assert "scaled to zero" in served["status"]["conditions"][0]["message"]
    assert _deployments(plane, ns)["auto-server-deploy"] == 0
    # The proxy's token lives in a Secret the Server owns; the pod reads it from there.
    assert _token_owners(plane, ns) == [served["metadata"]["uid"]]
    ip = plane.kubectl(
        "get", "svc", "-n", ns, "auto-server-proxy", "-o", "jsonpath={.spec.clusterIP}"
    )
    proxy = f"http://{ip.stdout}:8080"
    deadline = time.monotonic() + 30
    while True:  # kube-proxy programs the Service's rules a moment after the proxy is Ready
        try:
            assert _get(proxy + "/", timeout=3)["readyReplicas"] == 0  # asked: nothing woke
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    # Nobody can point the proxy elsewhere without the token.
    put = urllib.request.Request(
        proxy + "/_substratus/upstreams", data=b'["http://10.0.0.1:80"]', method="PUT"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(put, timeout=5)
    assert refused.value.code == 403

    # Six requests at zero: held while the operator scales the Deployment and pods start.
    try:
        results = _get_all(proxy + "/index.html", 6)
    except OSError as exc:  # say what the proxy and the cluster saw
        logs = plane.kubectl("logs", "-n", ns, "deploy/auto-server-proxy", check=False)
        pods = plane.kubectl("get", "pods", "-n", ns, "-o", "wide", check=False).stdout
        raise AssertionError(
            f"{exc}; load {_get(proxy + '/_substratus/load')}; deployments "
            f"{_deployments(plane, ns)}\npods:\n{pods}\nproxy log:\n{logs.stdout}{logs.stderr}"
            f"\noperator:\n{operator.tail(40)}"
        ) from exc
    assert [code for code, _, _ in results] == [200] * 6
    assert all(queued is not None and float(queued) > 0 for _, _, queued in results)
    assert _deployments(plane, ns)["auto-server-deploy"] == 2  # 6 / 2 = 3, capped at 2
    # The proxy sends to the pods themselves, as the operator told it.
    deadline = time.monotonic() + 30
    while _get(proxy + "/_substratus/load")["upstreams"] != _pod_urls(plane, ns):
        assert time.monotonic() < deadline, _get(proxy + "/_substratus/load")
        time.sleep(0.5)
    assert len(_pod_urls(plane, ns)) == 2

    # Nothing for the delay: the operator scales it back to zero, the pods go, and the proxy
    # is told so.
    deadline = time.monotonic() + 90
    while _deployments(plane, ns)["auto-server-deploy"] != 0:
        assert time.monotonic() < deadline, operator.tail(40)
        time.sleep(0.5)
    wait_for(plane, operator, ns, "Server", "auto", "Serving")
    while _get(proxy + "/_substratus/load")["upstreams"]:
        assert time.monotonic() < deadline, _get(proxy + "/_substratus/load")
        time.sleep(0.5)

    # Autoscaling off: the proxy goes, the Server's own Service is the address again.
    apply(plane, ns, "Server", "auto", {k: v for k, v in server.items() if k != "autoscaling"})
    deadline = time.monotonic() + 60
    while "auto-server-proxy" in _deployments(plane, ns):
        assert time.monotonic() < deadline, operator.tail(40)
        time.sleep(0.5)
    back = wait_for(plane, operator, ns, "Server", "auto", "Serving")
    assert back["status"]["url"] == f"http://auto-server-svc.{ns}.svc.cluster.local:8080"

    # Deleted and made again under its name: the new Server's proxy gets a token Secret of its
    # own, whether or not the garbage collector has removed the old one yet.
    plane.kubectl("delete", "server", "-n", ns, "auto", "--timeout=60s")
    apply(plane, ns, "Server", "auto", server)
    again = wait_for(plane, operator, ns, "Server", "auto", "Serving")
    assert again["metadata"]["uid"] in _token_owners(plane, ns)


def _token_owners(plane: ControlPlane, ns: str) -> list[str]:
    """The uids of the Servers that own a proxy token Secret in ``ns``."""
    role = "substratus.ai/role=proxy"
    found = plane.kubectl("get", "secrets", "-n", ns, "-l", role, "-o", "json")
    return [r["uid"] for s in json.loads(found.stdout)["items"]
            for r in s["metadata"]["ownerReferences"]]  # fmt: skip
