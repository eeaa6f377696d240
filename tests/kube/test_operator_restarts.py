"""The operator killed (SIGKILL) twenty times while Models are on their way, on the real node:
each kill lands while some Model is being started (ConfigMap applied, Job being created), runs,
or is committing, and while status is being written. After the last restart every Model is
Ready from its committed manifest, with exactly one Job (no attempt started twice, none lost).

The restarted operator has the same identity (``POD_NAME``, as a container restarting in its
pod), so it takes its Lease back at once rather than waiting for it to expire."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.kube.cluster import Proc
from tests.kube.node import TOOLBOX_IMAGE, RealNode
from tests.kube.operatorproc import (
    apply,
    node_settings,
    read,
    start_operator,
    stop_operator,
    wait_for,
)

pytestmark = pytest.mark.integration

KILLS = 20


def jobs_of(kube_node: RealNode, ns: str) -> dict[str, list[str]]:
    out = kube_node.plane.kubectl("get", "jobs", "-n", ns, "-o", "json").stdout
    by_model: dict[str, list[str]] = {}
    for job in json.loads(out)["items"]:
        owner = job["metadata"]["annotations"]["substratus.ai/object-name"]
        by_model.setdefault(owner, []).append(job["metadata"]["name"])
    return by_model


def test_killed_twenty_times_mid_flight_the_operator_converges(
    kube_node: RealNode,
    substratus_crds: list[str],
    operator_image: str,
    node_bucket: Any,
    kube_namespace: str,
    tmp_path: Path,
) -> None:
    plane, ns = kube_node.plane, kube_namespace
    settings = node_settings(node_bucket, operator_image, POD_NAME="substratus-operator-0")
    rng = random.Random(20)
    # What each kill interrupted: the state of the Models in flight a moment before.
    seen: Counter[str] = Counter()
    (tmp_path / "run-0").mkdir()
    proc: Proc = start_operator(plane, tmp_path / "run-0", settings)
    config = tmp_path / "run-0" / "operator-kubeconfig"  # the same token for each restart
    try:
        for i in range(KILLS):
            model = {
                "image": {"name": TOOLBOX_IMAGE},
                "command": ["sh", "-c", f"sleep {rng.uniform(0, 2):.1f}; echo {i} > artifacts/i"],
            }
            apply(plane, ns, "Model", f"m{i}", model)
            time.sleep(rng.uniform(0.05, 1.5))
            for phase in _phases(kube_node, ns):
                seen[phase] += 1
            proc.kill()
            (tmp_path / f"run-{i + 1}").mkdir()
            proc = start_operator(plane, tmp_path / f"run-{i + 1}", settings, kubeconfig=config)
        for i in range(KILLS):
            done = wait_for(plane, proc, ns, "Model", f"m{i}", "Succeeded", timeout=300)
            status = done["status"]
            assert status["url"].endswith(f"/{ns}/models/m{i}/g1-a1-k8s/"), status
            assert status["files"] == ["i"]
            assert read(node_bucket, status["url"] + "i") == f"{i}\n".encode()
        assert jobs_of(kube_node, ns) == {f"m{i}": [f"m{i}-model-g1-a1"] for i in range(KILLS)}
    finally:
        stop_operator(proc)
    # The kills did land mid-flight (a record for the log, the states vary from run to run).
    print(f"states of the Models in flight at the kills: {dict(seen)}")
    assert seen["running"] + seen["committing"] > 0


def _phases(kube_node: RealNode, ns: str) -> list[str]:
    """For each Model not yet Ready: no Job yet, running, committing (its command has exited,
    the committer works) or committed (the Job is Complete, the status not yet written)."""
    kubectl = kube_node.plane.kubectl
    models = json.loads(kubectl("get", "models", "-n", ns, "-o", "json").stdout)["items"]
    jobs = json.loads(kubectl("get", "jobs", "-n", ns, "-o", "json").stdout)["items"]
    pods = json.loads(kubectl("get", "pods", "-n", ns, "-o", "json").stdout)["items"]
    complete = {
        j["metadata"]["annotations"]["substratus.ai/object-name"]
        for j in jobs
        if any(c["type"] == "Complete" for c in j.get("status", {}).get("conditions", []))
    }
    started = {j["metadata"]["annotations"]["substratus.ai/object-name"] for j in jobs}
    exited = {
        p["metadata"]["labels"]["substratus.ai/name"]
        for p in pods
        for cs in p.get("status", {}).get("containerStatuses", [])
        if cs["name"] == "main" and "terminated" in cs.get("state", {})
    }
    out = []
    for m in models:
        conditions = (m.get("status") or {}).get("conditions", [])
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            continue
        name = m["metadata"]["name"]
        if name in complete:
            out.append("committed")
        elif name in exited:
            out.append("committing")
        elif name in started:
            out.append("running")
        else:
            out.append("no Job yet")
    return out
