"""Committing a finished job's artifacts/ to the store, safely across supervisor crashes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from substratus.storage import ArtifactStore


def commit_artifacts(
    store: ArtifactStore,
    object_url: str,
    version: str,
    artifacts: Path,
    in_use: set[str],
) -> dict[str, Any]:
    """Commit ``artifacts`` as ``version`` and drop older versions no running workload mounts.

    Idempotent: re-run after a crash, it finishes what the crashed commit started (on a local
    store the files were being moved, so the moved ones are put back first) or, if the
    manifest was already written, just reports it.
    """
    version_url = store.version_url(object_url, version)
    manifest = store.read_manifest(version_url)
    if manifest is None:
        local_version = store.local_path(version_url)
        if local_version is not None and local_version.is_dir():
            _move_back(local_version, artifacts)
        committed = store.commit(
            artifacts, object_url, version, move=store.local_path(object_url) is not None
        )
        manifest = committed.manifest
    _drop_old_versions(store, object_url, version, in_use)
    local = store.local_path(version_url)
    if local is not None:
        _make_read_only(local)
    return {
        "url": version_url,
        "files": [f.path for f in manifest.files],
        "size": manifest.total_size,
    }


def _move_back(version_dir: Path, artifacts: Path) -> None:
    for path in sorted(version_dir.rglob("*")):
        if path.is_file():
            target = artifacts / path.relative_to(version_dir)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)


def _drop_old_versions(store: ArtifactStore, object_url: str, keep: str, in_use: set[str]) -> None:
    """Older versions go, except those a running workload still has mounted."""
    used = {v for v in store.versions(object_url) if store.version_url(object_url, v) in in_use}
    if not used:
        store.prune(object_url, keep=keep)
        return
    for v in store.versions(object_url):
        if v != keep and v not in used:
            store.delete(store.version_url(object_url, v))


def _make_read_only(root: Path) -> None:
    """Committed artifacts are immutable: workloads mounting them must not change them."""
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(0o444)
