"""Options several typer commands share, as typer annotations (kept out of the modules the
typer-free fast path imports: see ``fast.py``)."""

from __future__ import annotations

from typing import Annotated

import typer

Namespace = Annotated[str, typer.Option("--namespace", "-n", help="Namespace.")]
Selector = Annotated[
    str | None,
    typer.Option(
        "--selector", "-l", help="Label selector, e.g. -l app=web,tier!=db, -l 'env in (a,b)'."
    ),
]
