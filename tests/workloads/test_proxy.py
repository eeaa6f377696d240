"""The autoscaling proxy as a process, over real HTTP: what it says when no replica comes, how
it counts, and that it forwards to a replica that appears in its upstreams file."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.workloads.test_server import free_port

pytestmark = pytest.mark.integration


KEY = "k" * 24


@contextmanager
def start_proxy(tmp_path: Path, **extra: str) -> Iterator[tuple[str, Path]]:
    port = free_port()
    upstreams = tmp_path / "upstreams.json"
    upstreams.write_text("[]")
    env = {
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "UPSTREAMS_FILE": str(upstreams),
        "QUEUE_LIMIT": "2",
        "QUEUE_TIMEOUT_SECONDS": "1",
        "LOAD_WINDOW_SECONDS": "3",
        "PATH": "/usr/bin:/bin",
    }
    env.update(extra)
    proc = subprocess.Popen([sys.executable, "-m", "substratus.workloads.proxy"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        yield url, upstreams
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    with start_proxy(tmp_path) as started:
        yield started


def load(url: str) -> dict[str, Any]:
    return dict(httpx.get(url + "/_substratus/load").json())


def test_no_replica_in_time_is_a_503_naming_the_setting(proxy: tuple[str, Path]) -> None:
    url, _ = proxy
    started = time.monotonic()
    r = httpx.post(url + "/v1/completions", json={"prompt": "hi"}, timeout=10)
    assert r.status_code == 503 and 0.9 < time.monotonic() - started < 5
    assert r.headers["x-substratus-reason"] == "queue_timeout"
    assert r.headers["retry-after"]
    error = r.json()["error"]
    assert error["code"] == "queue_timeout" and "queueTimeoutSeconds" in error["message"]
    # The held request counted while it waited; nothing waits now.
    assert load(url) | {"window": 0} == {
        "inFlight": 0, "waiting": 0, "peak": 1, "window": 0, "readyReplicas": 0, "replicas": 0,
        "upstreams": [],
    }  # fmt: skip


class Slow(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"ok" if self.path == "/" else json.dumps({"path": self.path}).encode()
        if self.path != "/":
            time.sleep(0.5)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_held_requests_go_to_a_replica_that_appears(proxy: tuple[str, Path]) -> None:
    url, upstreams = proxy
    results: list[httpx.Response] = []

    def ask(i: int) -> None:
        results.append(httpx.get(f"{url}/v1/models?i={i}", timeout=10))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    # Two held (the limit), the third refused at once.
    assert load(url)["waiting"] == 2
    assert [r.headers.get("x-substratus-reason") for r in results] == ["queue_full"]
    replica = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=replica.serve_forever, daemon=True).start()
    try:
        upstreams.write_text(json.dumps([f"http://127.0.0.1:{replica.server_address[1]}"]))
        for t in threads:
            t.join(10)
        answered = sorted(r.json()["path"] for r in results if r.status_code == 200)
        assert len(answered) == 2 and all(p.startswith("/v1/models?i=") for p in answered)
        assert all(float(r.headers["x-substratus-queued-seconds"]) > 0.2 for r in results[1:])
        assert load(url)["peak"] == 3  # the refused request counted too
    finally:
        replica.shutdown()


def test_a_request_without_the_servers_key_is_refused_before_it_wakes_anything(
    tmp_path: Path,
) -> None:
    with start_proxy(tmp_path, API_KEYS=KEY) as (url, _):
        check_keys(url)


def check_keys(url: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-key-wrong-key-wrong"}):
        started = time.monotonic()
        r = httpx.post(url + "/v1/completions", json={"prompt": "hi"}, headers=headers)
        assert r.status_code == 401 and time.monotonic() - started < 0.5  # not held
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert r.headers["www-authenticate"] == "Bearer"
    assert load(url)["peak"] == 0  # no demand: nothing would scale up
    r = httpx.post(
        url + "/v1/completions", json={"prompt": "hi"}, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert r.headers["x-substratus-reason"] == "queue_timeout"  # held, as a keyed request is


TOKEN = "t" * 43


def test_the_operator_sets_the_replicas_with_the_proxys_token(tmp_path: Path) -> None:
    """On a cluster the operator PUTs the replicas' pod addresses; only with the token."""
    replica = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=replica.serve_forever, daemon=True).start()
    there = f"http://127.0.0.1:{replica.server_address[1]}"
    with start_proxy(tmp_path, UPSTREAMS_FILE="", PROXY_TOKEN=TOKEN) as (url, _):
        put = url + "/_substratus/upstreams"
        header = "X-Substratus-Proxy-Token"
        for headers in ({}, {header: "x" * 43}, {"Authorization": f"Bearer {TOKEN}"}):
            r = httpx.put(put, json=["http://10.0.0.9:8080"], headers=headers)
            assert r.status_code == 403 and header in r.json()["error"]["message"]
        for body in ({"urls": []}, ["ftp://x"], [1], ["http://x"] * 1001):
            r = httpx.put(put, json=body, headers={header: TOKEN})
            assert r.status_code == 400, body
        r = httpx.put(put, content=b"not json", headers={header: TOKEN})
        assert r.status_code == 400
        assert httpx.get(put).status_code == 405
        assert load(url)["upstreams"] == []  # nothing refused changed anything
        # A held request is answered by the replica the operator names.
        results: list[httpx.Response] = []
        held = threading.Thread(target=lambda: results.append(httpx.get(url + "/v1/x", timeout=5)))
        held.start()
        time.sleep(0.3)
        r = httpx.put(put, json=[there + "/"], headers={header: TOKEN})
        assert r.status_code == 200 and r.json() == {"upstreams": [there]}
        held.join(10)
        assert [r.status_code for r in results] == [200] and results[0].json() == {"path": "/v1/x"}
        assert load(url)["upstreams"] == [there] and load(url)["readyReplicas"] == 1
        # Taken away again: no new request goes there.
        assert httpx.put(put, json=[], headers={header: TOKEN}).status_code == 200
        r = httpx.get(url + "/v1/x", timeout=5)
        assert r.headers["x-substratus-reason"] == "queue_timeout"
    replica.shutdown()


def test_a_proxy_without_a_token_takes_no_replicas_from_outside(proxy: tuple[str, Path]) -> None:
    url, _ = proxy
    r = httpx.put(url + "/_substratus/upstreams", json=[], headers={"X-Substratus-Proxy-Token": ""})
    assert r.status_code == 404
