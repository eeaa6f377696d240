"""The three-way rule of two-way sync: from what both sides agreed on last (the base) and what
each side holds now, what to do with every path. Pure: snapshots in, steps out.

A snapshot maps a relative ``/``-separated path to its content digest. A path that changed on
one side only goes to the other side (a deletion too); a path changed on both sides to the same
content is simply agreed; one changed differently on both sides is a conflict, where both
versions are kept; a file deleted on one side and edited on the other comes back (an edit is
never lost to a deletion). With no base (the first sync of a directory), a path on one side
only is copied, and a path that differs is a conflict.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from enum import Enum

Snapshot = dict[str, str]


class Step(Enum):
    PUSH = "push"  # local → notebook
    PULL = "pull"  # notebook → local
    DELETE_REMOTE = "delete-remote"
    DELETE_LOCAL = "delete-local"
    CONFLICT = "conflict"  # both changed: keep both
    AGREE = "agree"  # both hold the same content now: only the base moves
    FORGET = "forget"  # gone from both sides


@dataclass(frozen=True)
class Planned:
    step: Step
    path: str
    # A deletion on one side lost to an edit on the other: the edit is kept and said so.
    restored: bool = False


def plan(base: Snapshot, local: Snapshot, remote: Snapshot) -> list[Planned]:
    """The steps that bring both sides and the base together, in path order."""
    steps: list[Planned] = []
    for path in sorted(base.keys() | local.keys() | remote.keys()):
        b, lo, re = base.get(path), local.get(path), remote.get(path)
        if lo == re:
            if lo is None:
                steps.append(Planned(Step.FORGET, path))
            elif b != lo:
                steps.append(Planned(Step.AGREE, path))
        elif lo == b:  # only the notebook changed it
            steps.append(Planned(Step.DELETE_LOCAL if re is None else Step.PULL, path))
        elif re == b:  # only the local directory changed it
            steps.append(Planned(Step.DELETE_REMOTE if lo is None else Step.PUSH, path))
        elif lo is None:
            steps.append(Planned(Step.PULL, path, restored=b is not None))
        elif re is None:
            steps.append(Planned(Step.PUSH, path, restored=b is not None))
        else:
            steps.append(Planned(Step.CONFLICT, path))
    return steps


def conflict_name(path: str, stamp: str, taken: set[str]) -> str:
    """Where the notebook's version of a conflicting file is kept, beside the local one:
    ``train.py`` → ``train.notebook-conflict-20261201-104800.py`` (a number added if taken)."""
    directory, name = posixpath.split(path)
    stem, dot, suffix = name.rpartition(".")
    if not stem:  # no suffix, or a name like "Makefile"
        stem, dot, suffix = name, "", ""
    n = 0
    while True:
        extra = f"-{n}" if n else ""
        candidate = posixpath.join(
            directory, f"{stem}.notebook-conflict-{stamp}{extra}{dot}{suffix}"
        )
        if candidate not in taken:
            return candidate
        n += 1
