"""The design's notebook loop on the local runtime, end to end, as a user runs it: `sub notebook`
on a directory of training code (its model.yaml names a tiny model and dataset, imported for
real), a real JupyterLab opened in a real browser (headless Chromium: the user's file is in the
file browser), real edits on both sides, Ctrl-C (the notebook's files come back, the Notebook is
suspended, a trainer manifest is written), and that manifest applied: the code trains the tiny
model to Ready."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import pytest

from substratus.cli.notebook.sides import JupyterTree
from tests.browser import browse, chromium
from tests.conftest import Local
from tests.workloads.tiny import make_tiny_llama

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

TRAIN_PY = """\
# The user's training code: here it runs the built-in trainer on model/ and data/.
import runpy

runpy.run_module("substratus.workloads.trainer", run_name="__main__")
"""
MODEL_YAML = """\
apiVersion: substratus.ai/v1
kind: Model
metadata:
  name: tiny-tuned
spec:
  image:
    upload: {}
  baseModel: {name: tiny}
  trainingDataset: {name: tiny-data}
  params: {epochs: 1, max_steps: 2, batch_size: 2}
  command: [python, train.py]
"""


def read_until(stream: IO[str], predicate: object, timeout: float, seen: list[str]) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if callable(predicate) and predicate(line):
            return line.strip()
    raise AssertionError("no such line in sub notebook's output:\n" + "".join(seen))


def arrives(read: object, text: str, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if callable(read) and read() == text:
                return True
        except Exception:
            pass
        time.sleep(0.02)
    return False


def test_sub_notebook_on_a_directory_round_trip_to_a_trained_model(
    local: Local, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if chromium() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (hack/setup.sh --test installs it as root)")
        pytest.skip("chromium is not installed")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    weights = make_tiny_llama(tmp_path / "tiny-llama")
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"text": f"row {i} of the data"}) + "\n" for i in range(8)))
    loader = {"name": "substratusai/model-loader-huggingface"}
    local.apply("Model", "tiny", {"image": loader, "params": {"url": str(weights)}})
    local.apply(
        "Dataset",
        "tiny-data",
        {"image": {"name": "substratusai/dataset-loader"}, "params": {"urls": str(data)}},
    )
    local.wait("Model", "tiny", timeout=300)
    local.wait("Dataset", "tiny-data", timeout=300)

    code = tmp_path / "my-trainer"
    code.mkdir()
    (code / "train.py").write_text(TRAIN_PY)
    (code / "model.yaml").write_text(MODEL_YAML)
    (code / "notes.md").write_text("first notes\n")

    proc = subprocess.Popen(
        [sys.executable, "-m", "substratus.cli.main", "notebook", "-f", str(code),
         "--no-browser", "--trainer"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        url = read_until(proc.stdout, lambda s: s.startswith("http://"), 300, seen)
        read_until(proc.stdout, lambda s: s.startswith("Ctrl-C to stop"), 30, seen)
        nb = local.get("Notebook", "my-trainer")
        assert nb["spec"]["model"] == {"name": "tiny"}
        assert nb["spec"]["dataset"] == {"name": "tiny-data"}
        token = nb["status"]["token"]
        assert url == f"{nb['status']['url']}/lab?token={token}"
        jupyter = JupyterTree(nb["status"]["url"], token)
        # The model the directory's model.yaml names is mounted.
        assert "config.json" in jupyter._request("GET", "model", params={"content": "1"}).text

        # A real browser on the printed URL shows the user's file in JupyterLab's file browser.
        screenshot = tmp_path / "jupyterlab.png"
        dom = browse(url, screenshot)
        assert screenshot.stat().st_size > 10_000
        assert '<span class="jp-DirListing-itemText"' in dom or "jp-DirListing-itemText" in dom
        assert ">train.py<" in dom.replace("<span>", ">").replace("</span>", "<"), dom[-2000:]

        # Edits on either side reach the other within a second.
        (code / "notes.md").write_text("edited here\n")
        assert arrives(lambda: jupyter.read("notes.md").decode(), "edited here\n", 1.0)
        jupyter.write("analysis.ipynb", json.dumps({"cells": [], "nbformat": 4}).encode())
        jupyter.write("train.py", (TRAIN_PY + "# tuned in the notebook\n").encode())
        assert arrives(lambda: (code / "analysis.ipynb").exists() and "ok", "ok", 1.0)
        assert arrives(
            lambda: (code / "train.py").read_text(), TRAIN_PY + "# tuned in the notebook\n", 1.0
        )
        # The last change before Ctrl-C comes back too.
        jupyter.write("last.py", b"print('last')\n")
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
        seen.append(rest)
        output = "".join(seen)
        assert proc.returncode == 0, output
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (code / "last.py").read_text() == "print('last')\n"
    assert "notebook/my-trainer suspended" in output
    nb = local.get("Notebook", "my-trainer")
    assert nb["spec"]["suspend"] is True

    # The trainer manifest: the notebook's model, dataset and params, the directory's code.
    [manifest] = sorted(code.glob("model-*.yaml"))
    assert f"wrote {manifest}" in output.replace("\n", "")
    import yaml

    body = yaml.safe_load(manifest.read_text())
    assert body["spec"]["baseModel"] == {"name": "tiny"}
    assert body["spec"]["trainingDataset"] == {"name": "tiny-data"}
    assert body["spec"]["command"] == ["python", "train.py"]
    assert body["spec"]["params"]["max_steps"] == 2
    done = subprocess.run(
        [sys.executable, "-m", "substratus.cli.main", "apply", "-f", str(manifest),
         "--wait", "--timeout", "10m"],
        capture_output=True,
        text=True,
        timeout=700,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    model = local.get("Model", body["metadata"]["name"])
    assert model["status"]["ready"] is True
    assert any(f.endswith("adapter_model.safetensors") or f.endswith("model.safetensors")
               for f in model["status"]["files"]), model["status"]  # fmt: skip
