"""Jobs' progress files (core/progress.py) in their run directories: read for the job's
observation, and watched, so that a new report queues the object (a report is no process event
and no state change the controller would otherwise see)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from substratus.api.kinds import JobProgress
from substratus.core.every import Every
from substratus.core.graph import Key
from substratus.core.progress import MAX_PROGRESS_BYTES, PROGRESS_FILE, parse_progress
from substratus.runtimes.local.db import StateDB

log = logging.getLogger("substratus.supervisor")

POLL_SECONDS = 0.25  # a stat per running job: cheap; a report shows within a quarter second


def read_progress(workdir: str | Path) -> JobProgress | None:
    try:
        with open(Path(workdir) / PROGRESS_FILE, "rb") as f:
            return parse_progress(f.read(MAX_PROGRESS_BYTES + 1))
    except OSError:
        return None


class ProgressWatcher(Every):
    def __init__(self, db: StateDB, enqueue: Callable[[Key], None]):
        self.db = db
        self.enqueue = enqueue
        self._seen: dict[int, int] = {}  # run id -> the report's mtime last seen
        super().__init__(POLL_SECONDS, self.poll, "progress", log)

    def poll(self) -> None:
        running = self.db.runs(role="job", phase="running")
        for run in running:
            try:
                mtime = (Path(run.workdir) / PROGRESS_FILE).stat().st_mtime_ns
            except OSError:
                continue
            if self._seen.get(run.id) != mtime:
                self._seen[run.id] = mtime
                self.enqueue(run.key)
        alive = {run.id for run in running}
        for run_id in set(self._seen) - alive:
            del self._seen[run_id]
