"""`sub`: apply, get, describe, logs, wait and delete Substratus objects, like kubectl.

Exit codes: 0 success; 1 the operation failed (e.g. a job failed while waiting); 2 usage;
3 not found; 4 invalid input; 5 timed out; 6 the control plane is unreachable.

The commands are typer's (``app.py``); the commonest command lines (``fast.py``) run without
importing typer, which is a third of what kubectl takes for a whole `get`.
"""

from __future__ import annotations

import sys

CLUSTER_FLAGS = ("--context", "--kubeconfig")


def split_cluster_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """kubectl takes ``--context`` and ``--kubeconfig`` anywhere (``sub get models --context
    prod``); typer takes global options before the verb. Returns them as ``[flag, value, ...]``
    and the other arguments."""
    flags: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest += argv[i:]
            break
        if arg in CLUSTER_FLAGS and i + 1 < len(argv):
            flags += argv[i : i + 2]
            i += 2
            continue
        flag, eq, value = arg.partition("=")
        if eq and flag in CLUSTER_FLAGS:
            flags += [flag, value]
        else:
            rest.append(arg)
        i += 1
    return flags, rest


def hoist_cluster_flags(argv: list[str]) -> list[str]:
    flags, rest = split_cluster_flags(argv)
    return flags + rest


def main() -> None:
    argv = hoist_cluster_flags(sys.argv[1:])
    from substratus.cli.fast import run

    if run(argv):
        return
    from substratus.cli.app import app

    app(args=argv, prog_name="sub")


if __name__ == "__main__":
    main()
