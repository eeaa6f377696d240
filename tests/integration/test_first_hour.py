"""A newcomer's first hour on the local runtime: waiting never hangs, reading has no side
effects, deleting what a running workload uses is safe, an uploaded notebook just runs."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from substratus.runtimes.local.client import supervisor_running
from tests.conftest import Local
from tests.integration.test_cli import apply_project, sub, write

pytestmark = pytest.mark.integration

BASE = {"name": "substratusai/base"}
HTTP = ["sh", "-c", "exec python -m http.server $PORT --bind 127.0.0.1"]
CRASH = """\
apiVersion: substratus.ai/v1
kind: Server
metadata: {name: crashy}
spec:
  image: {name: substratusai/base}
  model: m
  command: [sh, -c, "echo loading; echo line-after-the-tail-marker >&2; exit 3"]
"""


@pytest.fixture
def model(local: Local) -> dict[str, Any]:
    local.apply("Model", "m", {"image": BASE, "command": ["sh", "-c", "echo w > artifacts/w"]})
    return local.wait("Model", "m")


def test_wait_fails_fast_on_a_crash_loop_with_the_whole_reason(
    local: Local, model: dict[str, Any]
) -> None:
    # A wait that hung until its 10 minutes ran out would overrun sub()'s 120 s limit.
    r = sub("apply", "-f", "-", "--wait", "--timeout", "10m", input=CRASH)
    assert r.returncode == 1, r.stderr
    assert "CrashLoopBackOff" in r.stderr and "exited with code 3" in r.stderr
    # The log tail is printed, not cut at "log tail:".
    assert "line-after-the-tail-marker" in r.stderr
    r = sub("wait", "server/crashy", "--timeout", "30s")
    assert r.returncode == 1 and "line-after-the-tail-marker" in r.stderr


def test_a_timeout_says_what_it_was_waiting_on(local: Local) -> None:
    local.apply("Model", "slow", {"image": BASE, "command": ["sleep", "30"]})
    r = sub("wait", "model/slow", "--timeout", "2s")
    assert r.returncode == 5
    assert "timed out" in r.stderr and "JobRunning" in r.stderr


def test_reading_commands_do_not_start_the_supervisor(local: Local) -> None:
    for args in (["get"], ["get", "model/x"], ["describe", "model/x"], ["logs", "model/x"]):
        r = sub(*args)
        assert r.returncode == 6, (args, r.stdout, r.stderr)
        assert "not running" in r.stderr and "sub local start" in r.stderr
    assert sub("wait", "model/x", "--timeout", "1s").returncode == 6
    assert sub("delete", "model/x").returncode == 6
    # A bad manifest is refused here, before anything is started for it.
    bad = "apiVersion: substratus.ai/v1\nkind: Model\nmetadata: {name: b}\nspec: {image: 3}\n"
    r = sub("apply", "-f", "-", input=bad)
    assert r.returncode == 4 and "spec.image" in r.stderr, r.stderr
    assert not supervisor_running(local.paths)
    r = sub("local", "start")
    assert r.returncode == 0 and "started" in r.stdout
    assert supervisor_running(local.paths)
    r = sub("local", "start")
    assert r.returncode == 0 and "already running" in r.stdout
    assert sub("get").returncode == 0


def test_deleting_a_model_a_server_mounts_keeps_its_files_until_the_server_stops(
    local: Local, model: dict[str, Any]
) -> None:
    local.apply("Server", "s", {"image": BASE, "command": HTTP, "model": "m"})
    url = local.wait("Server", "s")["status"]["url"]
    version = Path(model["status"]["url"].removeprefix("file://"))
    r = sub("delete", "model/m")
    assert r.returncode == 0, r.stderr
    assert "model/m deleted" in r.stdout and "still mounted by server/s" in r.stdout
    # The server's model/ still holds the files, and it still serves them.
    assert (version / "w").read_text() == "w\n"
    with urllib.request.urlopen(url + "/model/w", timeout=5) as resp:
        assert resp.read() == b"w\n"
    assert sub("get", "server/s").returncode == 0
    assert sub("delete", "server/s").returncode == 0
    deadline = time.monotonic() + 10
    while version.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not version.exists()  # the retired version went with its last user


def test_an_uploaded_notebook_without_a_command_runs_jupyter(local: Local, tmp_path: Path) -> None:
    pytest.importorskip("jupyterlab")
    r = apply_project(
        tmp_path / "project",
        {"train.py": "print('hello from the upload')\n"},
        "kind: Notebook\nmetadata: {name: nb}\nspec: {image: {upload: {}}}\n",
    )
    assert r.returncode == 0, r.stderr
    nb = local.get("Notebook", "nb")
    token = nb["status"]["token"]
    request = urllib.request.Request(
        nb["status"]["url"] + "/api/contents/train.py", headers={"Authorization": f"token {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert b"hello from the upload" in resp.read()


def test_an_uploaded_server_without_a_command_names_the_field(
    local: Local, tmp_path: Path, model: dict[str, Any]
) -> None:
    r = apply_project(
        tmp_path / "project",
        {"serve.py": "print('no entrypoint')\n"},
        "kind: Server\nmetadata: {name: up}\nspec: {image: {upload: {}}, model: m}\n",
        timeout="60s",
    )
    assert r.returncode == 1
    assert "StartFailed" in r.stderr and "spec.command: required" in r.stderr


NOTEBOOK = """\
apiVersion: substratus.ai/v1
kind: Notebook
metadata: {{name: nb}}
spec:
  suspend: {suspend}
  image: {{upload: {{}}}}
  command:
  - sh
  - -c
  - echo start >> starts.txt; echo ok > api; exec python -m http.server $PORT --bind 127.0.0.1
"""


def test_a_notebook_keeps_what_was_saved_across_suspend_and_new_uploads(
    local: Local, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    write(project / "notes.txt", "v1\n")

    def apply(suspend: bool) -> str:
        write(project / "nb.yaml", NOTEBOOK.format(suspend=str(suspend).lower()))
        r = sub("apply", "-f", str(project / "nb.yaml"))
        assert r.returncode == 0, r.stderr
        if suspend:
            local.wait_reason("Notebook", "nb", "Suspended")
            return ""
        return str(local.wait("Notebook", "nb", timeout=60)["status"]["url"])

    def fetch(url: str, path: str) -> str:
        with urllib.request.urlopen(f"{url}/{path}", timeout=5) as resp:
            return str(resp.read().decode())

    url = apply(suspend=False)
    assert fetch(url, "starts.txt") == "start\n"
    apply(suspend=True)
    url = apply(suspend=False)
    assert fetch(url, "starts.txt") == "start\nstart\n"  # the saved file survived
    assert fetch(url, "notes.txt") == "v1\n"
    # A new upload: its files replace the old build's, the user's own stay.
    write(project / "notes.txt", "v2\n")
    write(project / "new" / "added.txt", "added\n")
    url = apply(suspend=False)
    assert fetch(url, "notes.txt") == "v2\n" and fetch(url, "new/added.txt") == "added\n"
    assert fetch(url, "starts.txt") == "start\nstart\nstart\n"
    (project / "new" / "added.txt").unlink()  # a file the next build no longer has goes
    url = apply(suspend=False)
    with pytest.raises(urllib.error.HTTPError):
        fetch(url, "new/added.txt")
    assert fetch(url, "starts.txt") == "start\nstart\nstart\nstart\n"
