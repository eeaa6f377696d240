"""Reading an image's ENTRYPOINT + CMD from its registry (runtimes/kubernetes/imageconfig.py).

References parse with Docker's defaults. The bearer-token flow and multi-platform indexes are
checked against a loopback HTTP server that answers as Docker Hub does (its token service cannot
be reached from here); the plain distribution registry is exercised for real by
tests/kube/test_operator.py."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from substratus.runtimes.kubernetes.imageconfig import (
    ImageConfigError,
    ImageConfigs,
    Reference,
)


@pytest.mark.parametrize(
    ("image", "want"),
    [
        ("busybox", ("registry-1.docker.io", "library/busybox", "latest")),
        ("me/app:1.2", ("registry-1.docker.io", "me/app", "1.2")),
        ("ghcr.io/org/app/sub:v1", ("ghcr.io", "org/app/sub", "v1")),
        ("localhost:5000/app", ("localhost:5000", "app", "latest")),
        (
            "127.0.0.1:5000/a/b:t@sha256:" + "0" * 64,
            ("127.0.0.1:5000", "a/b", "sha256:" + "0" * 64),
        ),
    ],
)
def test_references_parse_with_dockers_defaults(image: str, want: tuple[str, str, str]) -> None:
    ref = Reference.parse(image)
    assert (ref.registry, ref.repository, ref.reference) == want


def test_a_malformed_reference_is_an_error() -> None:
    with pytest.raises(ImageConfigError, match="not an image reference"):
        Reference.parse("Has/Capitals")


def _digest(doc: bytes) -> str:
    return "sha256:" + hashlib.sha256(doc).hexdigest()


@pytest.fixture
def hub() -> Iterator[dict[str, Any]]:
    """A registry that wants an anonymous bearer token, serving one two-platform image."""
    config = json.dumps({"config": {"Entrypoint": ["/app"], "Cmd": ["--serve"]}}).encode()
    arm_config = json.dumps({"config": {"Entrypoint": ["/arm"]}}).encode()

    def manifest(cfg: bytes) -> bytes:
        return json.dumps({"schemaVersion": 2, "config": {"digest": _digest(cfg)}}).encode()

    amd, arm = manifest(config), manifest(arm_config)
    index = json.dumps(
        {
            "manifests": [
                {"digest": _digest(arm), "platform": {"os": "linux", "architecture": "arm64"}},
                {"digest": _digest(amd), "platform": {"os": "linux", "architecture": "amd64"}},
            ]
        }
    ).encode()
    docs = {
        "/v2/me/app/manifests/1.0": (index, "application/vnd.oci.image.index.v1+json"),
        f"/v2/me/app/manifests/{_digest(amd)}": (amd, "application/vnd.oci.image.manifest.v1+json"),
        f"/v2/me/app/manifests/{_digest(arm)}": (arm, "application/vnd.oci.image.manifest.v1+json"),
        f"/v2/me/app/blobs/{_digest(config)}": (config, "application/octet-stream"),
        f"/v2/me/app/blobs/{_digest(arm_config)}": (arm_config, "application/octet-stream"),
    }
    seen: dict[str, Any] = {"requests": 0, "scopes": []}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen["requests"] += 1
            url = urlparse(self.path)
            if url.path == "/token":
                seen["scopes"] += parse_qs(url.query)["scope"]
                self._send(200, json.dumps({"token": "t0k"}).encode(), "application/json")
            elif self.headers.get("Authorization") != "Bearer t0k":
                realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"
                self.send_response(401)
                self.send_header(
                    "WWW-Authenticate",
                    f'Bearer realm="{realm}",service="hub",scope="repository:me/app:pull"',
                )
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif url.path in docs:
                self._send(200, *docs[url.path])
            else:
                self._send(404, b"{}", "application/json")

        def _send(self, code: int, body: bytes, media: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", media)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield {"address": f"127.0.0.1:{server.server_address[1]}", "seen": seen}
    finally:
        server.shutdown()


def test_the_command_is_read_through_a_token_and_an_index(hub: dict[str, Any]) -> None:
    configs = ImageConfigs(insecure=(hub["address"],))
    assert configs.command(f"{hub['address']}/me/app:1.0") == ["/app", "--serve"]
    assert hub["seen"]["scopes"] == ["repository:me/app:pull"]
    asked = hub["seen"]["requests"]
    assert configs.command(f"{hub['address']}/me/app:1.0") == ["/app", "--serve"]
    assert hub["seen"]["requests"] == asked  # cached
    arm = ImageConfigs(insecure=(hub["address"],), platform="linux/arm64")
    assert arm.command(f"{hub['address']}/me/app:1.0") == ["/arm"]


def test_a_missing_image_or_registry_says_so(hub: dict[str, Any]) -> None:
    configs = ImageConfigs(insecure=(hub["address"],), timeout=2)
    with pytest.raises(ImageConfigError, match="not found in its registry"):
        configs.command(f"{hub['address']}/me/app:2.0")
    with pytest.raises(ImageConfigError, match="ConnectError"):
        configs.command("127.0.0.1:9/nothing/here:1")
