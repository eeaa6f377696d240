"""The supervisor's work queue, and committing artifacts across a crash."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from substratus.core.workqueue import WorkQueue
from substratus.runtimes.local.commits import commit_artifacts, delete_versions, sweep_retired
from substratus.runtimes.local.db import Run, StateDB
from substratus.storage import ArtifactStore, StorageError


def test_queue_deduplicates_keys_and_delayed_wakeups() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    q.add("a")
    for _ in range(20):
        q.add("b", delay=0.05)
    q.add("b", delay=0.02)  # an earlier wake-up replaces the later ones
    got = [q.get(), q.get()]
    assert got == ["a", "b"]
    popped: list[str | None] = []
    t = threading.Thread(target=lambda: popped.append(q.get()))
    t.start()
    time.sleep(0.15)  # the superseded 0.05 s wake-ups must not pop "b" again
    q.close()
    t.join(1)
    assert popped == [None]


def test_a_key_added_while_processed_waits_for_done() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    assert q.get() == "a"
    q.add("a")  # an event arrives while a worker reconciles "a"
    q.add("b")
    assert q.get() == "b"  # a second worker gets the other key, not "a" again
    popped: list[str | None] = []
    t = threading.Thread(target=lambda: popped.append(q.get()))
    t.start()
    time.sleep(0.1)
    assert popped == []
    q.done("a")  # the first worker finishes: "a" is due again, for one worker
    t.join(1)
    assert popped == ["a"]
    q.done("b")
    q.done("a")
    q.add("a", delay=0.01)
    assert q.get() == "a"


def _artifacts(tmp: Path) -> Path:
    art = tmp / "artifacts"
    (art / "sub").mkdir(parents=True)
    (art / "config.json").write_text("{}")
    (art / "sub" / "weights.bin").write_bytes(b"w" * 100)
    return art


def test_commit_finishes_a_move_cut_short_by_a_crash(tmp_path: Path) -> None:
    store = ArtifactStore((tmp_path / "store").as_uri())
    art = _artifacts(tmp_path)
    obj = store.object_url("default", "models", "m")
    version_dir = Path(store.local_path(store.version_url(obj, "g1")) or "")
    (version_dir / "sub").mkdir(parents=True)
    (art / "sub" / "weights.bin").rename(version_dir / "sub" / "weights.bin")  # the crash
    result = commit_artifacts(store, obj, "g1", art, set(), _no_retire)
    assert sorted(result["files"]) == ["config.json", "sub/weights.bin"]
    assert result["size"] == 102
    # Settling again (a second crash after the manifest) reports the same commit.
    assert commit_artifacts(store, obj, "g1", art, set(), _no_retire) == result


def _no_retire(url: str) -> None:
    raise AssertionError(f"nothing is in use, yet {url} was retired")


def test_versions_mounted_by_running_workloads_are_kept_then_swept(tmp_path: Path) -> None:
    store = ArtifactStore((tmp_path / "store").as_uri())
    db = StateDB(tmp_path / "state.db")
    obj = store.object_url("default", "models", "m")
    for version in ("g1", "g2"):
        commit_artifacts(store, obj, version, _artifacts(tmp_path / version), set(), db.retire)
    assert store.versions(obj) == ["g2"]
    g2 = store.version_url(obj, "g2")
    run = _running_run(db, mounts=[g2])
    commit_artifacts(
        store, obj, "g3", _artifacts(tmp_path / "g3"), set(db.mounted_urls()), db.retire
    )
    assert store.versions(obj) == ["g2", "g3"]
    assert db.retired() == [g2]
    sweep_retired(store, db)  # still mounted: kept
    assert store.versions(obj) == ["g2", "g3"]
    db.update_run(run.id, phase="stopped")
    sweep_retired(store, db)  # the workload stopped: gone, and forgotten
    assert store.versions(obj) == ["g3"] and db.retired() == []
    commit_artifacts(store, obj, "g4", _artifacts(tmp_path / "g4"), set(), db.retire)
    assert store.versions(obj) == ["g4"]
    files = [p for p in (Path(store.local_path(obj) or "") / "g4").rglob("*") if p.is_file()]
    assert files and all(p.stat().st_mode & 0o222 == 0 for p in files)  # read-only


def test_deleting_an_object_keeps_only_what_is_mounted(tmp_path: Path) -> None:
    store = ArtifactStore((tmp_path / "store").as_uri())
    db = StateDB(tmp_path / "state.db")
    obj = store.object_url("default", "models", "m")
    commit_artifacts(store, obj, "g1", _artifacts(tmp_path / "g1"), set(), db.retire)
    g1 = store.version_url(obj, "g1")
    leftover = Path(store.local_path(obj) or "") / "g2-half-written"
    leftover.mkdir()
    assert delete_versions(store, obj, set(), {g1}, db.retire) == [g1]
    assert store.versions(obj) == ["g1"] and not leftover.exists()
    assert delete_versions(store, obj, set(), set(), db.retire) == []  # not mounted now
    assert not Path(store.local_path(obj) or "").exists()


def _running_run(db: StateDB, mounts: list[str]) -> Run:
    return db.add_run(
        kind="Server",
        namespace="default",
        name="s",
        role="service",
        generation=1,
        attempt=1,
        workdir="w",
        log="l",
        exit_file="e",
        started_at=time.time(),
        result={"mounts": mounts},
    )


def test_a_version_to_keep_must_be_committed(tmp_path: Path) -> None:
    store = ArtifactStore((tmp_path / "store").as_uri())
    db = StateDB(tmp_path / "state.db")
    obj = store.object_url("default", "models", "m")
    commit_artifacts(store, obj, "g1", _artifacts(tmp_path / "g1"), set(), db.retire)
    with pytest.raises(StorageError, match="'g2' is not committed"):
        delete_versions(store, obj, {"g2"}, set(), db.retire)
    assert store.versions(obj) == ["g1"]  # nothing was deleted
