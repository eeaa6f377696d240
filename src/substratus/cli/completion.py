"""Shell completion of kinds and of existing objects' names (bash, zsh, fish: `sub
--install-completion`), for every verb that takes a target. Names come from the runtime the
command line chooses, without starting the local supervisor; a runtime that does not answer
completes nothing rather than failing the shell."""

from __future__ import annotations

import typer

from substratus.api.kindnames import KIND_NAMES, kind_names

# What a user types for a kind: singular, plural and short names, as kubectl takes them.
KIND_WORDS = sorted(
    {w for k in KIND_NAMES.values() for w in (k.kind.lower(), k.plural, *k.short_names)}
)


def _names(ctx: typer.Context, kind: str) -> list[str]:
    from substratus.cli.common import CLUSTER, client

    root = ctx.find_root()
    CLUSTER["context"] = root.params.get("context")
    CLUSTER["kubeconfig"] = root.params.get("kubeconfig")
    namespace = ctx.params.get("namespace") or "default"
    try:
        return sorted(o["metadata"]["name"] for o in client().list_objects(kind, namespace))
    except Exception:  # completion must never break the shell: nothing to offer
        return []


def complete_target(ctx: typer.Context, args: list[str], incomplete: str) -> list[str]:
    """``KIND``, ``KIND/NAME``, or after ``KIND ``, ``NAME``."""

    given = [a for a in (ctx.params.get("target") or []) if a]
    if "/" in incomplete:
        kind_text, _, partial = incomplete.partition("/")
        try:
            kind = kind_names(kind_text).kind
        except ValueError:
            return []
        return [f"{kind_text}/{n}" for n in _names(ctx, kind) if n.startswith(partial)]
    if given and "/" not in given[-1]:
        try:
            kind = kind_names(given[-1]).kind
        except ValueError:
            kind = ""
        if kind:
            return [n for n in _names(ctx, kind) if n.startswith(incomplete)]
    return [w for w in KIND_WORDS if w.startswith(incomplete)]


def complete_kind(ctx: typer.Context, args: list[str], incomplete: str) -> list[str]:
    return [w for w in KIND_WORDS if w.startswith(incomplete)]
