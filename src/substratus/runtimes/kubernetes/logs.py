"""The operator's log lines: each one made while an object is reconciled names that object.

A reconcile runs in one worker thread, and everything it logs (its own lines, the builder's,
the observer's, a traceback) carries the object's kind, namespace and name from a context
variable set around it. Text by default (``... [Model default/llama]: created Job ...``), or one
JSON object per line (``log_format: json``) with ``kind``, ``namespace`` and ``name`` fields,
for log stores that index fields.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime

from substratus.core.graph import Key

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(object)s: %(message)s"
# Per-request and per-handler lines of the libraries would drown what the operator says.
NOISY = ("httpx", "httpx2", "kopf.objects")

_current: ContextVar[Key | None] = ContextVar("substratus_object", default=None)


@contextlib.contextmanager
def about(key: Key) -> Iterator[None]:
    """Lines logged inside name ``key`` (kind, namespace, name)."""
    token = _current.set(key)
    try:
        yield
    finally:
        _current.reset(token)


class ObjectFilter(logging.Filter):
    """Puts the current object on every record: ``kind``, ``namespace``, ``object_name``
    (None outside a reconcile) and ``object``, the text form's `` [Kind ns/name]``."""

    def filter(self, record: logging.LogRecord) -> bool:
        key = _current.get()
        kind, namespace, name = key if key else (None, None, None)
        record.__dict__.update(
            kind=kind,
            namespace=namespace,
            object_name=name,
            object=f" [{kind} {namespace}/{name}]" if key else "",
        )
        return True


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        kind = getattr(record, "kind", None)
        if kind is not None:
            line.update(
                kind=kind,
                namespace=getattr(record, "namespace", None),
                name=getattr(record, "object_name", None),
            )
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(fmt: str = "text", level: int = logging.INFO) -> None:
    """The root logger writes to stderr in ``fmt`` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ObjectFilter())
    handler.setFormatter(JSONFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
