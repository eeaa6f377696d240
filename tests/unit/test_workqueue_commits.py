"""The supervisor's work queue, and committing artifacts across a crash."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from substratus.runtimes.local.commits import commit_artifacts
from substratus.runtimes.local.workqueue import WorkQueue
from substratus.storage import ArtifactStore


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
    result = commit_artifacts(store, obj, "g1", art, set())
    assert sorted(result["files"]) == ["config.json", "sub/weights.bin"]
    assert result["size"] == 102
    # Settling again (a second crash after the manifest) reports the same commit.
    assert commit_artifacts(store, obj, "g1", art, set()) == result


def test_versions_mounted_by_running_workloads_are_kept(tmp_path: Path) -> None:
    store = ArtifactStore((tmp_path / "store").as_uri())
    obj = store.object_url("default", "models", "m")
    for version in ("g1", "g2"):
        commit_artifacts(store, obj, version, _artifacts(tmp_path / version), set())
    assert store.versions(obj) == ["g2"]
    in_use = {store.version_url(obj, "g2")}
    commit_artifacts(store, obj, "g3", _artifacts(tmp_path / "g3"), in_use)
    assert store.versions(obj) == ["g2", "g3"]
    commit_artifacts(store, obj, "g4", _artifacts(tmp_path / "g4"), set())
    assert store.versions(obj) == ["g4"]
    files = [p for p in (Path(store.local_path(obj) or "") / "g4").rglob("*") if p.is_file()]
    assert files and all(p.stat().st_mode & 0o222 == 0 for p in files)  # read-only
