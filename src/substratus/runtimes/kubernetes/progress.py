"""Jobs' progress on a cluster: the commit helper beside each workload serves its
``progress.json`` (podhelper.serve_progress); a poller of the operator reads it from every
running run's pod through the API server (``pods/NAME:PORT/proxy/progress``, RBAC pods/proxy
get: no route to pods needed), and queues the object when the report changed."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from lightkube import Client

from substratus.api.kinds import JobProgress
from substratus.core.every import Every
from substratus.core.graph import Key
from substratus.core.progress import parse_progress
from substratus.runtimes.kubernetes.children import Children
from substratus.runtimes.kubernetes.pods import PROGRESS_PORT

log = logging.getLogger("substratus.operator")

POLL_SECONDS = 2.0


class ProgressPoller(Every):
    def __init__(self, client: Client, children: Children, enqueue: Callable[[Key], None]):
        self.client = client
        self.children = children
        self.enqueue = enqueue
        # object -> (the pod that reported, its report): a new run's pod starts from nothing.
        self.reports: dict[Key, tuple[str, JobProgress]] = {}
        super().__init__(POLL_SECONDS, self.poll, "progress", log)

    def poll(self) -> None:
        for owner, pod in self.children.running_job_pods():
            report = self.fetch(pod)
            if report is None:
                continue
            seen = (str(pod["metadata"]["name"]), report)
            if self.reports.get(owner) != seen:
                self.reports[owner] = seen
                self.enqueue(owner)

    def fetch(self, pod: dict[str, Any]) -> JobProgress | None:
        meta = pod["metadata"]
        path = (
            f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}:{PROGRESS_PORT}"
            "/proxy/progress"
        )
        http = self.client._client  # lightkube's request layer: a GET it has no resource for
        try:
            response = http._client.get(path, timeout=2)
        except Exception as exc:  # the helper not up yet, the pod gone: ask again next round
            log.debug("progress of %s/%s: %s", meta["namespace"], meta["name"], exc)
            return None
        if response.status_code != 200:
            return None
        return parse_progress(response.content)
