"""Autoscaling: the replicas the core wants from a proxy's load, the proxy's demand window, the
Server's decisions and the field's validation."""

from __future__ import annotations

from typing import Any

import pytest

from substratus.api.kinds import Autoscaling
from substratus.api.loading import ValidationFailed
from substratus.core.actions import EnsureService
from substratus.core.autoscale import Load, desired_replicas
from substratus.core.observed import DepState, Observed, ServiceState
from substratus.core.reconcile import decide
from substratus.workloads.proxy.demand import Demand
from tests.unit.test_reconcile import BASE, make, ready_reason

POLICY = Autoscaling(minReplicas=0, maxReplicas=4, targetInFlight=8)


@pytest.mark.parametrize(
    ("current", "loading", "load", "want"),
    [
        (0, 0, Load(0, 0, 0), 0),  # idle at zero stays at zero
        (0, 0, Load(0, 1, 1), 1),  # one held request wakes one replica
        (0, 0, Load(0, 32, 32), 4),  # a burst: 32 / 8
        (0, 0, Load(0, 100, 100), 4),  # never above maxReplicas
        (2, 0, Load(9, 0, 9), 2),  # 9 in flight: 2 at 8 each
        (3, 0, Load(1, 0, 20), 3),  # a peak within the delay holds the count
        (3, 0, Load(1, 0, 1), 1),  # the delay passed with little demand: down
        (2, 0, Load(0, 0, 0), 0),  # nothing for the whole delay: to zero
        (2, 1, Load(0, 0, 0), 2),  # ... but not while a replica is still loading
        (1, 1, Load(0, 0, 30), 4),  # scaling up is never held back
        (3, 0, None, 3),  # the proxy cannot be asked: keep what runs
        (9, 0, None, 4),  # ... within the bounds
    ],
)
def test_desired_replicas(current: int, loading: int, load: Load | None, want: int) -> None:
    assert desired_replicas(POLICY, current, loading, load) == want


def test_min_replicas_is_a_floor() -> None:
    policy = Autoscaling(minReplicas=2, maxReplicas=3)
    assert desired_replicas(policy, 3, 0, Load(0, 0, 0)) == 2


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"minReplicas": 3, "maxReplicas": 2}, "minReplicas must not exceed maxReplicas"),
        ({"maxReplicas": 0}, "greater than or equal to 1"),
        ({"targetInFlight": 0}, "greater than or equal to 1"),
        ({"queueLimit": -1}, "greater than or equal to 0"),
        ({"queueTimeoutSeconds": 0}, "greater than or equal to 1"),
        ({"scaleDownDelay": 5}, "scaleDownDelay: unknown field"),
    ],
)
def test_bad_autoscaling_is_refused(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationFailed, match=message) as caught:
        make("Server", {**BASE, "model": "m", "autoscaling": spec})
    assert "spec.autoscaling" in str(caught.value)  # the field is named


def test_load_is_read_strictly() -> None:
    assert Load.from_json({"inFlight": 1, "waiting": 2, "peak": 3}) == Load(1, 2, 3)
    with pytest.raises(ValueError, match="waiting"):
        Load.from_json({"inFlight": 1, "waiting": -2, "peak": 3})
    with pytest.raises(ValueError, match="peak"):
        Load.from_json({"inFlight": 1, "waiting": 2})


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_demand_peak_covers_the_window_then_decays() -> None:
    clock = Clock()
    d = Demand(window=10, clock=clock)
    assert d.peak() == 0
    d.change(waiting=5)
    clock.t += 1
    d.change(waiting=-5, in_flight=5)
    clock.t += 1
    d.change(in_flight=-4)
    assert (d.now, d.peak()) == (1, 5)
    clock.t += 9
    assert d.peak() == 5  # the 5 in flight 11 s ago lasted into the window
    clock.t += 3  # (a second's entry is kept up to one second past the window)
    assert d.peak() == 1  # only what is in flight now
    d.note(40)  # a burst turned away still counts
    assert d.peak() == 40 and d.now == 1


def test_demand_memory_is_per_second_not_per_request() -> None:
    clock = Clock()
    d = Demand(window=5, clock=clock)
    for i in range(100_000):
        clock.t += 0.001
        d.change(in_flight=1 if i % 2 == 0 else -1)
    assert len(d._seconds) <= 7
    assert d.peak() == 1


AUTO = {**BASE, "model": "m", "autoscaling": {"maxReplicas": 2, "targetInFlight": 4}}
DEPS = {"model": DepState(True, True, "file:///m/")}
IMAGE = "substratusai/base"


def test_autoscaled_server_starts_its_proxy_then_serves_from_zero() -> None:
    obj = make("Server", AUTO)
    policy = obj.spec.autoscaling  # type: ignore[attr-defined]
    d = decide(obj, Observed(now=0, deps=DEPS))
    assert d.actions == [EnsureService(1, IMAGE, 0, policy)]
    assert ready_reason(d)[:2] == (False, "Starting")
    # The proxy answers and nothing runs: Ready at zero, at the proxy's address.
    svc = ServiceState(1, "", proxy_url="http://h:9")
    d = decide(obj, Observed(now=0, deps=DEPS, service=svc))
    ready, reason, message = ready_reason(d)
    assert (ready, reason) == (True, "Serving") and "scaled to zero" in message
    assert d.status.url == "http://h:9"  # type: ignore[attr-defined]
    # Six requests held: two replicas (at four each); still Ready while they load.
    load = Load(0, 6, 6)
    d = decide(obj, Observed(now=0, deps=DEPS, service=svc, load=load))
    assert d.actions == [EnsureService(1, IMAGE, 2, policy)]
    loading = ServiceState(1, IMAGE, replicas=2, loading=2, wanted=2, proxy_url="http://h:9")
    d = decide(obj, Observed(now=0, deps=DEPS, service=loading, load=Load(0, 0, 0)))
    assert d.actions == [EnsureService(1, IMAGE, 2, policy)]  # loading: not scaled down
    assert ready_reason(d)[:2] == (True, "Serving")


def test_autoscaled_server_reports_a_replica_that_keeps_crashing() -> None:
    obj = make("Server", AUTO)
    svc = ServiceState(
        1, IMAGE, restarts=3, last_exit_code=2, log_tail="no weights", wanted=1,
        proxy_url="http://h:9",
    )  # fmt: skip
    d = decide(obj, Observed(now=0, deps=DEPS, service=svc, load=Load(0, 1, 1)))
    ready, reason, message = ready_reason(d)
    assert (ready, reason) == (False, "CrashLoopBackOff") and "no weights" in message
    assert d.status.url == "http://h:9"  # type: ignore[attr-defined]


def test_an_autoscaled_server_on_a_cluster_has_a_proxy_in_front() -> None:
    from substratus.core.world import MountSources
    from substratus.runtimes.kubernetes import autoscaling, services
    from substratus.runtimes.kubernetes.config import OperatorConfig

    cfg = OperatorConfig(artifact_url="s3://b", helper_image="helper:1")
    obj = make("Server", AUTO)
    obj.metadata.uid = "0a1b2c3d-4e5f-6789-abcd-ef0123456789"  # as the API server sets it
    policy = obj.spec.autoscaling  # type: ignore[attr-defined]
    action = EnsureService(1, IMAGE, 0, policy)
    children = services.service_children(obj, action, cfg, MountSources(None, None), ["true"])
    kinds = [(c["kind"], c["metadata"]["name"]) for c in children]
    assert kinds == [
        ("Service", "x-server-svc"),
        ("Deployment", "x-server-deploy"),
        ("Deployment", "x-server-proxy"),
        ("Service", "x-server-proxy"),
    ]
    assert children[1]["spec"]["replicas"] == 0
    # A replica scaled down keeps serving until the proxy has heard of it.
    [replica] = children[1]["spec"]["template"]["spec"]["containers"][:1]
    assert replica["lifecycle"] == {"preStop": {"sleep": {"seconds": 2}}}
    proxy = children[2]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") or e["valueFrom"] for e in proxy["env"]}
    # Its replicas come from the operator, with the token of the Secret the Server owns.
    assert "UPSTREAMS" not in env
    token_ref = {"secretKeyRef": {"name": "x-server-proxy-0a1b2c3d4e", "key": "token"}}
    assert env["PROXY_TOKEN"] == token_ref
    secret = autoscaling.token_secret(obj)
    assert secret["metadata"]["name"] == "x-server-proxy-0a1b2c3d4e"
    # The same name made again is another Server: its Secret is its own, not the old one's.
    again = make("Server", AUTO)
    again.metadata.uid = "ffff0000-1111-2222-3333-444455556666"
    assert autoscaling.token_secret_name(again) == "x-server-proxy-ffff000011"
    assert secret["metadata"]["ownerReferences"][0]["name"] == "x"
    assert len(secret["stringData"]["token"]) >= 40
    assert secret["stringData"] != autoscaling.token_secret(obj)["stringData"]
    assert (env["QUEUE_LIMIT"], env["LOAD_WINDOW_SECONDS"]) == ("100", "300")
    assert proxy["image"] == "helper:1"
    assert proxy["command"] == ["python", "-m", "substratus.workloads.proxy"]
    assert services.service_url(obj) == "http://x-server-proxy.default.svc.cluster.local:8080"


def test_a_poller_queues_the_server_only_when_the_count_would_change() -> None:
    from substratus.core.autoscale import rescales

    running_two = ServiceState(1, IMAGE, replicas=2, ready_replicas=2, wanted=2)
    assert not rescales(POLICY, running_two, Load(9, 0, 9))  # 9 at 8 each: still 2
    assert rescales(POLICY, running_two, Load(20, 0, 20))  # 3 now
    assert rescales(POLICY, None, Load(0, 1, 1))  # nothing runs yet: from zero
    assert not rescales(POLICY, None, Load(0, 0, 0))


def test_the_proxy_on_a_cluster_checks_the_servers_keys() -> None:
    from substratus.core.world import MountSources
    from substratus.runtimes.kubernetes import services
    from substratus.runtimes.kubernetes.config import OperatorConfig

    cfg = OperatorConfig(artifact_url="s3://b", helper_image="helper:1")
    keyed = {**AUTO, "env": {"API_KEYS": {"secretKeyRef": {"name": "keys", "key": "k"}}}}
    obj = make("Server", keyed)
    action = EnsureService(1, IMAGE, 0, obj.spec.autoscaling)  # type: ignore[attr-defined]
    children = services.service_children(obj, action, cfg, MountSources(None, None), ["true"])
    [env] = [c["env"] for c in children[2]["spec"]["template"]["spec"]["containers"]]
    assert {"name": "API_KEYS", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "k"}}} in env


def _pod(role: str, ip: str | None, phase: str = "Running", deleting: bool = False) -> dict:
    meta: dict = {"labels": {"substratus.ai/role": role}}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-02T00:00:00Z"
    return {"metadata": meta, "status": {"phase": phase, **({"podIP": ip} if ip else {})}}


def test_the_proxy_on_a_cluster_is_told_the_replicas_that_can_take_requests() -> None:
    from substratus.runtimes.kubernetes.autoscaling import replica_urls

    pods = [
        _pod("service", "10.0.0.9"),
        _pod("service", "10.0.0.3"),  # loading or ready: the proxy probes it itself
        _pod("service", None, phase="Pending"),  # no address yet
        _pod("service", "10.0.0.4", deleting=True),  # scaled down: no new request
        _pod("service", "10.0.0.5", phase="Failed"),
        _pod("proxy", "10.0.0.6"),  # the proxy itself
        _pod("service", "fd00::7"),
    ]
    assert replica_urls(pods, 8080) == [
        "http://10.0.0.3:8080", "http://10.0.0.9:8080", "http://[fd00::7]:8080",
    ]  # fmt: skip
    assert replica_urls([], 8080) == []
