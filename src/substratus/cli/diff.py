"""What applying would do, without doing it: `sub apply --dry-run=client|server` (kubectl's
`created (dry run)`) and `sub diff -f FILE` (as `kubectl diff`: the live object against the one
the runtime would store, from a server-side dry run, as a unified diff of what the user writes:
metadata's name, labels, annotations, and spec; exit 0: no difference, 1: differences, more: an
error)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from substratus.cli.common import client, guarded, out
from substratus.core.client import NotFoundError

EXIT_DIFFERENT = 1


def comparable(obj: dict[str, Any] | None) -> str:
    if obj is None:
        return ""
    meta = obj.get("metadata") or {}
    shown: dict[str, Any] = {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": {
            k: meta[k] for k in ("name", "namespace", "labels", "annotations") if meta.get(k)
        },
    }
    for key in ("spec", "type", "keys"):
        if key in obj:
            shown[key] = obj[key]
    import yaml  # only where YAML is printed: it is a start-up cost of every command

    return yaml.safe_dump(shown, sort_keys=True)


def dry_run_apply(docs: list[Any], server: bool) -> None:
    """What apply would do (kubectl's `created (dry run)`): checked here, or also by the
    runtime (the API server's admission, the supervisor's checks); nothing is stored or
    uploaded."""
    c = client(start=True)
    for doc in docs:
        meta = doc.body.get("metadata") or {}
        label = f"{str(doc.body.get('kind')).lower()}/{meta.get('name')}"
        if server:
            action = c.apply(doc.body, doc.source, dry_run=True).action
        elif doc.body.get("kind") == "Secret":
            names = [s["metadata"]["name"] for s in c.secrets(meta.get("namespace", "default"))]
            action = "configured" if meta.get("name") in names else "created"
        else:
            try:
                c.get(str(doc.body.get("kind")), meta.get("namespace", "default"), meta["name"])
                action = "configured"
            except NotFoundError:
                action = "created"
        out.print(f"{label} {action} ({'server ' if server else ''}dry run)", markup=False)


def diff(
    filename: Annotated[
        list[str], typer.Option("--filename", "-f", help="File, directory, URL or - (stdin).")
    ],
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Namespace for objects without one.")
    ] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-R")] = False,
) -> None:
    """Show what `apply -f` would change (exit 1 when it would change something).

    Example: `sub diff -f model.yaml`
    """
    import difflib

    from substratus.api.loading import parse_object
    from substratus.cli.manifests import read_documents

    changed = False

    def run() -> None:
        nonlocal changed
        docs = read_documents(filename, namespace, recursive)
        for doc in docs:
            if not (doc.body.get("kind") == "Secret" and doc.body.get("apiVersion") == "v1"):
                parse_object(doc.body, doc.source)
        c = client(start=True)
        for doc in docs:
            kind = str(doc.body.get("kind"))
            meta = doc.body.get("metadata") or {}
            ns, name = meta.get("namespace", namespace or "default"), str(meta.get("name"))
            live: dict[str, Any] | None = None
            if kind != "Secret":
                try:
                    live = c.get(kind, ns, name)
                except NotFoundError:
                    live = None
            merged = c.apply(doc.body, doc.source, dry_run=True).object
            where = f"{kind.lower()}.{ns}.{name}"
            lines = list(
                difflib.unified_diff(
                    comparable(live).splitlines(keepends=True),
                    comparable(merged).splitlines(keepends=True),
                    f"LIVE/{where}",
                    f"MERGED/{where}",
                )
            )
            if lines:
                changed = True
                out.print("".join(lines), markup=False, highlight=False, end="")

    guarded(run)
    if changed:
        raise typer.Exit(EXIT_DIFFERENT)
