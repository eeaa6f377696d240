"""How many replicas an autoscaled Server wants, from the load its proxy reports.

Pure: the proxy keeps the only memory (the highest demand over the scale-down delay), so a
restarted supervisor or operator decides as before from one observation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from substratus.api.kinds import Autoscaling

if TYPE_CHECKING:
    from substratus.core.observed import ServiceState

# Where a proxy answers with its load (JSON), beside the metrics it exports; both runtimes read it.
LOAD_PATH = "/_substratus/load"
METRICS_PATH = "/_substratus/metrics"
# On a cluster the operator tells the proxy its replicas' addresses (a PUT of a JSON list of
# URLs), proving itself with the token of a Secret the Server owns, given to the proxy as
# PROXY_TOKEN. A header of our own: the API server's service proxy, which the operator sends
# through, takes ``Authorization`` for itself.
UPSTREAMS_PATH = "/_substratus/upstreams"
TOKEN_HEADER = "X-Substratus-Proxy-Token"
TOKEN_ENV = "PROXY_TOKEN"


@dataclass(frozen=True)
class Load:
    """What a Server's proxy reports: requests answered by replicas now, requests it holds
    while no replica is ready, and the highest sum of the two over the scale-down delay."""

    in_flight: int
    waiting: int
    peak: int

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> Load:
        def count(name: str) -> int:
            value = doc.get(name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"load: {name} must be a count, not {value!r}")
            return value

        return cls(count("inFlight"), count("waiting"), count("peak"))

    @property
    def demand(self) -> int:
        return self.in_flight + self.waiting


def clamp(policy: Autoscaling, replicas: int) -> int:
    return max(policy.min_replicas, min(policy.max_replicas, replicas))


def desired_replicas(policy: Autoscaling, current: int, loading: int, load: Load | None) -> int:
    """Replicas to run: enough for the highest demand of the last ``scaleDownDelaySeconds`` at
    ``targetInFlight`` each, within the bounds. Up at once (the peak includes now); down only
    when the whole delay needed fewer, and never while a replica is still loading (a Deployment
    removes unready pods first, so scaling down would kill the one about to serve).

    ``current`` is what the runtime was last asked to run, ``loading`` how many of those are
    started but not yet ready; ``load`` is None while the proxy cannot be asked."""
    if load is None:
        return clamp(policy, current)
    demand = max(load.peak, load.demand)
    want = clamp(policy, math.ceil(demand / policy.target_in_flight))
    if demand > 0:
        want = max(want, 1)  # a request is waiting: something must serve it
    if want < current and loading > 0:
        return clamp(policy, current)
    return want


def rescales(policy: Autoscaling, svc: ServiceState | None, load: Load) -> bool:
    """Whether ``load`` makes the core want another count than the runtime runs: a runtime's
    poller queues the Server then, and only then."""
    wanted = svc.wanted if svc is not None and svc.wanted is not None else policy.min_replicas
    loading = svc.loading if svc is not None else 0
    return desired_replicas(policy, wanted, loading, load) != wanted
