"""The container contract's progress file: a job may write ``progress.json`` in its working
directory (``/content``) whenever it likes, replaced whole (write, then rename):

    {"percent": 42.0, "step": 420, "total": 1000, "etaSeconds": 95,
     "metrics": {"loss": 1.73}, "message": "training", "updated": "2026-12-02T03:50:00Z"}

Every field is optional. The runtime reads it while the job runs (locally from the run
directory; on a cluster the pod's helper serves it) and shows it as ``status.progress``.
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from substratus.api.kinds import JobProgress

PROGRESS_FILE = "progress.json"
MAX_PROGRESS_BYTES = 64 * 1024  # a report, not a log: a bigger file is ignored


def parse_progress(data: bytes) -> JobProgress | None:
    """The report in ``data``, or None when it is too big, unreadable or half-written."""
    if len(data) > MAX_PROGRESS_BYTES:
        return None
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict):
            return None
        metrics = doc.get("metrics")
        if isinstance(metrics, dict):  # numbers only; a NaN loss is not a number to show
            doc["metrics"] = {
                str(k): float(v)
                for k, v in metrics.items()
                if isinstance(v, int | float) and not isinstance(v, bool) and v == v
            }
        history = doc.get("history")
        if isinstance(history, list):  # numbers only, the newest 200 at most
            numbers = [
                float(v)
                for v in history
                if isinstance(v, int | float) and not isinstance(v, bool) and v == v
            ]
            doc["history"] = numbers[-200:]
        return JobProgress.model_validate(doc)
    except (ValueError, ValidationError):
        return None
