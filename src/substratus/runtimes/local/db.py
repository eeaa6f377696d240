"""SQLite state of the local runtime: objects, secrets, runs and builds.

Every write bumps a global resource version so watchers can resume; the supervisor is the
only writer, and recovers everything it needs from these tables after a crash.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from substratus.core.conditions import now_iso
from substratus.core.events import Notice, event_row

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    body TEXT NOT NULL, resource_version INTEGER NOT NULL,
    PRIMARY KEY (kind, namespace, name)
);
CREATE TABLE IF NOT EXISTS secrets (
    namespace TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (namespace, name)
);
CREATE TABLE IF NOT EXISTS events (
    resource_version INTEGER PRIMARY KEY, type TEXT NOT NULL, body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    role TEXT NOT NULL,             -- job | service | build
    generation INTEGER NOT NULL, attempt INTEGER NOT NULL, replica INTEGER NOT NULL DEFAULT 0,
    image TEXT NOT NULL DEFAULT '',
    pid INTEGER, pid_start TEXT, port INTEGER, gpus TEXT NOT NULL DEFAULT '',
    workdir TEXT NOT NULL, log TEXT NOT NULL, exit_file TEXT NOT NULL,
    phase TEXT NOT NULL,            -- running | succeeded | failed | stopped
    exit_code INTEGER, message TEXT NOT NULL DEFAULT '',
    started_at REAL NOT NULL, finished_at REAL,
    result TEXT                     -- JSON: committed artifacts, or a built image
);
CREATE INDEX IF NOT EXISTS runs_by_object ON runs (kind, namespace, name, role);
-- Artifact versions due for deletion that a running workload still mounts.
CREATE TABLE IF NOT EXISTS retired (url TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS notices (  -- `sub events` (core/events.py), newest kept
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    type TEXT NOT NULL, reason TEXT NOT NULL, message TEXT NOT NULL, time TEXT NOT NULL
);
"""
NOTICE_HISTORY = 5000

# Keep enough history for watchers that reconnect; older events are compacted away.
EVENT_HISTORY = 1000


@dataclass
class Run:
    id: int
    kind: str
    namespace: str
    name: str
    role: str
    generation: int
    attempt: int
    replica: int
    image: str
    pid: int | None
    pid_start: str | None
    port: int | None
    gpus: str
    workdir: str
    log: str
    exit_file: str
    phase: str
    exit_code: int | None
    message: str
    started_at: float
    finished_at: float | None
    result: dict[str, Any] | None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)


class Gone(LookupError):
    """A resource version older than the kept event history was asked for."""


class StateDB:
    def __init__(self, path: Path):
        self.path = path
        # Secrets are stored in plain text: the database exists as 0600 before SQLite opens
        # it, since SQLite gives its -wal and -shm files the database file's mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        path.chmod(0o600)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._depth = 0
        self.changed = threading.Condition(self._lock)
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(SCHEMA)
        for suffix in ("-wal", "-shm"):  # left 0644 by earlier versions
            sidecar = path.with_name(path.name + suffix)
            if sidecar.exists():
                sidecar.chmod(0o600)

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A transaction; nested calls on the same thread join the outer one."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._conn
                finally:
                    self._depth -= 1
                return
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0
            self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- resource versions and events -------------------------------------------------------

    def _next_rv(self, c: sqlite3.Connection) -> int:
        row = c.execute("SELECT value FROM meta WHERE key='rv'").fetchone()
        rv = int(row["value"]) + 1 if row else 1
        c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('rv', ?)", (str(rv),))
        return rv

    def current_rv(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key='rv'").fetchone()
            return int(row["value"]) if row else 0

    def _event(self, c: sqlite3.Connection, rv: int, type_: str, body: dict[str, Any]) -> None:
        c.execute(
            "INSERT INTO events (resource_version, type, body) VALUES (?, ?, ?)",
            (rv, type_, json.dumps(body)),
        )
        c.execute("DELETE FROM events WHERE resource_version <= ?", (rv - EVENT_HISTORY,))

    def events_since(self, rv: int) -> list[tuple[int, str, dict[str, Any]]]:
        with self._lock:
            oldest = self._conn.execute("SELECT MIN(resource_version) AS m FROM events").fetchone()
            if oldest["m"] is not None and rv + 1 < oldest["m"]:
                raise Gone(f"resource version {rv} is too old")
            rows = self._conn.execute(
                "SELECT * FROM events WHERE resource_version > ? ORDER BY resource_version", (rv,)
            ).fetchall()
        return [(r["resource_version"], r["type"], json.loads(r["body"])) for r in rows]

    # -- objects --------------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT body FROM objects WHERE kind=? AND namespace=? AND name=?",
                (kind, namespace, name),
            ).fetchone()
        return json.loads(row["body"]) if row else None

    def list_objects(
        self, kind: str | None = None, namespace: str | None = None
    ) -> list[dict[str, Any]]:
        sql, args = "SELECT body FROM objects WHERE 1=1", []
        if kind:
            sql += " AND kind=?"
            args.append(kind)
        if namespace:
            sql += " AND namespace=?"
            args.append(namespace)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY kind, namespace, name", args).fetchall()
        return [json.loads(r["body"]) for r in rows]

    def put(self, body: dict[str, Any], *, created: bool) -> dict[str, Any]:
        """Store ``body`` with a new resourceVersion and record an event."""
        meta = body["metadata"]
        with self.tx() as c:
            rv = self._next_rv(c)
            meta["resourceVersion"] = str(rv)
            if created:
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", now_iso())
            c.execute(
                "INSERT OR REPLACE INTO objects (kind, namespace, name, body, resource_version)"
                " VALUES (?, ?, ?, ?, ?)",
                (body["kind"], meta["namespace"], meta["name"], json.dumps(body), rv),
            )
            self._event(c, rv, "ADDED" if created else "MODIFIED", body)
            self.changed.notify_all()
        return body

    def delete(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self.tx() as c:
            row = c.execute(
                "SELECT body FROM objects WHERE kind=? AND namespace=? AND name=?",
                (kind, namespace, name),
            ).fetchone()
            if row is None:
                return None
            body: dict[str, Any] = json.loads(row["body"])
            c.execute(
                "DELETE FROM objects WHERE kind=? AND namespace=? AND name=?",
                (kind, namespace, name),
            )
            rv = self._next_rv(c)
            body["metadata"]["resourceVersion"] = str(rv)
            self._event(c, rv, "DELETED", body)
            self.changed.notify_all()
        return body

    # -- secrets --------------------------------------------------------------------------

    def put_secret(self, namespace: str, name: str, data: dict[str, str]) -> None:
        with self.tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO secrets (namespace, name, data) VALUES (?, ?, ?)",
                (namespace, name, json.dumps(data)),
            )

    def add_notice(self, key: tuple[str, str, str], n: Notice, time: str) -> None:
        with self.tx() as conn:
            conn.execute(
                "INSERT INTO notices (kind, namespace, name, type, reason, message, time)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*key, n.type, n.reason, n.message, time),
            )
            conn.execute(
                "DELETE FROM notices WHERE id <= (SELECT MAX(id) FROM notices) - ?",
                (NOTICE_HISTORY,),
            )

    def notices(
        self, namespace: str | None, kind: str | None = None, name: str | None = None
    ) -> list[dict[str, Any]]:
        """Events, oldest first; of one namespace, kind or object when given."""
        sql, args = "SELECT * FROM notices WHERE 1=1", []
        for column, value in (("namespace", namespace), ("kind", kind), ("name", name)):
            if value:
                sql += f" AND {column}=?"
                args.append(value)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY id", args).fetchall()
        out = []
        for r in rows:
            n = Notice(r["type"], r["reason"], r["message"])
            out.append(event_row(r["kind"], r["namespace"], r["name"], n, r["time"]))
        return out

    def get_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT data FROM secrets WHERE namespace=? AND name=?", (namespace, name)
            ).fetchone()
        return json.loads(row["data"]) if row else None

    def list_secrets(self, namespace: str | None = None) -> list[tuple[str, str, list[str]]]:
        sql, args = "SELECT * FROM secrets", []
        if namespace:
            sql += " WHERE namespace=?"
            args.append(namespace)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY namespace, name", args).fetchall()
        return [(r["namespace"], r["name"], sorted(json.loads(r["data"]))) for r in rows]

    def delete_secret(self, namespace: str, name: str) -> bool:
        with self.tx() as c:
            cur = c.execute("DELETE FROM secrets WHERE namespace=? AND name=?", (namespace, name))
            return cur.rowcount > 0

    # -- runs -----------------------------------------------------------------------------

    def add_run(self, **fields: Any) -> Run:
        fields.setdefault("phase", "running")
        if "result" in fields:
            fields["result"] = json.dumps(fields["result"])
        cols = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        with self.tx() as c:
            cur = c.execute(f"INSERT INTO runs ({cols}) VALUES ({marks})", list(fields.values()))
            run_id = cur.lastrowid
        assert run_id is not None
        run = self.get_run(run_id)
        assert run is not None
        return run

    def update_run(self, run_id: int, *, only_if_phase: str | None = None, **fields: Any) -> bool:
        """Update a run; with ``only_if_phase``, only while it is in that phase (a compare-and-
        set, so of two threads finishing the same run exactly one wins). True if it changed."""
        if "result" in fields:
            fields["result"] = json.dumps(fields["result"])
        sets = ", ".join(f"{k}=?" for k in fields)
        sql, args = f"UPDATE runs SET {sets} WHERE id=?", [*fields.values(), run_id]
        if only_if_phase is not None:
            sql += " AND phase=?"
            args.append(only_if_phase)
        with self.tx() as c:
            return c.execute(sql, args).rowcount > 0

    def get_run(self, run_id: int) -> Run | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        return _run(row) if row else None

    def runs(
        self,
        key: tuple[str, str, str] | None = None,
        role: str | None = None,
        phase: str | None = None,
    ) -> list[Run]:
        sql, args = "SELECT * FROM runs WHERE 1=1", []
        if key:
            sql += " AND kind=? AND namespace=? AND name=?"
            args += list(key)
        if role:
            sql += " AND role=?"
            args.append(role)
        if phase:
            sql += " AND phase=?"
            args.append(phase)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY id", args).fetchall()
        return [_run(r) for r in rows]

    def delete_runs(self, key: tuple[str, str, str]) -> None:
        with self.tx() as c:
            c.execute("DELETE FROM runs WHERE kind=? AND namespace=? AND name=?", key)

    def mounted_urls(self) -> dict[str, list[tuple[str, str, str]]]:
        """Artifact version URLs that running workloads mount, and which objects mount each."""
        users: dict[str, list[tuple[str, str, str]]] = {}
        for run in self.runs(phase="running"):
            for url in (run.result or {}).get("mounts", []):
                if run.key not in users.setdefault(url, []):
                    users[url].append(run.key)
        return users

    # -- retired artifact versions ----------------------------------------------------------

    def retire(self, url: str) -> None:
        with self.tx() as c:
            c.execute("INSERT OR IGNORE INTO retired (url) VALUES (?)", (url,))

    def retired(self) -> list[str]:
        with self._lock:
            return [r["url"] for r in self._conn.execute("SELECT url FROM retired ORDER BY url")]

    def unretire(self, url: str) -> None:
        with self.tx() as c:
            c.execute("DELETE FROM retired WHERE url=?", (url,))


def _run(row: sqlite3.Row) -> Run:
    d = dict(row)
    d["result"] = json.loads(d["result"]) if d["result"] else None
    return Run(**d)
