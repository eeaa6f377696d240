"""Two-way sync between the user's directory and a notebook, while it is open.

Each round lists both sides (cheap when nothing moved: only changed files are hashed), plans
with the three-way rule of ``merge.py`` against the base (what both sides held after the last
round), carries out the steps and saves the new base. The base outlives the command (a JSON
file under ``$XDG_STATE_HOME/substratus/sync``), so a notebook opened again on the same
directory knows which side deleted what.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from substratus.cli.notebook.merge import Snapshot, Step, conflict_name, plan
from substratus.cli.notebook.sides import JupyterTree, LocalTree, SyncError

INTERVAL_SECONDS = 0.25


def state_dir() -> Path:
    root = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(root) / "substratus" / "sync"


def base_file(where: str, namespace: str, name: str, directory: Path) -> Path:
    """The base's file for one notebook (``where``: the cluster context, or "local") and one
    directory."""
    key = json.dumps([where, namespace, name, str(directory.resolve())])
    return state_dir() / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")


@dataclass
class RoundResult:
    pushed: list[str] = field(default_factory=list)
    pulled: list[str] = field(default_factory=list)
    deleted_local: list[str] = field(default_factory=list)
    deleted_remote: list[str] = field(default_factory=list)
    conflicts: list[tuple[str, str]] = field(default_factory=list)  # (path, notebook's copy)

    def changed(self) -> bool:
        return bool(
            self.pushed
            or self.pulled
            or self.deleted_local
            or self.deleted_remote
            or self.conflicts
        )


class Syncer:
    def __init__(
        self,
        local: LocalTree,
        remote: JupyterTree,
        base_path: Path | None,
        report: Callable[[str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.local, self.remote = local, remote
        self.base_path = base_path
        self.report = report
        self.clock = clock
        self.base: Snapshot = self._load_base()
        self.lock = threading.Lock()  # one round at a time (the loop and the final round)
        self.told_large: set[str] = set()

    def _load_base(self) -> Snapshot:
        if self.base_path is None:
            return {}
        try:
            data = json.loads(self.base_path.read_text())
        except (OSError, ValueError):
            return {}
        files = data.get("files") if isinstance(data, dict) else None
        return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else {}

    def _save_base(self) -> None:
        if self.base_path is None:
            return
        self.base_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.base_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"files": self.base}, sort_keys=True))
        os.replace(tmp, self.base_path)

    def sync_once(self) -> RoundResult:
        with self.lock:
            result = self._round()
        for path in sorted((self.local.too_large | self.remote.too_large) - self.told_large):
            self.told_large.add(path)
            self.report(f"not synced: {path} is larger than {self.local.max_bytes >> 20} MiB")
        return result

    def _round(self) -> RoundResult:
        local, remote = self.local.scan(), self.remote.scan()
        before = dict(self.base)
        result = RoundResult()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self.clock()))
        for planned in plan(self.base, local, remote):
            path, step = planned.path, planned.step
            if step is Step.PUSH:
                self.base[path] = self.remote.write(path, self.local.read(path))
                result.pushed.append(path)
            elif step is Step.PULL:
                self.base[path] = self.local.write(path, self.remote.read(path))
                result.pulled.append(path)
            elif step is Step.DELETE_LOCAL:
                self.local.delete(path)
                self.base.pop(path, None)
                result.deleted_local.append(path)
            elif step is Step.DELETE_REMOTE:
                self.remote.delete(path)
                self.base.pop(path, None)
                result.deleted_remote.append(path)
            elif step is Step.AGREE:
                self.base[path] = local[path]
            elif step is Step.FORGET:
                self.base.pop(path, None)
            else:  # CONFLICT: the local version stays in place, the notebook's beside it
                theirs = self.remote.read(path)
                copy = conflict_name(path, stamp, set(local) | set(remote) | set(self.base))
                digest = self.local.write(copy, theirs)
                self.remote.write(copy, theirs)
                self.base[copy] = digest
                self.base[path] = self.remote.write(path, self.local.read(path))
                result.conflicts.append((path, copy))
            if planned.restored:
                side = "notebook" if step is Step.PULL else "local directory"
                self.report(f"kept {path}: deleted on one side, edited in the {side}")
        for path, copy in result.conflicts:
            self.report(
                f"conflict: {path} changed on both sides; yours is in place, "
                f"the notebook's is {copy}"
            )
        if self.base != before or (self.base_path and not self.base_path.exists()):
            self._save_base()
        return result


def summary(result: RoundResult) -> str:
    parts = []
    for label, paths in (
        ("to the notebook", result.pushed),
        ("from the notebook", result.pulled),
        ("deleted here", result.deleted_local),
        ("deleted in the notebook", result.deleted_remote),
    ):
        if paths:
            shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
            parts.append(f"{label}: {shown}")
    return "; ".join(parts)


class SyncLoop:
    """Rounds every ``interval`` seconds in a thread until stopped; errors are reported and the
    next round tries again (a port-forward reconnecting, a pod restarting)."""

    def __init__(
        self, syncer: Syncer, report: Callable[[str], None], interval: float = INTERVAL_SECONDS
    ) -> None:
        self.syncer, self.report, self.interval = syncer, report, interval
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="notebook-sync", daemon=True)
        self.last_error: str | None = None

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                result = self.syncer.sync_once()
                if self.last_error is not None:
                    self.report("sync: the notebook answers again")
                    self.last_error = None
                if result.changed() and (text := summary(result)):
                    self.report(f"synced {text}")
            except (SyncError, OSError) as e:
                if str(e) != self.last_error:
                    self.report(f"sync: {e} (retrying)")
                self.last_error = str(e)
            self.stopping.wait(self.interval)

    def stop(self) -> None:
        self.stopping.set()
        with contextlib.suppress(RuntimeError):
            self.thread.join(timeout=30)
