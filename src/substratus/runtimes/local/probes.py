"""Readiness and liveness of local services: GET on the workload's port must answer 200."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable

from substratus.core.graph import Key
from substratus.runtimes.local.db import Run, StateDB
from substratus.runtimes.local.launch import service_host

# Servers answer 200 on / (the contract); Jupyter answers 200 on /api unauthenticated.
PROBE_PATHS = {"Notebook": "/api"}
FAILURES_TO_UNREADY = 3


class Readiness:
    """Which running service replicas answer; a probe thread per replica records it and
    queues the object when that changes."""

    def __init__(self, db: StateDB, enqueue: Callable[[Key], None]):
        self.db = db
        self.enqueue = enqueue
        self._ready: set[int] = set()
        self._lock = threading.Lock()

    def is_ready(self, run_id: int) -> bool:
        with self._lock:
            return run_id in self._ready

    def set(self, run_id: int, ready: bool) -> None:
        with self._lock:
            if ready:
                self._ready.add(run_id)
            else:
                self._ready.discard(run_id)

    def watch(self, run: Run) -> None:
        threading.Thread(
            target=self._probe, args=(run,), name=f"probe-{run.id}", daemon=True
        ).start()

    def _probe(self, run: Run) -> None:
        """Readiness, then liveness, until the run stops running."""
        assert run.port is not None
        failures = 0
        while True:
            current = self.db.get_run(run.id)
            if current is None or current.phase != "running":
                self.set(run.id, False)
                return
            ok = http_ok(run.port, PROBE_PATHS.get(run.kind, "/"))
            was = self.is_ready(run.id)
            failures = 0 if ok else failures + 1
            if ok and not was:
                self.set(run.id, True)
                self.enqueue(run.key)
            elif was and failures >= FAILURES_TO_UNREADY:
                self.set(run.id, False)
                self.enqueue(run.key)
            time.sleep(2.0 if self.is_ready(run.id) else 0.1)


def http_ok(port: int, path: str) -> bool:
    conn = http.client.HTTPConnection(service_host(), port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()
