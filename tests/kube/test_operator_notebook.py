"""A Notebook on the real node through the operator: JupyterLab (the notebook image's JupyterLab
stage, mapped from the built-in ``substratusai/notebook`` by the operator's configuration)
answers with ``.status.token``, which is its token Secret's value; the model is mounted; the
user's files live on the home volume, so they outlive a suspend and a resume; deleting the
Notebook deletes its claim."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.kube.cluster import ControlPlane, Proc
from tests.kube.node import TOOLBOX_IMAGE, RealNode
from tests.kube.operatorproc import apply, node_settings, running_operator, sub_open, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def operator(
    kube_node: RealNode,
    substratus_crds: list[str],
    operator_image: str,
    notebook_image: str,
    home_volumes: str,
    node_bucket: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Proc]:
    settings = node_settings(
        node_bucket,
        operator_image,
        SUBSTRATUS_IMAGES=json.dumps({"substratusai/notebook": notebook_image}),
        SUBSTRATUS_NOTEBOOK_STORAGE_CLASS=home_volumes,
    )
    with running_operator(kube_node.plane, tmp_path_factory.mktemp("operator"), settings) as proc:
        yield proc


def jupyter(
    base: str, path: str, token: str | None, method: str = "GET", body: Any = None
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"token {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    deadline = time.monotonic() + 30
    while True:  # kube-proxy programs the Service a moment after the pod is Ready
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, None
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def service_base(plane: ControlPlane, ns: str, name: str) -> str:
    svc = f"{name}-notebook-svc"
    ip = plane.kubectl("get", "svc", "-n", ns, svc, "-o", "jsonpath={.spec.clusterIP}").stdout
    return f"http://{ip}:8888"


def pods(plane: ControlPlane, ns: str) -> list[dict[str, Any]]:
    out = plane.kubectl("get", "pods", "-n", ns, "-l", "substratus.ai/kind=Notebook", "-o", "json")
    return list(json.loads(out.stdout)["items"])


def suspend(plane: ControlPlane, ns: str, name: str, value: bool) -> None:
    patch = json.dumps({"spec": {"suspend": value}})
    plane.kubectl("patch", "notebook", name, "-n", ns, "--type=merge", "-p", patch)


def test_a_notebook_serves_jupyter_with_its_token_and_keeps_its_files_across_a_suspend(
    operator: Proc, kube_node: RealNode, kube_namespace: str
) -> None:
    plane, ns = kube_node.plane, kube_namespace
    model = {
        "image": {"name": TOOLBOX_IMAGE},
        "command": ["sh", "-c", "echo weights > artifacts/w.txt"],
    }
    apply(plane, ns, "Model", "m", model)
    nb = {
        "image": {"name": "substratusai/notebook"},
        "model": {"name": "m"},
        "resources": {"disk": 1},
    }
    apply(plane, ns, "Notebook", "nb", nb)
    ready = wait_for(plane, operator, ns, "Notebook", "nb", "Serving", timeout=240)
    token = ready["status"]["token"]
    assert ready["status"]["url"] == f"http://nb-notebook-svc.{ns}.svc.cluster.local:8888"
    secret = json.loads(
        plane.kubectl("get", "secret", "-n", ns, "nb-notebook-token", "-o", "json").stdout
    )
    assert base64.b64decode(secret["data"]["token"]).decode() == token
    claim = plane.kubectl("get", "pvc", "-n", ns, "nb-notebook-home", "-o", "json")
    assert json.loads(claim.stdout)["status"]["phase"] == "Bound"

    base = service_base(plane, ns, "nb")
    assert jupyter(base, "/api/contents", None)[0] == 403  # never an open server
    assert jupyter(base, "/api/contents", "wrong")[0] == 403
    code, listing = jupyter(base, "/api/contents/model", token)
    assert code == 200
    # The committed version, as locally: its files and its manifest.
    assert sorted(f["name"] for f in listing["content"]) == ["substratus-manifest.json", "w.txt"]
    note = {"type": "file", "format": "text", "content": "kept\n"}
    assert jupyter(base, "/api/contents/notes.txt", token, "PUT", note)[0] == 201
    # The model is read-only in the notebook too.
    assert jupyter(base, "/api/contents/model/x.txt", token, "PUT", note)[0] >= 400

    suspend(plane, ns, "nb", True)
    wait_for(plane, operator, ns, "Notebook", "nb", "Suspended")
    deadline = time.monotonic() + 60
    while pods(plane, ns):  # the pod goes; the claim stays
        assert time.monotonic() < deadline, "the suspended notebook's pod never went"
        time.sleep(0.5)
    plane.kubectl("get", "pvc", "-n", ns, "nb-notebook-home")

    suspend(plane, ns, "nb", False)
    resumed = wait_for(plane, operator, ns, "Notebook", "nb", "Serving", timeout=240)
    assert resumed["status"]["token"] == token
    code, file = jupyter(service_base(plane, ns, "nb"), "/api/contents/notes.txt", token)
    assert code == 200
    assert file["content"] == "kept\n"
    # `sub open notebook/nb`: JupyterLab's page with the token, through a port-forward.
    with sub_open(plane, ns, "notebook/nb") as page:
        assert page.endswith(f"/lab?token={token}"), page
        base = page.split("/lab?")[0]
        code, file = jupyter(base, "/api/contents/notes.txt", token)
        assert (code, file["content"]) == (200, "kept\n")
        with urllib.request.urlopen(page, timeout=10) as r:
            assert r.status == 200 and "/login" not in r.geturl()  # the page, logged in

    plane.kubectl("delete", "notebook", "nb", "-n", ns)
    deadline = time.monotonic() + 60
    while plane.kubectl("get", "pvc", "-n", ns, "-o", "name").stdout.strip():
        assert time.monotonic() < deadline, "the deleted notebook's home claim stayed"
        time.sleep(0.5)
