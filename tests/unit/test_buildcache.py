"""Pruning the local build cache once no object's build uses an entry."""

from __future__ import annotations

from pathlib import Path

from substratus.runtimes.local.buildcache import prune_build_cache


def _cache(root: Path) -> Path:
    for d in ("uploads/aaa/src", "uploads/bbb", "git/sha1/sub", "git/sha2", "venvs/h1-x1/bin"):
        (root / d).mkdir(parents=True)
    (root / "venvs" / "h2-x2").mkdir()  # a venv no link points to (a killed build)
    (root / "venvs" / "h1").symlink_to("h1-x1")
    (root / "venvs" / "h1.lock").write_text("")
    return root


def test_entries_that_no_build_uses_are_removed(tmp_path: Path) -> None:
    cache = _cache(tmp_path / "builds")
    used = [
        {"root": str(cache / "uploads" / "aaa"), "python": str(cache / "venvs/h1/bin/python")},
        {"root": str(cache / "git" / "sha1" / "sub"), "python": None},
        {"source": "upload:x:y"},  # a build still running records no root
    ]
    removed = prune_build_cache(cache, used)
    assert sorted(p.relative_to(cache).as_posix() for p in removed) == [
        "git/sha2",
        "uploads/bbb",
        "venvs/h2-x2",
    ]
    assert (cache / "uploads" / "aaa").is_dir() and (cache / "git" / "sha1" / "sub").is_dir()
    assert (cache / "venvs" / "h1").is_symlink() and (cache / "venvs" / "h1-x1").is_dir()


def test_with_no_builds_left_the_cache_is_emptied(tmp_path: Path) -> None:
    cache = _cache(tmp_path / "builds")
    prune_build_cache(cache, [])
    left = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*"))
    assert left == ["git", "uploads", "venvs", "venvs/h1.lock"]


def test_a_missing_cache_is_fine(tmp_path: Path) -> None:
    assert prune_build_cache(tmp_path / "none", []) == []
