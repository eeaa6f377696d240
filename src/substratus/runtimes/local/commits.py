"""Committing a finished job's artifacts/ to the store, safely across supervisor crashes."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from substratus.runtimes.local.db import StateDB
from substratus.storage import ArtifactStore, StorageError

log = logging.getLogger("substratus.supervisor")


def commit_artifacts(
    store: ArtifactStore,
    object_url: str,
    version: str,
    artifacts: Path,
    in_use: set[str],
    retire: Callable[[str], None],
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
    delete_versions(store, object_url, {version}, in_use, retire)
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


def delete_versions(
    store: ArtifactStore,
    object_url: str,
    keep: set[str],
    in_use: set[str],
    retire: Callable[[str], None],
) -> list[str]:
    """Delete every version under ``object_url`` but ``keep``; a version that a running
    workload mounts is retired instead (deleted by :func:`sweep_retired` once unused), so
    no workload has its ``model/`` or ``data/`` emptied under it. Returns the retired URLs."""
    for version in keep:  # never empty an object for a version that is not there
        if store.read_manifest(store.version_url(object_url, version)) is None:
            raise StorageError(f"refusing to prune {object_url}: {version!r} is not committed")
    used = {v for v in store.versions(object_url) if store.version_url(object_url, v) in in_use}
    retired = [store.version_url(object_url, v) for v in sorted(used - keep)]
    for url in retired:  # recorded before anything is deleted: a crash loses no record
        retire(url)
    if keep or used:
        store.retain_only(object_url, keep | used)
    else:
        store.delete(object_url)
    return retired


def sweep_retired(store: ArtifactStore, db: StateDB) -> None:
    """Delete the retired versions that no running workload mounts any more."""
    mounted = db.mounted_urls()
    for url in db.retired():
        if url in mounted:
            continue
        try:
            store.delete(url)
        except StorageError:
            log.exception("deleting retired artifacts %s failed; trying again later", url)
            continue
        db.unretire(url)


def _make_read_only(root: Path) -> None:
    """Committed artifacts are immutable: workloads mounting them must not change them."""
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(0o444)
