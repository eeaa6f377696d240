"""The operator's Prometheus metrics and its probes, served on one port (``metrics_listen``).

- ``/metrics``: the families below, in Prometheus' text format (``prometheus_client``);
- ``/healthz`` (liveness): 200 while the replica works: its reconcile workers (once started) and
  its lease renewal are alive; a replica that lost its Lease exits on its own;
- ``/readyz`` (readiness): 200 once the replica has spoken to the API server (its first
  attempt at the Lease returned), leader or standby; until then, or when its workers died, 503
  with the reason.

Every replica serves them; only the leader reconciles, so only its reconcile families move
(``substratus_operator_leader`` says which one leads).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Most reconciles read caches and write one status (milliseconds); a first Job or a build
# start talks to the bucket and the registry (seconds).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """One registry per operator (tests run several in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.reconciles = Counter(
            "substratus_operator_reconciles",
            "Reconciles by kind and result (ok; conflict: a write lost to a newer version of "
            "the object, decided again; error: it raised, retried in 5 s).",
            ["kind", "result"],
            registry=r,
        )
        self.duration = Histogram(
            "substratus_operator_reconcile_duration_seconds",
            "How long one reconcile took, by kind.",
            ["kind"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "substratus_operator_errors",
            "Reconciles that raised, by kind and exception.",
            ["kind", "error"],
            registry=r,
        )
        self.children = Counter(
            "substratus_operator_children_created",
            "Children created (Jobs, home claims, token Secrets) or applied (Deployments, "
            "Services, Secrets), by child kind.",
            ["kind", "verb"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "substratus_operator_queue_depth",
            "Objects due for a reconcile now (not those waiting out a delay).",
            registry=r,
        )
        self.objects = Gauge(
            "substratus_operator_objects",
            "Objects of ours in the watch's cache, by kind.",
            ["kind"],
            registry=r,
        )
        self.leader = Gauge(
            "substratus_operator_leader", "1 while this replica holds the Lease.", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


Check = Callable[[], str | None]  # None: fine; else what is wrong


class ProbeServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` over HTTP, in a daemon thread."""

    def __init__(self, metrics: Metrics, live: Check, ready: Check) -> None:
        self.metrics = metrics
        self.live = live
        self.ready = ready
        self._server: ThreadingHTTPServer | None = None

    def serve(self, host: str, port: int) -> int:
        """Listen (port 0: any free one) and return the port."""
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, owner.metrics.render(), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    problem = (owner.live if path == "/healthz" else owner.ready)()
                    if problem is None:
                        self._send(200, b"ok\n", "text/plain")
                    else:
                        self._send(503, problem.encode() + b"\n", "text/plain")
                else:
                    self._send(404, b"not found: /metrics, /healthz, /readyz\n", "text/plain")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # a probe every few seconds is not news

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="probes", daemon=True).start()
        return int(self._server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
