"""The command lines typed most (`get`, `apply`, `version`), parsed without typer.

Importing typer and click takes about as long as kubectl takes for a whole `kubectl get`. A
line this parser understands in full runs here, with the same functions the typer commands
call; anything else (help, completion, an unknown or clustered flag, ``--``, a value that
looks like a flag) goes to typer, which explains the mistake. A flag takes its value as
``-o V``, ``-oV``, ``--output V`` or ``--output=V``, as click reads it; the last of a repeated
flag wins, except for repeatable ones (``-f``). ``tests/unit/test_cli_fast.py`` checks that
every line accepted here gives the arguments typer's own parse gives.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple


class Verb(NamedTuple):
    values: dict[str, str]  # flag -> the parameter it gives a value to
    switches: dict[str, tuple[str, bool]]  # flag -> (parameter, the value it sets)
    defaults: dict[str, Any]
    positional: str | None = None  # the parameter the arguments go to
    repeatable: frozenset[str] = frozenset()
    required: frozenset[str] = frozenset()


def _flags(**params: tuple[str, ...]) -> dict[str, str]:
    return {flag: param for param, flags in params.items() for flag in flags}


VERBS = {
    "get": Verb(
        values=_flags(
            namespace=("-n", "--namespace"),
            output=("-o", "--output"),
            selector=("-l", "--selector"),
        ),
        switches={
            "-A": ("all_namespaces", True),
            "--all-namespaces": ("all_namespaces", True),
            "-w": ("watch", True),
            "--watch": ("watch", True),
        },
        defaults={
            "target": None,
            "namespace": None,
            "all_namespaces": False,
            "output": None,
            "selector": None,
            "watch": False,
        },
        positional="target",
    ),
    "apply": Verb(
        values=_flags(
            filename=("-f", "--filename"),
            namespace=("-n", "--namespace"),
            upload_dir=("--upload-dir",),
            timeout=("--timeout",),
            dry_run=("--dry-run",),
        ),
        switches={
            "-R": ("recursive", True),
            "--recursive": ("recursive", True),
            "--wait": ("wait", True),
            "--no-wait": ("wait", False),
            "--follow-build": ("follow_build", True),
            "--no-follow-build": ("follow_build", False),
        },
        defaults={
            "filename": [],
            "namespace": None,
            "recursive": False,
            "upload_dir": None,
            "wait": False,
            "timeout": "30m",
            "follow_build": True,
            "dry_run": "none",
        },
        repeatable=frozenset({"filename"}),
        required=frozenset({"filename"}),
    ),
    "version": Verb(
        values={}, switches={"--client": ("client_only", True)}, defaults={"client_only": False}
    ),
}
GLOBAL = {"--context": "context", "--kubeconfig": "kubeconfig"}


def _is_flag(token: str) -> bool:
    return token.startswith("-") and token != "-"


def parse(argv: list[str]) -> tuple[str, dict[str, Any], dict[str, str | None]] | None:
    """(verb, its parameters, the global options) of a line this parser reads in full; None
    for typer to read. The global options come first (``main.hoist_cluster_flags``)."""
    cluster: dict[str, str | None] = {"context": None, "kubeconfig": None}
    i = 0
    while i + 1 < len(argv) and argv[i] in GLOBAL and not _is_flag(argv[i + 1]):
        cluster[GLOBAL[argv[i]]] = argv[i + 1]
        i += 2
    if i >= len(argv) or argv[i] not in VERBS:
        return None
    verb, spec, rest = argv[i], VERBS[argv[i]], argv[i + 1 :]
    params = {k: list(v) if isinstance(v, list) else v for k, v in spec.defaults.items()}
    args: list[str] = []
    while rest:
        token = rest.pop(0)
        if not _is_flag(token):
            args.append(token)
            continue
        if token.startswith("--"):
            flag, eq, value = token.partition("=")
            attached: str | None = value if eq else None
        else:  # -oyaml: the value attached to a short flag
            flag, attached = token[:2], token[2:] or None
        if flag in spec.switches and attached is None:
            name, setting = spec.switches[flag]
            params[name] = setting
            continue
        if flag not in spec.values or attached == "" or (attached or "").startswith("="):
            return None
        if attached is None:
            if not rest or _is_flag(rest[0]):
                return None
            attached = rest.pop(0)
        name = spec.values[flag]
        if name in spec.repeatable:
            params[name].append(attached)
        else:
            params[name] = attached
    if args:
        if spec.positional is None:
            return None
        params[spec.positional] = args
    if any(not params[name] for name in spec.required):
        return None
    return verb, params, cluster


def run(argv: list[str]) -> bool:
    """Run the line if it is one of ours; False for typer to run it."""
    if any(k.startswith("_SUB_COMPLETE") for k in os.environ):  # the shell asks typer
        return False
    parsed = parse(argv)
    if parsed is None:
        return False
    verb, params, cluster = parsed
    from substratus.cli.common import CLUSTER

    CLUSTER.update(cluster)
    if verb == "get":
        from substratus.cli.get import get

        get(**params)
    elif verb == "apply":
        from substratus.cli.applying import apply

        apply(**params)
    else:
        from substratus.cli.common import show_version

        show_version(**params)
    return True
