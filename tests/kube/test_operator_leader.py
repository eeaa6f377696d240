"""Two replicas of the operator never act at once: the second waits for the Lease, and takes it
over when the first dies without letting go (it expires), then starts reconciling."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from tests.kube.cluster import ControlPlane
from tests.kube.operatorproc import start_operator, stop_operator

pytestmark = pytest.mark.integration

SETTINGS = {"SUBSTRATUS_ARTIFACT_URL": "s3://unused", "SUBSTRATUS_HELPER_IMAGE": "unused"}


def holder(plane: ControlPlane) -> str:
    lease = plane.kubectl(
        "get", "lease", "-n", "substratus-system", "substratus-operator", "-o", "json"
    )
    return str(json.loads(lease.stdout)["spec"]["holderIdentity"])


def test_a_second_replica_waits_then_takes_over_an_expired_lease(
    kube_cluster: ControlPlane, substratus_crds: list[str], tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = start_operator(kube_cluster, tmp_path / "a", SETTINGS)
    second = start_operator(kube_cluster, tmp_path / "b", SETTINGS, wait=False)
    try:
        assert holder(kube_cluster).endswith(f"-{first.pid}")
        deadline = time.monotonic() + 20
        while "waiting for the lease" not in second.tail() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "waiting for the lease" in second.tail()
        time.sleep(3)
        assert "operator started" not in second.tail()  # it does not act while the first leads
        first.popen.send_signal(signal.SIGKILL)  # dies holding the lease: it has to expire
        killed = time.monotonic()
        while "operator started" not in second.tail() and time.monotonic() - killed < 40:
            time.sleep(0.2)
        assert "operator started" in second.tail(), second.tail()
        took = time.monotonic() - killed
        assert 5 < took < 40, took  # after the lease expired (15 s), not before
        assert holder(kube_cluster).endswith(f"-{second.pid}")
    finally:
        stop_operator(second)
        stop_operator(first)
