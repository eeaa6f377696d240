"""Two replicas of the operator never act at once: the second waits for the Lease, and takes it
over when the first dies without letting go (it expires), then starts reconciling. A replica
stopped cleanly (SIGTERM, as in a rolling update) gives the Lease up: the next one leads at
once."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from tests.kube.cluster import ControlPlane, Proc
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
    third: Proc | None = None
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

        (tmp_path / "c").mkdir()
        third = start_operator(kube_cluster, tmp_path / "c", SETTINGS, wait=False)
        deadline = time.monotonic() + 20
        while "waiting for the lease" not in third.tail() and time.monotonic() < deadline:
            time.sleep(0.2)
        stopped = time.monotonic()
        stop_operator(second)  # SIGTERM: it releases the lease on its way out
        assert "released the lease" in second.tail(), second.tail()
        while "operator started" not in third.tail() and time.monotonic() - stopped < 40:
            time.sleep(0.2)
        assert time.monotonic() - stopped < 10, third.tail()  # not after the 15 s expiry
        assert holder(kube_cluster).endswith(f"-{third.pid}")
    finally:
        stop_operator(second)
        stop_operator(first)
        if third is not None:
            stop_operator(third)
