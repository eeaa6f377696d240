"""Parsing kubectl-style targets: `models`, `model/foo`, `model foo`, `ai`."""

from __future__ import annotations

from substratus.api.kinds import KINDS
from substratus.api.loading import kind_of

CATEGORY = "ai"


def parse_target(args: list[str]) -> tuple[list[str], str | None]:
    """([kinds], name) from the CLI's positional arguments; [] kinds means all kinds."""
    if not args:
        return list(KINDS), None
    first, rest = args[0], args[1:]
    kind_text, _, name = first.partition("/")
    if kind_text.lower() in (CATEGORY, "all"):
        kinds: list[str] = []
    else:
        kinds = [kind_of(k).KIND for k in kind_text.split(",")]
    if not name and rest:
        name = rest[0]
        rest = rest[1:]
    if rest:
        raise ValueError(f"unexpected arguments: {' '.join(rest)}")
    if name and len(kinds) != 1:
        raise ValueError("a name needs exactly one kind, e.g. model/NAME")
    return kinds or list(KINDS), name or None
