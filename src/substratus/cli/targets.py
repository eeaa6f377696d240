"""Parsing kubectl-style targets: `models`, `model/foo`, `model foo`, `ai`."""

from __future__ import annotations

from substratus.api.kindnames import GROUP, KIND_NAMES, kind_names

CATEGORY = "ai"


class UsageError(ValueError):
    """The command line itself is wrong (exit code 2, as for other usage errors)."""


def parse_target(args: list[str]) -> tuple[list[str], str | None]:
    """([kinds], name) from the CLI's positional arguments; [] kinds means all kinds."""
    if not args:
        return list(KIND_NAMES), None
    first, rest = args[0], args[1:]
    kind_text, _, name = first.partition("/")
    if kind_text.lower() in (CATEGORY, "all"):
        kinds: list[str] = []
    else:
        try:
            # `model.substratus.ai/NAME` too: what `get -o name` prints.
            kinds = [kind_names(k.removesuffix(f".{GROUP}")).kind for k in kind_text.split(",")]
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if not name and rest:
        name = rest[0]
        rest = rest[1:]
    if rest:
        raise UsageError(f"unexpected arguments: {' '.join(rest)}")
    if name and len(kinds) != 1:
        raise UsageError("a name needs exactly one kind, e.g. model/NAME")
    return kinds or list(KIND_NAMES), name or None


def parse_named(args: list[str], verb: str) -> tuple[str, str]:
    """(kind, name) for verbs that act on one object."""
    kinds, name = parse_target(args)
    if not name or len(kinds) != 1:
        raise UsageError(f"{verb} needs KIND/NAME, e.g. model/falcon-7b")
    return kinds[0], name
