"""The real node leaves the machine as it found it: after a normal stop, and after the test
process is killed (``kill -9``), when its reaper does the same teardown.

Each case runs a whole cluster with a real node in a child process (one node per machine, so
these tests run first, before the session's ``kube_node``): a pod with a hostPort behind a
Service makes the kubelet, containerd, the CNI plugins and kube-proxy change the host (cgroups,
a bridge, a network namespace, iptables chains, sysctls, mounts), then the host is compared with
a snapshot taken before.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.kube import hoststate
from tests.kube.cluster import REPO
from tests.kube.node import BRIDGE, NETWORK, find_node_parts, skip_unless_a_node_can_run

pytestmark = [pytest.mark.integration, pytest.mark.node_exclusive]

CHILD = textwrap.dedent(
    """
    import json, sys
    from tests.kube.cluster import ControlPlane
    from tests.kube.node import RealNode, TOOLBOX_IMAGE

    plane = ControlPlane().start().start_nodes()
    node = RealNode(plane).start()
    web = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node.name},
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "web", "image": TOOLBOX_IMAGE, "imagePullPolicy": "Never",
                "command": ["httpd", "-f", "-p", "8080", "-h", "/tmp"],
                "ports": [{"containerPort": 8080, "hostPort": 18080}],
            }],
        },
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    items = {"apiVersion": "v1", "kind": "List", "items": [web, service]}
    plane.kubectl("apply", "-f", "-", input=json.dumps(items))
    plane.kubectl("wait", "--for=condition=Ready", "pod/web", "--timeout=120s", timeout=130)
    print(json.dumps({"state": str(node.state)}), flush=True)
    if sys.stdin.readline().strip() == "stop":
        report = node.stop()
        plane.stop()
        print(json.dumps({"report": report}), flush=True)
    """
)


@pytest.fixture
def baseline() -> hoststate.Baseline:
    skip_unless_a_node_can_run()
    return hoststate.snapshot()


def start_child() -> tuple[subprocess.Popen[str], Path]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        child.wait(timeout=60)
        raise AssertionError(
            f"the child did not start a node:\n{child.stderr.read() if child.stderr else ''}"
        )
    return child, Path(json.loads(line)["state"])


def assert_node_changed_the_host(state: Path, before: hoststate.Baseline) -> None:
    """Teardown is only proven if there was something to undo."""
    changed = hoststate.leftovers(before, state, NETWORK, BRIDGE, find_node_parts().executables)
    text = "\n".join(changed)
    for what in (
        "processes still running",
        "processes in pod cgroups",
        "mounts",
        "network namespaces",
        f"bridge {BRIDGE}",
        "iptables -t nat",
        "cgroups: [",
        "state directory",
    ):
        assert what in text, f"expected the running node to show {what!r}:\n{text}"
    assert (
        "sysctl vm.overcommit_memory" in text or before.sysctls.get("vm.overcommit_memory") == "1"
    )


def assert_host_restored(before: hoststate.Baseline, state: Path, report: Any) -> None:
    assert report == [], report
    assert hoststate.leftovers(before, state, NETWORK, BRIDGE, find_node_parts().executables) == []
    # Beyond the node's own accounting: the same parts of the host, read afresh (other users of
    # the machine, such as podman, may change the rest meanwhile).
    after = hoststate.snapshot()
    assert after.sysctls == before.sysctls
    assert [n for n in after.netns if n.startswith("cni-")] == [
        n for n in before.netns if n.startswith("cni-")
    ]
    assert after.nft_tables == before.nft_tables
    assert ours(after.iptables) == ours(before.iptables)


def ours(iptables: dict[str, dict[str, list[str]]]) -> list[str]:
    return sorted(
        f"{cmd} {table} {line}"
        for cmd, tables in iptables.items()
        for table, lines in tables.items()
        for line in lines
        if "KUBE-" in line or NETWORK in line or "CNI-DN-" in line or "CNI-HOSTPORT" in line
    )


def test_a_stopped_node_leaves_nothing_behind(baseline: hoststate.Baseline) -> None:
    child, state = start_child()
    try:
        assert_node_changed_the_host(state, baseline)
        out, err = child.communicate("stop\n", timeout=240)
    finally:
        child.kill()
    assert child.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])["report"]
    assert_host_restored(baseline, state, report)


def test_a_killed_test_process_leaves_nothing_behind(baseline: hoststate.Baseline) -> None:
    child, state = start_child()
    report_file = state.parent / f"{state.name}.report.json"
    try:
        assert_node_changed_the_host(state, baseline)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        deadline = time.monotonic() + 240
        while not report_file.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        report = json.loads(report_file.read_text())
    finally:
        child.kill()
        report_file.unlink(missing_ok=True)
        (state.parent / f"{state.name}.reaper.log").unlink(missing_ok=True)
    assert_host_restored(baseline, state, report)
