"""What a workload may rely on (the container contract), as helpers for the built-in images.

The working directory is ``/content`` in a container and the run's directory locally; in it
``model/`` and ``data/`` (read-only mounts, when the object references a Model/Dataset),
``artifacts/`` (the output, persisted when a job succeeds) and ``params.json``. Params are
also ``PARAM_{UPPER(key)}`` variables. Servers listen on ``$PORT``; notebooks honour
``NOTEBOOK_TOKEN``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from substratus.core.progress import PROGRESS_FILE

# The seed mounts a Server's model at /model/saved; everywhere else it is model/.
SEED_MODEL_PATH = Path("/model/saved")


class ParamError(ValueError):
    """A param is missing or malformed; the message names it (``params.NAME``)."""


def redact(url: str) -> str:
    """A URL without its user:password part (it goes into logs and dataset.json)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


@dataclass
class Params:
    """Typed access to the object's params: params.json first, PARAM_* as a fallback."""

    values: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path | None = None) -> Params:
        path = (root or Path.cwd()) / "params.json"
        values: dict[str, Any] = {}
        if path.exists():
            values = json.loads(path.read_text())
        for key, value in os.environ.items():
            if key.startswith("PARAM_"):
                name = key[len("PARAM_") :].lower()
                values.setdefault(name, value)
        return cls(values)

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self.values.get(name, default)
        return None if value is None else str(value)

    def require(self, name: str) -> str:
        value = self.text(name)
        if value is None or value == "":
            raise ParamError(f"params.{name}: required")
        return value

    def integer(self, name: str, default: int) -> int:
        value = self.values.get(name, default)
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ParamError(f"params.{name}: {value!r} is not an integer") from None

    def number(self, name: str, default: float) -> float:
        value = self.values.get(name, default)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ParamError(f"params.{name}: {value!r} is not a number") from None

    def flag(self, name: str, default: bool) -> bool:
        value = self.values.get(name, default)
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ParamError(f"params.{name}: {value!r} is not a boolean (true or false)")

    def items(self, name: str, default: list[str] | None = None) -> list[str]:
        """A list param: params are scalars, so lists are comma- or whitespace-separated."""
        value = self.values.get(name)
        if value is None:
            return list(default or [])
        return [p for p in str(value).replace(",", " ").split() if p]


def content_dir() -> Path:
    return Path.cwd()


def model_dir() -> Path:
    """The mounted model: /model/saved (the seed's path) when present, else model/."""
    if SEED_MODEL_PATH.is_dir() and any(SEED_MODEL_PATH.iterdir()):
        return SEED_MODEL_PATH
    return content_dir() / "model"


@contextlib.contextmanager
def scratch_dir(owner: str, what: str) -> Iterator[Path]:
    """A scratch directory beside artifacts/ (same disk, so results move in by rename, and
    big enough for model files), else in the temp dir; removed afterwards."""
    try:
        path = Path(tempfile.mkdtemp(prefix=f".{owner}-{what}-", dir=content_dir()))
    except OSError:
        path = Path(tempfile.mkdtemp(prefix=f"{owner}-{what}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def data_dir() -> Path:
    return content_dir() / "data"


def artifacts_dir() -> Path:
    path = content_dir() / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def port(default: int = 8080) -> int:
    return int(os.environ.get("PORT", default))


def host() -> str:
    # Locally workloads bind loopback unless told otherwise; in a pod they must bind all.
    return os.environ.get("HOST", "0.0.0.0")


def report_progress(
    step: int | None = None,
    total: int | None = None,
    *,
    eta_seconds: float | None = None,
    metrics: dict[str, float] | None = None,
    message: str | None = None,
    history: list[float] | None = None,
) -> None:
    """Write the contract's ``progress.json`` (core/progress.py), whole: the runtime shows it
    as ``status.progress``. Best effort: a report that cannot be written is skipped."""
    doc: dict[str, Any] = {"updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if step is not None:
        doc["step"] = step
    if total:
        doc["total"] = total
        if step is not None:
            doc["percent"] = round(min(100.0, 100.0 * step / total), 1)
    if eta_seconds is not None:
        doc["etaSeconds"] = max(0, round(eta_seconds))
    if metrics:
        doc["metrics"] = metrics
    if message:
        doc["message"] = message
    if history:
        doc["history"] = history[-200:]
    target = content_dir() / PROGRESS_FILE
    try:
        tmp = target.with_name(f".{PROGRESS_FILE}.tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(target)
    except OSError:
        pass


class Progress:
    """Progress lines for logs (no terminal control codes): at most one every ``every`` s;
    each also reported as the job's progress (``report_progress``)."""

    def __init__(self, what: str, total: int | None, unit: str = "B", every: float = 2.0):
        self.what, self.total, self.unit, self.every = what, total, unit, every
        self.done = 0
        self.started = self._last = time.monotonic()

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self._print(now)

    def finish(self) -> None:
        self._print(time.monotonic(), final=True)

    def _print(self, now: float, final: bool = False) -> None:
        rate = self.done / max(now - self.started, 1e-9)
        if self.unit == "B":
            done, per = f"{self.done / 1e6:.1f} MB", f"{rate / 1e6:.1f} MB/s"
            total = f" of {self.total / 1e6:.1f} MB" if self.total else ""
        else:
            done, per = f"{self.done} {self.unit}", f"{rate:.1f} {self.unit}/s"
            total = f" of {self.total}" if self.total else ""
        state = "done" if final else "…"
        print(f"{self.what}: {done}{total} ({per}) {state}", file=sys.stderr, flush=True)
        left = (self.total - self.done) / rate if self.total and rate > 0 else None
        report_progress(self.done, self.total, eta_seconds=left, message=self.what)


def fail(message: str, code: int = 2) -> int:
    """Print a workload error the way the runtime's log tail shows it; returns the exit code."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code
