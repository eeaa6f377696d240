"""Pruning the build cache (`builds.py`'s checkouts, unpacked uploads and venvs) once no
object's build refers to an entry any more."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("substratus.supervisor")

# The directories of `builds.py` whose entries a build result points into.
SOURCE_DIRS = ("uploads", "git")


def prune_build_cache(cache: Path, results: Iterable[dict[str, object]]) -> list[Path]:
    """Remove the entries of ``cache`` that none of the build ``results`` (the `result` of
    every build run still recorded) uses: an upload's or a checkout's directory, a venv's
    link and the directory it points to. Call it only while no build runs: a build in
    progress has entries that no result names yet. Returns what was removed."""
    used: set[Path] = set()
    for result in results:
        for key in ("root", "python"):
            value = result.get(key)
            if isinstance(value, str) and value:
                used.add(Path(value))
    removed: list[Path] = []
    for sub in SOURCE_DIRS:
        for entry in _children(cache / sub):
            if not any(entry == path or entry in path.parents for path in used):
                removed.append(entry)
    venvs = cache / "venvs"
    kept_targets: set[str] = set()
    for link in _children(venvs):
        if not link.is_symlink():
            continue
        if any(link in path.parents for path in used):
            kept_targets.add(str(link.readlink()))
        else:
            removed.append(link)
    for entry in _children(venvs):
        # A venv directory is "<h12>-<random>"; one no kept link points to is unused (or left
        # by a build that was killed).
        if entry.is_dir() and not entry.is_symlink() and entry.name not in kept_targets:
            removed.append(entry)
    for path in removed:
        if path.is_symlink() or path.is_file():
            path.unlink(missing_ok=True)
        else:
            shutil.rmtree(path, ignore_errors=True)
    if removed:
        log.info("pruned %d unused build cache entries", len(removed))
    return removed


def _children(directory: Path) -> list[Path]:
    try:
        return sorted(directory.iterdir())
    except FileNotFoundError:
        return []
