"""Asks each running proxy for its load and queues its Server when the core would now want
another number of replicas; the reconcile reads the load back as an observation."""

from __future__ import annotations

import http.client
import json
import logging
from typing import TYPE_CHECKING

from substratus.api.kinds import Server
from substratus.api.loading import parse_object
from substratus.core.autoscale import LOAD_PATH, Load, rescales
from substratus.core.every import Every
from substratus.core.graph import Key
from substratus.runtimes.local.launch import service_host
from substratus.runtimes.local.proxies import ROLE

if TYPE_CHECKING:
    from substratus.runtimes.local.controller import Controller

log = logging.getLogger("substratus.supervisor")

POLL_SECONDS = 0.2  # a cold start waits at most this long to begin


class Autoscaler(Every):
    def __init__(self, ctl: Controller):
        self.ctl = ctl
        self.loads: dict[Key, Load] = {}
        super().__init__(POLL_SECONDS, self.poll, "autoscaler", log)

    def poll(self) -> None:
        seen: set[Key] = set()
        readiness = self.ctl.runner.readiness
        for run in self.ctl.db.runs(role=ROLE, phase="running"):
            if run.port is None or not readiness.is_ready(run.id):
                continue
            seen.add(run.key)
            load = fetch_load(run.port)
            if load is None or self.loads.get(run.key) == load:
                continue
            self.loads[run.key] = load
            if self._rescale(run.key, load):
                self.ctl.enqueue(run.key)
        for key in set(self.loads) - seen:
            del self.loads[key]

    def _rescale(self, key: Key, load: Load) -> bool:
        body = self.ctl.db.get(*key)
        if body is None:
            return False
        obj = parse_object(body, "stored object")
        if not isinstance(obj, Server) or obj.spec.autoscaling is None:
            return False
        return rescales(obj.spec.autoscaling, self.ctl.observe_service(obj), load)


def fetch_load(port: int) -> Load | None:
    conn = http.client.HTTPConnection(service_host(), port, timeout=1)
    try:
        conn.request("GET", LOAD_PATH)
        resp = conn.getresponse()
        if resp.status != 200:
            return None
        return Load.from_json(json.loads(resp.read()))
    except (OSError, ValueError) as exc:
        log.debug("proxy on port %d: %s", port, exc)
        return None
    finally:
        conn.close()
