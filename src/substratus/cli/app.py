"""The `sub` command line as typer commands: apply, get, describe, logs, wait and delete
Substratus objects, like kubectl (``main.py`` runs the commonest without typer).

Exit codes: 0 success; 1 the operation failed (e.g. a job failed while waiting); 2 usage;
3 not found; 4 invalid input; 5 timed out; 6 the control plane is unreachable.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from substratus.api.kindnames import kind_names
from substratus.cli.common import (
    CLUSTER,
    EXIT_USAGE,
    client,
    err,
    fail,
    guarded,
    out,
    parse_duration,
    show_version,
)
from substratus.cli.completion import complete_kind, complete_target
from substratus.cli.diff import diff
from substratus.cli.events import describe, events
from substratus.cli.local import local_app
from substratus.cli.notebook.command import notebook
from substratus.cli.opening import open_
from substratus.cli.options import Namespace, Selector
from substratus.core.client import NotFoundError

app = typer.Typer(
    help="Substratus: import, fine-tune and serve models, and run notebooks, from manifests.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(local_app, name="local")
app.command()(notebook)
app.command()(diff)
app.command()(events)
app.command()(describe)
app.command(name="open")(open_)


@app.callback()
def cluster_options(
    context: Annotated[
        str | None,
        typer.Option(
            "--context",
            help="Use this kubeconfig context: the cluster, through the operator, instead of the "
            "local runtime (also SUBSTRATUS_CONTEXT).",
        ),
    ] = None,
    kubeconfig: Annotated[
        str | None,
        typer.Option(
            "--kubeconfig", help="The kubeconfig file (default: KUBECONFIG, ~/.kube/config)."
        ),
    ] = None,
) -> None:
    CLUSTER["context"], CLUSTER["kubeconfig"] = context, kubeconfig


@app.command()
def get(
    target: Annotated[
        list[str] | None,
        typer.Argument(help="KIND, KIND/NAME or KIND NAME.", autocompletion=complete_target),
    ] = None,
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Namespace (default: default).")
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="List objects of every namespace.")
    ] = False,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="wide, yaml, json, name, jsonpath=TEMPLATE or custom-columns=NAME:PATH,...",
        ),
    ] = None,
    selector: Selector = None,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="After listing, print each change as it comes.")
    ] = False,
) -> None:
    """List objects, or show one.

    Examples:

        sub get                      # every kind (the `ai` category)

        sub get models -o wide

        sub get model/falcon-7b -o yaml

        sub get models -l team=nlp -o name

        sub get servers -o jsonpath='{range .items[*]}{.metadata.name} {.status.url}{"\\n"}{end}'

        sub get models -w
    """
    from substratus.cli.get import get as listed

    listed(target, namespace, all_namespaces, output, selector, watch)


@app.command()
def apply(
    filename: Annotated[
        list[str],
        typer.Option("--filename", "-f", help="File, directory, URL or - (stdin). Repeatable."),
    ],
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Namespace for objects without one.")
    ] = None,
    recursive: Annotated[
        bool, typer.Option("--recursive", "-R", help="Read directories recursively.")
    ] = False,
    upload_dir: Annotated[
        str | None,
        typer.Option(help="Build context for objects with image.upload (default: the file's dir)."),
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait until every object is Ready.")] = False,
    timeout: Annotated[str, typer.Option(help="With --wait: e.g. 300s, 10m.")] = "30m",
    follow_build: Annotated[
        bool,
        typer.Option(help="After an upload, show the image build's log until it is built."),
    ] = True,
    dry_run: Annotated[
        str,
        typer.Option(
            help="none; client (check here, store nothing); server (the runtime's checks too).",
        ),
    ] = "none",
) -> None:
    """Create or update objects from manifests (multi-document YAML).

    Examples:

        sub apply -f examples/local/model.yaml

        sub apply -f examples/local/ --wait

        cat model.yaml | sub apply -f -
    """
    from substratus.cli.applying import apply as applied

    applied(filename, namespace, recursive, upload_dir, wait, timeout, follow_build, dry_run)


@app.command()
def logs(
    target: Annotated[
        list[str], typer.Argument(help="KIND/NAME or KIND NAME.", autocompletion=complete_target)
    ],
    namespace: Namespace = "default",
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream new output.")] = False,
    tail: Annotated[int | None, typer.Option(help="Lines of recent output to show.")] = None,
) -> None:
    """Print the logs of an object's workload (its newest run, or its build).

    Example: `sub logs model/falcon-7b -f`
    """
    from substratus.cli.targets import parse_named

    def run() -> None:
        kind, name = parse_named(target, "logs")
        stream = client().logs(kind, namespace, name, follow=follow, tail=tail)
        if follow and out.is_terminal:  # progress lines as live bars
            from substratus.cli.logbars import render

            render(stream, out)
            return
        for chunk in stream:
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()

    guarded(run)


@app.command()
def wait(
    target: Annotated[
        list[str],
        typer.Argument(
            help="KIND/NAME, KIND NAME, or KIND with -l.", autocompletion=complete_target
        ),
    ],
    for_: Annotated[str, typer.Option("--for", help="ready or delete.")] = "ready",
    namespace: Namespace = "default",
    timeout: Annotated[str, typer.Option(help="e.g. 30s, 5m, 1h.")] = "30m",
    selector: Selector = None,
) -> None:
    """Wait until an object is Ready (or deleted). Fails early when a job or build fails.

    Examples: `sub wait model/falcon-7b --for=ready --timeout=10m`, `sub wait models -l team=nlp`
    """
    from substratus.cli.waiting import wait_for

    condition = for_.lower().removeprefix("condition=")
    if condition not in ("ready", "delete"):
        fail(f"--for: {for_!r} is not one of ready, delete", EXIT_USAGE)

    def run() -> None:
        c = client()
        deadline = parse_duration(timeout)
        for kind, name in _targets(c, target, namespace, selector, "wait"):
            try:
                c.get(kind, namespace, name)
            except NotFoundError:
                if condition != "delete":
                    raise
                out.print(f"{kind.lower()}/{name} deleted")
                continue
            wait_for(c, kind, namespace, name, condition, deadline, err)
            out.print(f"{kind.lower()}/{name} condition met")

    guarded(run)


def _targets(
    c: Any, target: list[str], namespace: str, selector: str | None, verb: str
) -> list[tuple[str, str]]:
    """(kind, name) of KIND/NAME, or of every object of KIND that ``selector`` matches."""
    from substratus.cli.selectors import parse_selector
    from substratus.cli.targets import UsageError, parse_named, parse_target

    if not selector:
        return [parse_named(target, verb)]
    kinds, name = parse_target(target)
    if name:
        raise UsageError(f"{verb}: give KIND/NAME or a selector (-l), not both")
    matches = parse_selector(selector)
    found = [(o["kind"], o["metadata"]["name"]) for k in kinds for o in c.list_objects(k, namespace)
             if matches(o)]  # fmt: skip
    if not found:
        err.print(f"No resources found in {namespace} namespace.")
    return found


def _secret_name(args: list[str]) -> str:
    """NAME from `secret/NAME` or `secret NAME` (Secrets are no kind of ours: no kind_of)."""
    from substratus.cli.targets import UsageError

    name = args[0].partition("/")[2]
    rest = args[1:]
    if not name and rest:
        name, rest = rest[0], rest[1:]
    if not name or rest:
        raise UsageError("delete needs secret/NAME or secret NAME, e.g. secret/hf")
    return name


@app.command()
def delete(
    target: Annotated[
        list[str] | None,
        typer.Argument(help="KIND/NAME or KIND NAME.", autocompletion=complete_target),
    ] = None,
    filename: Annotated[list[str] | None, typer.Option("--filename", "-f")] = None,
    namespace: Namespace = "default",
    retain_artifacts: Annotated[
        bool, typer.Option(help="Keep the object's artifacts in the bucket.")
    ] = False,
    ignore_not_found: Annotated[
        bool, typer.Option(help="Exit 0 when an object does not exist.")
    ] = False,
    selector: Selector = None,
) -> None:
    """Delete objects, their workloads and (unless retained) their artifacts; or Secrets.

    Examples: `sub delete model/falcon-7b`, `sub delete -f examples/local/`, `sub delete secret/hf`,
    `sub delete models -l team=nlp`
    """
    from substratus.cli.manifests import read_documents

    def run() -> None:
        c = client()  # connects on first use: a bad file still fails first
        refs: list[tuple[str, str, str]] = []
        if filename:
            for doc in read_documents(filename, None):
                meta = doc.body.get("metadata") or {}
                kind, name = str(doc.body.get("kind")), str(meta.get("name"))
                refs.append((kind, meta.get("namespace", namespace), name))
        elif target and target[0].partition("/")[0].lower() in ("secret", "secrets"):
            refs.append(("Secret", namespace, _secret_name(target)))
        else:
            targets = _targets(c, list(target or []), namespace, selector, "delete")
            refs = [(kind, namespace, name) for kind, name in targets]
        for kind, ns, name in refs:
            try:
                if kind == "Secret":
                    c.delete_secret(ns, name)
                    in_use: list[str] = []
                else:
                    in_use = c.delete(kind_names(kind).kind, ns, name, retain_artifacts).in_use_by
            except NotFoundError:
                if not ignore_not_found:
                    raise
                continue
            out.print(f"{kind.lower()}/{name} deleted")
            if in_use:
                out.print(
                    f"  its artifacts are still mounted by {', '.join(in_use)}: "
                    "they are deleted when those stop"
                )

    guarded(run)


@app.command()
def explain(
    path: Annotated[
        str,
        typer.Argument(
            help="KIND or KIND.FIELD..., e.g. model, server.spec.autoscaling.",
            autocompletion=complete_kind,
        ),
    ],
) -> None:
    """Document a kind or one of its fields (from the models the CRDs are made from)."""
    from substratus.cli.explain import explain as explained

    guarded(lambda: typer.echo(explained(path), nl=False))  # tabs kept, as kubectl writes


@app.command()
def version(
    client_only: Annotated[
        bool, typer.Option("--client", help="Only this client's version.")
    ] = False,
) -> None:
    """The client's version, and what serves it: the local supervisor or the cluster."""
    show_version(client_only)


@app.command()
def crds() -> None:
    """Print the CustomResourceDefinitions (`sub crds | kubectl apply -f -`)."""
    from substratus.api.crds import crds_yaml

    sys.stdout.write(crds_yaml())
