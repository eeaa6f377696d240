"""The notebook workload: a real JupyterLab started as the runtime starts it, over loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from substratus.workloads import notebook

TOKEN = "test-token-" + uuid.uuid4().hex
MODULE = "substratus.workloads.notebook"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def contract_dir(base: Path) -> Path:
    """A run directory: model/ a real dir, data/ a symlink (as the local runtime makes it)."""
    root = base / "run"
    (root / "model").mkdir(parents=True)
    (root / "model" / "weights.txt").write_text("tiny weights\n")
    outside = base / "dataset"
    outside.mkdir()
    (outside / "train.jsonl").write_text('{"text": "hello"}\n')
    (root / "data").symlink_to(outside, target_is_directory=True)
    (root / "artifacts").mkdir()
    (root / "params.json").write_text("{}")
    return root


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    port: int
    root: Path
    home: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"token {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def notebook_env(home: Path, port: int, token: str | None = TOKEN) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "NOTEBOOK_"))}
    env.pop("IPYTHONDIR", None)
    # HOME and TMPDIR private to the test: what Jupyter writes where is checked.
    env.update({"HOME": str(home), "TMPDIR": str(home.parent), "PORT": str(port)})
    env["HOST"] = "127.0.0.1"
    if token is not None:
        env["NOTEBOOK_TOKEN"] = token
    return env


def start(base: Path, port: int | None = None) -> Running:
    root = contract_dir(base)
    home = base / "home"
    home.mkdir()
    port = port or free_port()
    log = base / "notebook.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", MODULE],
            cwd=root,
            env=notebook_env(home, port),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Running(proc, port, root, home, log)


def wait_ready(nb: Running, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if nb.proc.poll() is not None:
            pytest.fail(f"notebook exited with {nb.proc.returncode}:\n{nb.logs()}")
        try:
            if httpx.get(f"{nb.url}/api", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"notebook not ready in {timeout}s:\n{nb.logs()}")


def stop(nb: Running) -> None:
    if nb.proc.poll() is None:
        nb.proc.send_signal(signal.SIGTERM)
        try:
            nb.proc.wait(15)
        except subprocess.TimeoutExpired:
            nb.proc.kill()
            nb.proc.wait()


@pytest.fixture(scope="module")
def nb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    running = start(tmp_path_factory.mktemp("notebook"))
    try:
        wait_ready(running)
        yield running
    finally:
        stop(running)


def execute(nb: Running, kernel_id: str, code: str, timeout: float = 30) -> str:
    """Run code in a kernel over its websocket (Jupyter's JSON protocol); returns stdout."""
    import websocket  # websocket-client, a dependency of jupyter_server

    session = uuid.uuid4().hex
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{nb.port}/api/kernels/{kernel_id}/channels?session_id={session}",
        header=[f"Authorization: token {TOKEN}"],
        timeout=timeout,
    )
    try:
        msg_id = uuid.uuid4().hex
        ws.send(
            json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "username": "test",
                        "session": session,
                        "msg_type": "execute_request",
                        "version": "5.3",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "content": {
                        "code": code,
                        "silent": False,
                        "store_history": False,
                        "user_expressions": {},
                        "allow_stdin": False,
                        "stop_on_error": True,
                    },
                    "channel": "shell",
                    "buffers": [],
                }
            )
        )
        out: list[str] = []
        reply: dict[str, Any] | None = None
        idle = False
        deadline = time.monotonic() + timeout
        while (reply is None or not idle) and time.monotonic() < deadline:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            if kind == "stream":
                out.append(msg["content"]["text"])
            elif kind == "error":
                pytest.fail("kernel error: " + "\n".join(msg["content"]["traceback"]))
            elif kind == "execute_reply":
                reply = msg["content"]
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
        assert reply is not None and reply["status"] == "ok", reply
        return "".join(out)
    finally:
        ws.close()


# -- refusals (fast: Jupyter is never started) ---------------------------------------------


@pytest.mark.parametrize("token", [None, "", "   "])
def test_refuses_to_start_without_a_token(tmp_path: Path, token: str | None) -> None:
    env = notebook_env(tmp_path, free_port(), token=token)
    done = subprocess.run(
        [sys.executable, "-m", MODULE], cwd=tmp_path, env=env, capture_output=True, timeout=30
    )
    assert done.returncode == 2
    err = done.stderr.decode()
    assert "NOTEBOOK_TOKEN is not set" in err and "without a token" in err
    assert "Traceback" not in err
    assert not list(tmp_path.glob(".jupyter*"))


def test_refuses_arguments(tmp_path: Path) -> None:
    env = notebook_env(tmp_path, free_port())
    done = subprocess.run(
        [sys.executable, "-m", MODULE, "--IdentityProvider.token="],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "takes no arguments" in done.stderr.decode()


def test_command_line_carries_no_secret_and_turns_off_network_features(tmp_path: Path) -> None:
    cmd = notebook.jupyter_command(tmp_path, "127.0.0.1", 9999)
    assert cmd[1:3] == ["-m", "jupyterlab"]
    assert not any(TOKEN in arg or "token" in arg.lower() for arg in cmd)
    assert "--ServerApp.port_retries=0" in cmd
    assert "--LabApp.news_url=None" in cmd
    assert "--LabApp.extension_manager=readonly" in cmd
    env = notebook.jupyter_env(TOKEN, tmp_path / "state", {"HOME": "/home/u"})
    assert env["JUPYTER_TOKEN"] == TOKEN
    for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        assert env[var].startswith(str(tmp_path / "state")), var


# -- a real JupyterLab -------------------------------------------------------------------


@pytest.mark.integration
def test_api_answers_200_without_a_token(nb: Running) -> None:
    r = httpx.get(f"{nb.url}/api", timeout=5)
    assert r.status_code == 200
    assert "version" in r.json()
    # "/" is a redirect to the lab UI, which is why the readiness probe uses /api.
    root = httpx.get(f"{nb.url}/", timeout=5)
    assert root.status_code == 302 and "/lab" in root.headers["location"]


@pytest.mark.integration
def test_contents_need_the_token_and_show_model_and_data(nb: Running) -> None:
    with nb.client(token=None) as anon:
        assert anon.get("/api/contents").status_code in (401, 403)
        assert anon.get("/api/kernels").status_code in (401, 403)
    with nb.client(token="wrong") as bad:
        assert bad.get("/api/contents").status_code in (401, 403)
    with nb.client() as c:
        listing = c.get("/api/contents")
        assert listing.status_code == 200
        names = {item["name"]: item["type"] for item in listing.json()["content"]}
        assert names.get("model") == "directory" and names.get("data") == "directory"
        model = c.get("/api/contents/model").json()
        assert [i["name"] for i in model["content"]] == ["weights.txt"]
        data = c.get("/api/contents/data").json()  # a symlink to a directory outside the root
        assert [i["name"] for i in data["content"]] == ["train.jsonl"]
        text = c.get("/api/contents/model/weights.txt", params={"content": 1}).json()
        assert text["content"] == "tiny weights\n"


@pytest.mark.integration
def test_lab_page_renders_with_network_features_off(nb: Running) -> None:
    with nb.client(token=None) as anon:
        assert anon.get("/lab").status_code in (302, 401, 403)
    with nb.client() as c:
        page = c.get("/lab")
        assert page.status_code == 200
        text = page.text
        assert '"news": {"disabled": true}' in text
        assert '"can_install": false' in text and '"name": "read-only"' in text
        assert c.get("/lab/api/news").json() == {"news": []}
        assert c.get("/lab/api/update").json() == {"notification": None}
        settings = c.get("/lab/api/settings/@jupyterlab/apputils-extension:notification").json()
        assert settings["settings"]["fetchNews"] == "false"


@pytest.mark.integration
def test_kernel_runs_code_in_the_working_directory(nb: Running) -> None:
    with nb.client() as c:
        started = c.post("/api/kernels", json={"name": "python3"})
        assert started.status_code == 201, started.text
        kernel_id = started.json()["id"]
        try:
            assert kernel_id in {k["id"] for k in c.get("/api/kernels").json()}
            out = execute(
                nb,
                kernel_id,
                "import os, sys\n"
                "print(os.getcwd())\n"
                "print(open('model/weights.txt').read().strip())\n"
                "print(sys.executable)\n",
            )
            cwd, weights, python = out.splitlines()
            assert Path(cwd) == nb.root.resolve()
            assert weights == "tiny weights"
            assert Path(python).parent == Path(sys.executable).parent
            # A notebook saved through the API lands in artifacts/ on disk.
            doc = {
                "type": "notebook",
                "content": {
                    "cells": [],
                    "metadata": {},
                    "nbformat": 4,
                    "nbformat_minor": 5,
                },
            }
            assert c.put("/api/contents/artifacts/hello.ipynb", json=doc).status_code == 201
            assert json.loads((nb.root / "artifacts" / "hello.ipynb").read_text())["nbformat"] == 4
        finally:
            assert c.delete(f"/api/kernels/{kernel_id}").status_code == 204


@pytest.mark.integration
def test_jupyter_state_stays_out_of_home(nb: Running) -> None:
    assert httpx.get(f"{nb.url}/api", timeout=5).status_code == 200
    leaked = sorted(p.name for p in nb.home.iterdir())
    assert leaked == [], leaked
    assert not (nb.root / ".jupyter").exists()
    # ...but in a private directory under $TMPDIR.
    (state,) = nb.home.parent.glob("substratus-notebook-*")
    assert (state / "runtime" / "jupyter_cookie_secret").exists()
    assert state.stat().st_mode & 0o077 == 0


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.integration
def test_sigterm_stops_server_and_kernels_promptly(tmp_path: Path, nb: Running) -> None:
    # A second notebook beside the first one: private state, so no collision.
    second = start(tmp_path)
    try:
        wait_ready(second)
        with second.client() as c:
            assert c.post("/api/kernels", json={"name": "python3"}).status_code == 201
        deadline = time.monotonic() + 20
        while not (kernels := _children(second.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert kernels, "no kernel process under the notebook"
        began = time.monotonic()
        second.proc.send_signal(signal.SIGTERM)  # the exec'd Jupyter itself gets it
        second.proc.wait(10)
        took = time.monotonic() - began
        assert took < 10
        deadline = time.monotonic() + 5
        while any(_alive(k) for k in kernels) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(k) for k in kernels), "kernel outlived the notebook"
    finally:
        stop(second)
    # The first notebook was not disturbed.
    assert httpx.get(f"{nb.url}/api", timeout=5).status_code == 200


@pytest.mark.integration
def test_busy_port_fails_instead_of_moving(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        nb = start(tmp_path, port=port)
        try:
            assert nb.proc.wait(60) != 0
        finally:
            stop(nb)
    assert str(port) in nb.logs()


@pytest.mark.parametrize("with_ipykernel", [False, True])
def test_the_kernel_runs_in_the_images_environment(
    tmp_path: Path, with_ipykernel: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build's venv (here: one with a package only it has) is what the kernel imports."""
    import sysconfig

    from jupyter_client.kernelspec import KernelSpecManager

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import site; print(site.getsitepackages()[0])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "only_in_the_build.py").write_text("ANSWER = 42\n")
    if with_ipykernel:  # the venv sees this environment's packages, ipykernel among them
        (Path(site) / "platform.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    state = tmp_path / "state"
    notebook.prepare_state(state)
    note = notebook.write_kernel_spec(state, str(python))
    for key, value in notebook.jupyter_env("t", state, {}).items():
        monkeypatch.setenv(key, value)  # the Jupyter server's view of the kernels
    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.argv[0] == (str(python) if with_ipykernel else sys.executable), note
    env = {**os.environ, **spec.env}
    done = subprocess.run(
        [spec.argv[0], "-c", "import ipykernel, only_in_the_build as m; print(m.ANSWER)"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert done.stdout.strip() == "42", done.stderr
