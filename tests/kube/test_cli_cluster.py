"""`sub` against the real API server alone (no node, no operator): the verbs that only talk
to the API server (apply, get, get -w, delete, with refusals worded as locally), and each way
a kubeconfig gives credentials, over real TLS, as kubectl takes them (cli/kubehttp.py)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube.cluster import ControlPlane

pytestmark = pytest.mark.integration

SUB = str(Path(sys.executable).parent / "sub")
CONTEXT = "substratus-test"


def _model(name: str, command: Any = ("true",)) -> dict[str, Any]:
    return {"apiVersion": "substratus.ai/v1", "kind": "Model", "metadata": {"name": name},
            "spec": {"image": "busybox", "command": list(command)
                     if isinstance(command, tuple) else command}}  # fmt: skip


def sub(kubeconfig: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "SUBSTRATUS_CONTEXT": CONTEXT}
    return subprocess.run(
        [SUB, *args], input=stdin, capture_output=True, text=True, timeout=60, env=env
    )


def test_apply_get_watch_and_delete_against_the_api_server(
    substratus_crds: list[str], kube_control_plane: ControlPlane, kube_namespace: str
) -> None:
    kc, ns = kube_control_plane.kubeconfig, kube_namespace
    m1 = json.dumps(_model("m1"))
    assert sub(kc, "apply", "-f", "-", "-n", ns, stdin=m1).stdout == "model/m1 created\n"
    assert sub(kc, "apply", "-f", "-", "-n", ns, stdin=m1).stdout == "model/m1 unchanged\n"
    # A watch prints what is there, then each change, as `kubectl get -w` does.
    env = {**os.environ, "KUBECONFIG": str(kc), "SUBSTRATUS_CONTEXT": CONTEXT}
    watch = subprocess.Popen(
        [SUB, "get", "models", "-n", ns, "-w", "-o", "name"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert watch.stdout is not None
        lines.append(watch.stdout.readline())
        assert sub(kc, "apply", "-f", "-", "-n", ns, stdin=json.dumps(_model("m2"))).returncode == 0
        timer = threading.Timer(30, watch.kill)  # a missed event fails rather than hangs
        timer.start()
        lines.append(watch.stdout.readline())
        timer.cancel()
    finally:
        watch.kill()
        watch.wait()
    assert lines == ["model.substratus.ai/m1\n", "model.substratus.ai/m2\n"]
    shown = yaml.safe_load(sub(kc, "get", "model/m1", "-n", ns, "-oyaml").stdout)
    assert shown["spec"]["command"] == ["true"] and "managedFields" not in shown["metadata"]
    # One bad document: the API server refuses it, our check says which field and why.
    bad = sub(kc, "apply", "-f", "-", "-n", ns, stdin=json.dumps(_model("bad", "true")))
    assert bad.returncode == 4 and "spec.command" in bad.stderr, bad.stderr
    assert sub(kc, "get", "model/bad", "-n", ns).returncode == 3
    unknown = _model("typo")
    unknown["spec"]["comand"] = ["x"]  # strict field validation, as kubectl asks for it
    refused = sub(kc, "apply", "-f", "-", "-n", ns, stdin=json.dumps(unknown))
    assert refused.returncode == 4 and "comand" in refused.stderr, refused.stderr
    # Several documents, one bad: nothing is applied.
    both = json.dumps(_model("m3")) + "\n---\n" + json.dumps(_model("bad", "true"))
    assert sub(kc, "apply", "-f", "-", "-n", ns, stdin=both).returncode == 4
    assert sub(kc, "get", "model/m3", "-n", ns).returncode == 3
    assert sub(kc, "delete", "model/m1", "-n", ns).stdout == "model/m1 deleted\n"
    assert sub(kc, "get", "models", "-n", ns, "-o", "name").stdout == "model.substratus.ai/m2\n"


def _config(plane: ControlPlane, cluster: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": plane.url, **cluster}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": "c", "user": "u"}}],
    }


def test_every_kind_of_kubeconfig_credential(
    substratus_crds: list[str],
    kube_control_plane: ControlPlane,
    kube_namespace: str,
    tmp_path: Path,
) -> None:
    plane, ns = kube_control_plane, kube_namespace
    given = yaml.safe_load(plane.kubeconfig.read_text())
    ca_data = given["clusters"][0]["cluster"]["certificate-authority-data"]
    admin = given["users"][0]["user"]
    cert, key = (base64.b64decode(admin[k]).decode() for k in ("client-certificate-data",
                                                                "client-key-data"))  # fmt: skip
    (tmp_path / "ca.crt").write_bytes(base64.b64decode(ca_data))
    (tmp_path / "admin.crt").write_text(cert)
    (tmp_path / "admin.key").write_text(key)
    plane.kubectl("-n", ns, "create", "serviceaccount", "cli")
    binding = f"cli-{ns}"
    plane.kubectl("create", "clusterrolebinding", binding, "--clusterrole=cluster-admin",
                  f"--serviceaccount={ns}:cli")  # fmt: skip
    try:
        token = plane.kubectl("-n", ns, "create", "token", "cli").stdout.strip()
        (tmp_path / "token").write_text(token)
        plugin = (
            "import json, sys; cert, key = (open(p).read() for p in sys.argv[1:]); "
            "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', "
            "'kind': 'ExecCredential', 'status': {'clientCertificateData': cert, "
            "'clientKeyData': key}}))"
        )
        exec_user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1",
                              "command": sys.executable, "interactiveMode": "Never",
                              "args": ["-c", plugin, str(tmp_path / "admin.crt"),
                                       str(tmp_path / "admin.key")]}}  # fmt: skip
        ways = {
            "token": ({"certificate-authority-data": ca_data}, {"token": token}),
            # Files relative to the kubeconfig, as kubectl reads them.
            "files": ({"certificate-authority": "ca.crt"},
                      {"client-certificate": "admin.crt", "client-key": "admin.key"}),
            "token-file": ({"certificate-authority": "ca.crt"}, {"tokenFile": "token"}),
            "exec-cert": ({"certificate-authority-data": ca_data}, exec_user),
            "insecure": ({"insecure-skip-tls-verify": True}, {"token": token}),
        }  # fmt: skip
        assert sub(plane.kubeconfig, "apply", "-f", "-", "-n", ns,
                   stdin=json.dumps(_model("seen"))).returncode == 0  # fmt: skip
        for way, (cluster, user) in ways.items():
            path = tmp_path / f"{way}.yaml"
            path.write_text(yaml.safe_dump(_config(plane, cluster, user)))
            got = sub(path, "get", "models", "-n", ns, "-o", "name")
            assert got.stdout == "model.substratus.ai/seen\n", (way, got.stderr)
        # Not trusting the API server's certificate: refused, and said so.
        untrusted = tmp_path / "untrusted.yaml"
        untrusted.write_text(yaml.safe_dump(_config(plane, {}, {"token": token})))
        got = sub(untrusted, "get", "models", "-n", ns)
        assert got.returncode == 6 and "CERTIFICATE_VERIFY_FAILED" in got.stderr, got.stderr
        # A wrong token: the API server's refusal, not a traceback.
        wrong = tmp_path / "wrong.yaml"
        wrong.write_text(yaml.safe_dump(_config(plane, {"certificate-authority-data": ca_data},
                                                {"token": "nope"})))  # fmt: skip
        got = sub(wrong, "get", "models", "-n", ns)
        assert got.returncode == 1 and "Unauthorized" in got.stderr, got.stderr
    finally:
        plane.kubectl("delete", "clusterrolebinding", binding, check=False)
