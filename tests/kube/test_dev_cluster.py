"""`hack/dev-cluster.sh up|status|down`, as a person uses it: the printed line is eval-able,
`up` twice is harmless, the cluster has the real node, our CRDs, the toolbox image, a registry
that serves it to builds and a bucket, and `down` stops every process it started (the node's
teardown checks the host)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import urllib.request
from pathlib import Path

import boto3
import pytest

from tests.kube.cluster import REPO, find_kubectl
from tests.kube.hoststate import alive
from tests.kube.node import NODE_NAME, TOOLBOX_IMAGE, skip_unless_a_node_can_run

pytestmark = [pytest.mark.integration, pytest.mark.node_exclusive]


def dev_cluster(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "hack/dev-cluster.sh", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )


def descendants(pid: int) -> list[int]:
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parents.items() if pp in frontier]
        found += kids
        frontier = kids
    return found


def test_up_status_down(tmp_path: Path) -> None:
    skip_unless_a_node_can_run()
    state = tmp_path / "state"
    # No project images: loading them is the images' own tests' business (and slow).
    env = dict(
        os.environ,
        SUBSTRATUS_DEV_CLUSTER_DIR=str(state),
        SUBSTRATUS_IMAGE_CACHE=str(tmp_path / "no-images"),
    )
    # The operator's own tests run it; here it would first build its helper image.
    up = dev_cluster("up", "--no-operator", env=env)
    try:
        assert up.returncode == 0, up.stderr
        assert up.stdout == f"export KUBECONFIG={state / 'kubeconfig'}\n"
        again = dev_cluster("up", "--no-operator", env=env)
        assert again.returncode == 0 and again.stdout == up.stdout
        assert "already up" in again.stderr

        status = dev_cluster("status", env=env)
        assert status.returncode == 0, status.stderr
        info = json.loads((state / "cluster.json").read_text())
        assert f"registry     {info['registry']}" in status.stdout
        assert "operator     not run (--no-operator)" in status.stdout
        # etcd, the API server, controllers, kwok, registry, node, bucket, the node's reaper
        children = descendants(info["pid"])
        assert len(children) >= 8, children
        assert TOOLBOX_IMAGE in info["images"]

        kubectl = [str(find_kubectl()), f"--kubeconfig={state / 'kubeconfig'}"]
        nodes = json.loads(
            subprocess.run(
                [*kubectl, "get", "nodes", "-o", "json"], capture_output=True, check=True
            ).stdout
        )
        ready = {
            n["metadata"]["name"]
            for n in nodes["items"]
            if any(
                c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"]
            )
        }
        assert {NODE_NAME, "kwok-gpu-0"} <= ready
        crds = subprocess.run(
            [*kubectl, "get", "crd", "-o", "name"], capture_output=True, text=True, check=True
        )
        assert "models.substratus.ai" in crds.stdout
        # The registry is on the node's address (build pods push there) and serves what the
        # node loaded, for a build's FROM substratus.local/toolbox:latest (through a mirror).
        assert info["registry"].startswith(f"{info['node_ip']}:")
        assert "toolbox:latest" in info["served"]
        with urllib.request.urlopen(f"http://{info['registry']}/v2/toolbox/tags/list") as r:
            assert json.load(r)["tags"] == ["latest"]
        bucket = info["bucket"]
        s3 = boto3.client(
            "s3",
            endpoint_url=bucket["AWS_ENDPOINT_URL_S3"],
            aws_access_key_id=bucket["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=bucket["AWS_SECRET_ACCESS_KEY"],
            region_name=bucket["AWS_DEFAULT_REGION"],
        )
        s3.put_object(Bucket=bucket["url"].removeprefix("s3://"), Key="hello", Body=b"hi")
    finally:
        down = dev_cluster("down", env=env)
    assert down.returncode == 0, down.stderr
    assert not [p for p in [info["pid"], *children] if alive(p)], "processes still running"
    assert dev_cluster("status", env=env).stdout == "down\n"
    assert dev_cluster("down", env=env).stderr.strip() == "not running"
