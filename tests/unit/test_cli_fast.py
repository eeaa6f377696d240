"""The typer-free fast path (cli/fast.py) reads a command line exactly as typer does, or
leaves it to typer: for each line, its parameters equal those of typer's own parse."""

from __future__ import annotations

from typing import Any

import pytest
import typer.main

from substratus.cli import fast
from substratus.cli.app import app
from substratus.cli.main import hoist_cluster_flags

LINES = [
    "get",
    "get models",
    "get models -n team -o wide",
    "get model/m -oyaml",
    "get models --namespace=x --output=json -l team=a,tier!=db",
    "get ml m -A -w",
    "get models -o name --selector team -o json",  # the last one wins
    "get models -o jsonpath={.items[*].metadata.name}",
    "get models --context prod -n x",
    "get models --kubeconfig=/k --context=prod",
    "apply -f m.yaml",
    "apply -f - -n x",
    "apply -f a.yaml --filename b.yaml -R --wait --timeout 5m",
    "apply -f a.yaml --no-follow-build --dry-run=server --upload-dir ctx",
    "apply --filename=a.yaml --no-wait",
    "version",
    "version --client",
    # Typer's to read (help, mistakes, forms the fast path does not take):
    "get --help",
    "get -h",
    "get models -Aw",
    "get models -o",
    "get models -o -n",
    "get models -o=yaml",
    "get models --bogus",
    "get models -- -n",
    "apply",
    "apply -n x",
    "apply -f",
    "apply a.yaml",
    "version --client=yes",
    "logs model/m",
    "--context",
    "",
]


def _typer_params(argv: list[str]) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
    """What typer makes of ``argv``: (verb, its parameters, the global options); None when
    it refuses the line or shows help (typer 0.28 parses with its own copy of click)."""
    group: Any = typer.main.get_command(app)
    try:
        root = group.make_context("sub", list(argv))
        verb, *rest = [*root._protected_args, *root.args]
        command = group.get_command(root, verb)
        ctx = command.make_context(verb, rest, parent=root)
    except (Exception, SystemExit):  # a usage error, help, or no verb
        return None
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in ctx.params.items()}
    return verb, params, root.params


@pytest.mark.parametrize("line", LINES)
def test_the_fast_path_reads_a_line_as_typer_does_or_leaves_it(line: str) -> None:
    argv = hoist_cluster_flags(line.split())
    ours = fast.parse(argv)
    if ours is None:
        return  # typer reads it: nothing to compare
    theirs = _typer_params(argv)
    assert theirs is not None, f"the fast path accepted what typer refuses: {line!r}"
    verb, params, cluster = ours
    assert verb == theirs[0]
    empty = (None, [], ())
    normal = {k: None if v in empty else v for k, v in params.items()}
    assert normal == {k: None if v in empty else v for k, v in theirs[1].items()}
    assert cluster == theirs[2]


def test_the_fast_path_takes_the_lines_people_type() -> None:
    taken = [line for line in LINES if fast.parse(hoist_cluster_flags(line.split()))]
    assert taken == LINES[: LINES.index("get --help")]
