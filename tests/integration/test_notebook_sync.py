"""Two-way sync between a directory and a real JupyterLab (the notebook workload, over loopback),
through Jupyter Server's contents API as `sub notebook` does it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from substratus.cli.notebook.sides import JupyterTree, LocalTree
from substratus.cli.notebook.sync import Syncer, SyncLoop
from tests.workloads.test_notebook import TOKEN, Running, start, stop, wait_ready


@pytest.fixture
def nb(tmp_path: Path) -> Iterator[Running]:
    running = start(tmp_path / "nb")
    try:
        wait_ready(running)
        yield running
    finally:
        stop(running)


def make_syncer(nb: Running, local: Path, base: Path, said: list[str]) -> Syncer:
    return Syncer(
        LocalTree(local, max_bytes=1024), JupyterTree(nb.url, TOKEN, 1024), base, said.append
    )


def test_files_travel_both_ways_and_what_is_not_the_users_stays(
    nb: Running, tmp_path: Path
) -> None:
    local = tmp_path / "code"
    (local / "pkg").mkdir(parents=True)
    (local / "train.py").write_text("print('train')\n")
    (local / "pkg" / "util.py").write_text("X = 1\n")
    (local / ".env").write_text("SECRET=1\n")  # hidden: never synced
    (local / "data").mkdir()  # the contract's directory in the notebook: never synced
    (local / "data" / "mine.csv").write_text("a,b\n")
    (local / "big.bin").write_bytes(b"x" * 2048)  # over max_bytes
    (local / "venv").mkdir()
    (local / "venv" / "lib.py").write_text("")
    (local / ".dockerignore").write_text("venv\n")
    said: list[str] = []
    syncer = make_syncer(nb, local, tmp_path / "base.json", said)

    first = syncer.sync_once()
    assert sorted(first.pushed) == ["pkg/util.py", "train.py"]
    assert (nb.root / "train.py").read_text() == "print('train')\n"
    assert (nb.root / "pkg" / "util.py").read_text() == "X = 1\n"
    for absent in (".env", "big.bin", "venv", ".dockerignore"):
        assert not (nb.root / absent).exists(), absent
    assert not (nb.root / "data" / "mine.csv").exists()
    # The notebook's own contract files never come back.
    assert not (local / "params.json").exists() and not (local / "artifacts").exists()
    assert said == ["not synced: big.bin is larger than 0 MiB"]
    assert not syncer.sync_once().changed()  # nothing moved: nothing to do

    # Edits in the notebook (through Jupyter, as the browser makes them) come back.
    remote = JupyterTree(nb.url, TOKEN)
    remote.write("analysis.ipynb", json.dumps({"cells": [], "nbformat": 4}).encode())
    remote.write("train.py", b"print('tuned')\n")
    (local / "pkg" / "util.py").unlink()
    result = syncer.sync_once()
    assert sorted(result.pulled) == ["analysis.ipynb", "train.py"]
    assert result.deleted_remote == ["pkg/util.py"]
    assert (local / "train.py").read_text() == "print('tuned')\n"
    assert json.loads((local / "analysis.ipynb").read_text())["nbformat"] == 4
    assert not (nb.root / "pkg" / "util.py").exists()
    remote.delete("analysis.ipynb")
    assert syncer.sync_once().deleted_local == ["analysis.ipynb"]
    assert not (local / "analysis.ipynb").exists()


def test_conflicting_edits_keep_both_versions_and_say_so(nb: Running, tmp_path: Path) -> None:
    local = tmp_path / "code"
    local.mkdir()
    (local / "train.py").write_text("v1\n")
    said: list[str] = []
    syncer = make_syncer(nb, local, tmp_path / "base.json", said)
    syncer.sync_once()
    (local / "train.py").write_text("mine\n")
    JupyterTree(nb.url, TOKEN).write("train.py", b"theirs\n")
    result = syncer.sync_once()
    [(path, copy)] = result.conflicts
    assert path == "train.py" and copy.startswith("train.notebook-conflict-")
    assert (local / "train.py").read_text() == "mine\n"
    assert (local / copy).read_text() == "theirs\n"
    assert (nb.root / "train.py").read_text() == "mine\n"
    assert (nb.root / copy).read_text() == "theirs\n"
    assert any(line.startswith("conflict: train.py") and copy in line for line in said)
    assert not syncer.sync_once().changed()


def test_the_base_outlives_the_session_so_deletions_are_not_undone(
    nb: Running, tmp_path: Path
) -> None:
    local = tmp_path / "code"
    local.mkdir()
    (local / "keep.py").write_text("k\n")
    (local / "drop.py").write_text("d\n")
    base = tmp_path / "base.json"
    make_syncer(nb, local, base, []).sync_once()
    assert sorted(json.loads(base.read_text())["files"]) == ["drop.py", "keep.py"]
    (local / "drop.py").unlink()  # while the notebook was closed
    result = make_syncer(nb, local, base, []).sync_once()
    assert result.deleted_remote == ["drop.py"]
    assert not (nb.root / "drop.py").exists()
    assert (local / "keep.py").exists()


def arrives(path: Path, text: str, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if path.exists() and path.read_text() == text:  # Jupyter writes in place
            return True
        time.sleep(0.02)
    return False


def test_the_loop_carries_edits_within_a_second_and_rides_out_an_outage(
    nb: Running, tmp_path: Path
) -> None:
    local = tmp_path / "code"
    local.mkdir()
    said: list[str] = []
    syncer = make_syncer(nb, local, None, said)
    loop = SyncLoop(syncer, said.append)
    loop.start()
    try:
        (local / "live.py").write_text("1\n")
        assert arrives(nb.root / "live.py", "1\n", within=1.0)
        JupyterTree(nb.url, TOKEN).write("back.py", b"2\n")
        assert arrives(local / "back.py", "2\n", within=1.0)
        syncer.remote.http.headers["Authorization"] = "token wrong"
        syncer.remote.http.cookies.clear()  # Jupyter's login cookie would still let it in
        deadline = time.monotonic() + 5
        while not any("retrying" in s for s in said) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any("403" in s and "retrying" in s for s in said), said
        syncer.remote.http.headers["Authorization"] = f"token {TOKEN}"
        deadline = time.monotonic() + 5
        while "sync: the notebook answers again" not in said and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "sync: the notebook answers again" in said
    finally:
        loop.stop()
