"""Servers and Notebooks on the local runtime: ports, readiness, restarts, suspend."""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from typing import Any

import pytest

from tests.conftest import Local

pytestmark = pytest.mark.integration

BASE = {"name": "substratusai/base"}
HTTP = ["sh", "-c", "ls model > served.txt; exec python -m http.server $PORT --bind 127.0.0.1"]


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def server_pids(local: Local, name: str) -> list[int]:
    from substratus.runtimes.local.db import StateDB

    db = StateDB(local.paths.db)
    try:
        runs = db.runs(("Server", "default", name), role="service", phase="running")
        return [r.pid for r in runs if r.pid]
    finally:
        db.close()


@pytest.fixture
def model(local: Local) -> dict[str, Any]:
    local.apply("Model", "m", {"image": BASE, "command": ["sh", "-c", "echo w > artifacts/w"]})
    return local.wait("Model", "m")


def test_server_serves_the_model_on_its_own_port(local: Local, model: dict[str, Any]) -> None:
    local.apply("Server", "a", {"image": BASE, "command": HTTP, "model": {"name": "m"}})
    local.apply("Server", "b", {"image": BASE, "command": HTTP, "model": "m", "replicas": 2})
    a = local.wait("Server", "a")
    b = local.wait("Server", "b", lambda o: o["status"].get("replicas") == 2)
    assert a["status"]["url"] != b["status"]["url"]
    assert a["status"]["url"].startswith("http://127.0.0.1:")
    assert "served.txt" in get(a["status"]["url"] + "/")
    assert "w" in get(a["status"]["url"] + "/served.txt").split()  # model/ was mounted
    assert len(set(server_pids(local, "b"))) == 2


def test_crashed_server_is_restarted(local: Local, model: dict[str, Any]) -> None:
    local.apply("Server", "s", {"image": BASE, "command": HTTP, "model": "m"})
    local.wait("Server", "s")
    [pid] = server_pids(local, "s")
    os.killpg(pid, signal.SIGKILL)
    # Until the controller has seen the crash, the status may still be the killed replica's
    # (its URL, its port): read it again until a new replica answers where the status says.
    deadline = time.monotonic() + 30
    while True:
        obj = local.get("Server", "s")
        pids = server_pids(local, "s")
        try:
            if obj["status"].get("ready") and pids and pids != [pid]:
                page = get(obj["status"]["url"] + "/")
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, f"no new replica answered: {obj['status']}"
        time.sleep(0.2)
    assert "Hello" not in page


def test_server_that_keeps_crashing_reports_its_exit_code(
    local: Local, model: dict[str, Any]
) -> None:
    cmd = ["sh", "-c", "echo cannot load weights >&2; exit 4"]
    local.apply("Server", "s", {"image": BASE, "command": cmd, "model": "m"})
    obj = local.wait_reason("Server", "s", "CrashLoopBackOff")
    message = obj["status"]["conditions"][0]["message"]
    assert "code 4" in message and "cannot load weights" in message


def test_server_waits_for_its_model(local: Local) -> None:
    local.apply("Server", "s", {"image": BASE, "command": HTTP, "model": "later"})
    local.wait_reason("Server", "s", "ModelNotFound")
    local.apply("Model", "later", {"image": BASE, "command": ["sh", "-c", "sleep 0.3"]})
    local.wait_reason("Server", "s", "ModelNotReady")
    local.wait("Server", "s")


def test_notebook_token_suspend_and_resume(local: Local) -> None:
    cmd = [
        "sh",
        "-c",
        'printf %s "$NOTEBOOK_TOKEN" > token; echo ok > api; '
        "exec python -m http.server $PORT --bind 127.0.0.1",
    ]
    spec = {"image": BASE, "command": cmd}
    local.apply("Notebook", "nb", spec)
    nb = local.wait("Notebook", "nb")
    token = nb["status"]["token"]
    assert len(token) > 20
    assert get(nb["status"]["url"] + "/token") == token
    local.apply("Notebook", "nb", {**spec, "suspend": True})
    suspended = local.wait_reason("Notebook", "nb", "Suspended")
    assert "url" not in suspended["status"]
    deadline = time.monotonic() + 10
    while server_pids_nb(local) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server_pids_nb(local) == []
    local.apply("Notebook", "nb", spec)
    resumed = local.wait("Notebook", "nb")
    assert resumed["status"]["token"] == token


def server_pids_nb(local: Local) -> list[int]:
    from substratus.runtimes.local.db import StateDB

    db = StateDB(local.paths.db)
    try:
        runs = db.runs(("Notebook", "default", "nb"), phase="running")
        return [r.pid for r in runs if r.pid]
    finally:
        db.close()


def test_server_survives_a_supervisor_kill(local: Local, model: dict[str, Any]) -> None:
    local.apply("Server", "s", {"image": BASE, "command": HTTP, "model": "m"})
    url = local.wait("Server", "s")["status"]["url"]
    [pid] = server_pids(local, "s")
    local.kill_supervisor()
    assert "served.txt" in get(url + "/")  # still serving with no supervisor
    obj = local.wait("Server", "s")
    assert obj["status"]["url"] == url
    assert server_pids(local, "s") == [pid]  # adopted, not restarted


SHOW_HOST = [
    "sh",
    "-c",
    'printf %s "$HOST" > host.txt; echo ok > api; exec python -m http.server $PORT --bind "$HOST"',
]


def test_ambient_host_does_not_open_servers_to_the_network(
    local: Local, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Set before the first call, which starts the supervisor with this environment.
    monkeypatch.setenv("HOST", "0.0.0.0")
    monkeypatch.delenv("SUBSTRATUS_BIND_ADDRESS", raising=False)
    local.apply("Notebook", "nb", {"image": BASE, "command": SHOW_HOST})
    url = local.wait("Notebook", "nb", lambda o: o["status"].get("url"))["status"]["url"]
    assert url.startswith("http://127.0.0.1:")
    assert get(url + "/host.txt") == "127.0.0.1"


def test_bind_address_setting_is_used_and_reported(
    local: Local, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUBSTRATUS_BIND_ADDRESS", "127.0.0.2")  # any loopback address works
    local.apply("Notebook", "nb", {"image": BASE, "command": SHOW_HOST})
    url = local.wait("Notebook", "nb", lambda o: o["status"].get("url"))["status"]["url"]
    assert url.startswith("http://127.0.0.2:")
    assert get(url + "/host.txt") == "127.0.0.2"


def test_notebook_tokens_are_random(local: Local) -> None:
    cmd = ["sh", "-c", "echo ok > api; exec python -m http.server $PORT --bind 127.0.0.1"]
    local.apply("Notebook", "one", {"image": BASE, "command": cmd})
    local.apply("Notebook", "two", {"image": BASE, "command": cmd})
    one = local.wait("Notebook", "one")["status"]["token"]
    two = local.wait("Notebook", "two")["status"]["token"]
    local.client.delete("Notebook", "default", "one")
    local.apply("Notebook", "one", {"image": BASE, "command": cmd})
    again = local.wait("Notebook", "one")["status"]["token"]
    tokens = {one, two, again}
    assert len(tokens) == 3, "every notebook, and a re-created one, gets its own token"
    for token in tokens:
        assert len(token) >= 32 and len(set(token)) >= 12, token  # >= 192 bits, not a pattern
