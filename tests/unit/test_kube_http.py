"""The CLI's cluster client over real HTTP on loopback, against a small stand-in API server
(the test control plane cannot be made to answer 429 or to want an exec plugin on demand):
the kubeconfig's credentials reach the server as kubectl sends them, refusals become the
Client interface's errors, and a 429 is waited out as client-go does. TLS and client
certificates are exercised against the real control plane (tests/kube)."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from substratus.cli import kube
from substratus.core.client import ClientError, InvalidError, NotFoundError, UnavailableError

Answer = tuple[int, dict[str, Any], dict[str, str]]


class Server:
    """Answers each request with the next of ``answers`` (then 200 with an empty list), and
    keeps what was asked."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        self.named = False  # unscripted: a Model named as the path's last segment
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go in two writes

            def _answer(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(size) if size else b""
                owner.seen.append((self.command, self.path, dict(self.headers), body))
                if owner.answers:
                    code, doc, headers = owner.answers.pop(0)
                elif owner.named:
                    name = self.path.rsplit("/", 1)[-1]
                    code, doc, headers = 200, {"kind": "Model", "metadata": {"name": name}}, {}
                else:
                    code, doc, headers = 200, {"items": []}, {}
                raw = json.dumps(doc).encode()
                self.send_response(code)
                for k, v in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_PATCH = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.httpd.shutdown()


def _kubeconfig(tmp_path: Path, server: Server, user: dict[str, Any]) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "test",
                "clusters": [{"name": "c", "cluster": {"server": server.url}}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    return str(path)


def _status(code: int, message: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
            "code": code, **extra}  # fmt: skip


def test_a_429_is_waited_out_as_the_server_asks(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []
    monkeypatch.setattr(kube.time, "sleep", slept.append)
    c = kube.KubeClient("test", _kubeconfig(tmp_path, server, {"token": "t0k"}))
    server.answers = [(429, _status(429, "slow down"), {"Retry-After": "2"}),
                      (429, _status(429, "slow down"), {})]  # fmt: skip
    model = {"apiVersion": "substratus.ai/v1", "kind": "Model", "metadata": {"name": "m"}}
    server.answers.append((200, {"items": [model]}, {}))
    assert c.list_objects("models", "default") == [model]
    assert len(server.seen) == 3 and slept == [2.0, 1.0]
    method, path, headers, _ = server.seen[0]
    assert (method, path) == ("GET", "/apis/substratus.ai/v1/namespaces/default/models")
    assert headers["Authorization"] == "Bearer t0k"


def test_refusals_are_the_client_interfaces_errors(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kube.time, "sleep", lambda _: None)
    c = kube.KubeClient("test", _kubeconfig(tmp_path, server, {}))
    server.answers = [(429, _status(429, "slow down"), {})] * 10
    with pytest.raises(ClientError, match="slow down"):
        c.list_objects("models", "default")
    server.answers = [(500, _status(500, "etcd is sad"), {})]
    with pytest.raises(ClientError, match=r"etcd is sad \(500\)"):
        c.list_objects("models", None)
    assert server.seen[-1][1] == "/apis/substratus.ai/v1/models"  # every namespace
    server.answers = [(404, _status(404, 'models.substratus.ai "x" not found'), {})]
    with pytest.raises(NotFoundError, match='models "x" not found in namespace "a"'):
        c.get("model", "a", "x")
    # Not JSON at all (a proxy's page): its text, not a traceback.
    server.answers = [(502, {"html": "bad gateway"}, {})]
    with pytest.raises(ClientError, match="bad gateway"):
        c.server_version()


def test_an_apply_is_server_side_and_a_refusal_is_worded_by_our_own_check(
    server: Server, tmp_path: Path
) -> None:
    c = kube.KubeClient("test", _kubeconfig(tmp_path, server, {}))
    doc = {"apiVersion": "substratus.ai/v1", "kind": "Model", "metadata": {"name": "m"},
           "spec": {"image": "busybox", "command": ["true"]}}  # fmt: skip
    stored = {**doc, "metadata": {"name": "m", "namespace": "default", "resourceVersion": "7"}}
    server.answers = [(404, _status(404, "not found"), {}), (201, stored, {})]
    result = c.apply(doc)
    assert result.action == "created" and result.object == stored
    method, path, headers, body = server.seen[-1]
    assert method == "PATCH" and headers["Content-Type"] == "application/apply-patch+yaml"
    assert path == (
        "/apis/substratus.ai/v1/namespaces/default/models/m"
        "?fieldManager=sub&force=true&fieldValidation=Strict"
    )
    assert json.loads(body)["metadata"] == {"name": "m", "namespace": "default"}
    # The server refuses a wrong type; our check says which field, as the manifest has it.
    bad = {**doc, "spec": {"image": "busybox", "command": "true"}}
    server.answers = [(404, _status(404, "not found"), {}),
                      (422, _status(422, "Model.substratus.ai \"m\" is invalid"), {})]  # fmt: skip
    with pytest.raises(Exception, match=r"spec\.command"):
        c.apply(bad, "m.yaml")
    # A refusal our check does not share is the server's, with its causes.
    causes = {"causes": [{"field": "metadata.name", "message": "taken"}]}
    server.answers = [(404, _status(404, "not found"), {}),
                      (422, _status(422, "denied by policy", details=causes), {})]  # fmt: skip
    with pytest.raises(InvalidError, match="denied by policy") as refused:
        c.apply(doc)
    assert refused.value.problems == [("metadata.name", "taken")]


def test_threads_sharing_a_client_each_get_their_own_answer(server: Server, tmp_path: Path) -> None:
    """`sub apply` of a build reads the object in one thread while another looks for the
    build's pod: the one kept-alive connection must carry their requests one at a time."""
    c = kube.KubeClient("test", _kubeconfig(tmp_path, server, {}))
    server.named = True
    wrong: list[str] = []

    def reader(n: int) -> None:
        for i in range(25):
            try:
                got = c.get("model", "default", f"m{n}-{i}")["metadata"]["name"]
            except ClientError as e:
                got = str(e)
            if got != f"m{n}-{i}":
                wrong.append(got)

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == [] and len(server.seen) == 200


def test_an_exec_plugin_gives_the_token_and_is_asked_again_after_a_401(
    server: Server, tmp_path: Path
) -> None:
    count = tmp_path / "count"
    count.write_text("0")
    plugin = (
        "import json, os, sys; p = sys.argv[1]; n = int(open(p).read()) + 1; "
        "open(p, 'w').write(str(n)); "
        "open(p + '.info', 'w').write(os.environ['KUBERNETES_EXEC_INFO']); "
        "info = json.loads(os.environ['KUBERNETES_EXEC_INFO']); "
        "print(json.dumps({'apiVersion': info['apiVersion'], 'kind': 'ExecCredential', "
        "'status': {'token': os.environ['PREFIX'] + str(n)}}))"
    )
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
                     "args": ["-c", plugin, str(count)], "env": [{"name": "PREFIX", "value": "t"}],
                     "interactiveMode": "Never", "provideClusterInfo": True}}  # fmt: skip
    c = kube.KubeClient("test", _kubeconfig(tmp_path, server, user))
    server.answers = [(200, {"gitVersion": "v1.99.0"}, {})]
    assert c.server_version() == "Kubernetes v1.99.0 (context test)"
    server.answers = [(401, _status(401, "Unauthorized"), {}), (200, {"items": []}, {})]
    assert c.list_objects("servers", "x") == []
    tokens = [headers["Authorization"] for _, _, headers, _ in server.seen]
    assert tokens == ["Bearer t1", "Bearer t1", "Bearer t2"]
    info = json.loads((tmp_path / "count.info").read_text())
    assert info["spec"] == {"interactive": False, "cluster": {"server": server.url}}


def test_kubeconfig_mistakes_are_named(server: Server, tmp_path: Path) -> None:
    path = _kubeconfig(tmp_path, server, {})
    with pytest.raises(UnavailableError, match=r"no context 'nope' \(it has: test\)"):
        kube.KubeClient("nope", path)
    with pytest.raises(UnavailableError, match="No such file"):
        kube.KubeClient("test", str(tmp_path / "missing"))
    failing = {"exec": {"command": sys.executable, "args": ["-c", "import sys; sys.exit(3)"]}}
    c = kube.KubeClient("test", _kubeconfig(tmp_path, server, failing))
    with pytest.raises(UnavailableError, match="exited 3"):
        c.server_version()
    provider = {"auth-provider": {"name": "oidc"}}
    with pytest.raises(UnavailableError, match="auth-provider"):
        kube.KubeClient("test", _kubeconfig(tmp_path, server, provider))
    assert kube.current_context(path) == "test"
    assert kube.current_context(str(tmp_path / "missing")) is None
