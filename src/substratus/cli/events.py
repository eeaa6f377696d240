"""`sub events`: what happened to objects, as `kubectl events` lists it (LAST SEEN, TYPE,
REASON, OBJECT, MESSAGE), from either runtime; and `sub describe`, which ends with an object's
own events."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from substratus.cli.common import client, err, guarded, out
from substratus.cli.completion import complete_target
from substratus.cli.options import Namespace


def table(rows: list[dict[str, Any]], all_namespaces: bool = False) -> str:
    from substratus.cli.output import age

    header = (["NAMESPACE"] if all_namespaces else []) + [
        "LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE",
    ]  # fmt: skip
    lines = [header]
    for r in rows:
        seen = age(r.get("time")) + (f" (x{r['count']})" if r.get("count", 1) > 1 else "")
        row = [r["namespace"]] if all_namespaces else []
        lines.append([*row, seen, r["type"], r["reason"], r["object"], r["message"]])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)) + "   " + line[-1]
        for line in lines
    ).rstrip()


def events(
    target: Annotated[
        list[str] | None,
        typer.Argument(
            help="KIND/NAME: only that object's (default: all).", autocompletion=complete_target
        ),
    ] = None,
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Namespace (default: default).")
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Events of every namespace.")
    ] = False,
) -> None:
    """List events, oldest first: each change of an object's Ready condition (and, on a
    cluster, what Kubernetes says of the Jobs and pods).

    Examples: `sub events`, `sub events model/falcon-7b`, `sub events -A`
    """
    from substratus.cli.targets import parse_named

    def run() -> None:
        kind, name = parse_named(target, "events") if target else (None, None)
        ns = None if all_namespaces else (namespace or "default")
        rows = client().events(ns, kind, name)
        if not rows:
            err.print(f"No events found{f' in {ns} namespace' if ns else ''}.")
            return
        out.print(table(rows, all_namespaces), markup=False, highlight=False, soft_wrap=True)

    guarded(run)


def describe(
    target: Annotated[
        list[str], typer.Argument(help="KIND/NAME or KIND NAME.", autocompletion=complete_target)
    ],
    namespace: Namespace = "default",
) -> None:
    """Show an object's spec, status and conditions (with failure log tails)."""
    from substratus.cli import output as fmt
    from substratus.cli.targets import parse_target

    def run() -> None:
        kinds, name = parse_target(target)
        c = client()
        objs = (
            [c.get(kinds[0], namespace, name)]
            if name
            else [o for k in kinds for o in c.list_objects(k, namespace)]
        )
        blocks = []
        for o in objs:
            meta = o["metadata"]
            happened = c.events(meta["namespace"], o["kind"], meta["name"])[-10:]
            listed = table(happened) if happened else "<none>"
            blocks.append(fmt.describe(o) + "\nEvents:\n" + _indent(listed))
        out.print("\n\n".join(blocks), markup=False, highlight=False, soft_wrap=True)

    guarded(run)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
