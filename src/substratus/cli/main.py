"""`sub`: apply, get, describe, logs, wait and delete Substratus objects, like kubectl.

Exit codes: 0 success; 1 the operation failed (e.g. a job failed while waiting); 2 usage;
3 not found; 4 invalid input; 5 timed out; 6 the control plane is unreachable.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console

from substratus.api.loading import ValidationFailed, kind_of, parse_object
from substratus.core.client import (
    Client,
    ClientError,
    InvalidError,
    NotFoundError,
    UnavailableError,
)

EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_INVALID, EXIT_TIMEOUT, EXIT_UNAVAILABLE = (
    1,
    2,
    3,
    4,
    5,
    6,
)

app = typer.Typer(
    help="Substratus: import, fine-tune and serve models, and run notebooks, from manifests.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)
local_app = typer.Typer(help="Manage the local supervisor (the embedded runtime).")
app.add_typer(local_app, name="local")

err = Console(stderr=True)
out = Console(highlight=False, soft_wrap=True)
T = TypeVar("T")

Namespace = Annotated[str, typer.Option("--namespace", "-n", help="Namespace.")]


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
    raise typer.Exit(code)


def client(start: bool = False) -> Client:
    """The control plane's client. Only commands that change state (``start``) may start the
    local supervisor; reading commands against a stopped one fail with exit 6."""
    from substratus.runtimes.local.client import LocalClient

    return LocalClient(autostart=start)


def guarded(fn: Callable[[], T]) -> T:
    """Run ``fn``, turning client errors into messages and the documented exit codes."""
    from substratus.cli.targets import UsageError
    from substratus.cli.waiting import WaitFailed, WaitTimeout
    from substratus.storage import StorageError

    try:
        return fn()
    except UsageError as exc:
        fail(str(exc), EXIT_USAGE)
    except ValidationFailed as exc:
        fail(str(exc), EXIT_INVALID)
    except InvalidError as exc:
        fail(str(exc), EXIT_INVALID)
    except NotFoundError as exc:
        fail(str(exc), EXIT_NOT_FOUND)
    except UnavailableError as exc:
        fail(str(exc), EXIT_UNAVAILABLE)
    except WaitTimeout as exc:
        fail(str(exc), EXIT_TIMEOUT)
    except (WaitFailed, ClientError, StorageError) as exc:
        fail(str(exc), EXIT_FAILED)
    except (ValueError, OSError) as exc:
        fail(str(exc), EXIT_INVALID)


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
) -> None:
    """Create or update objects from manifests (multi-document YAML).

    Examples:

        sub apply -f examples/local/model.yaml

        sub apply -f examples/local/ --wait

        cat model.yaml | sub apply -f -
    """
    from substratus.cli.manifests import read_documents
    from substratus.cli.upload import finish_upload, prepare_upload

    def run() -> None:
        docs = read_documents(filename, namespace, recursive)
        # Validate every document before applying any, so one bad document applies nothing.
        for doc in docs:
            if not (doc.body.get("kind") == "Secret" and doc.body.get("apiVersion") == "v1"):
                parse_object(doc.body, doc.source)
        tarballs = [prepare_upload(doc, upload_dir) for doc in docs]
        c = client(start=True)
        applied = []
        for doc, tarball in zip(docs, tarballs, strict=True):
            result = c.apply(doc.body, doc.source)
            obj = result.object
            label = f"{obj['kind'].lower()}/{obj['metadata']['name']}"
            out.print(f"{label} {result.action}")
            if tarball is not None:
                finish_upload(c, obj, tarball, err)
            applied.append(obj)
        if wait:
            from substratus.cli.waiting import wait_for

            for obj in applied:
                if obj["kind"] == "Secret":
                    continue
                meta = obj["metadata"]
                wait_for(
                    c,
                    obj["kind"],
                    meta["namespace"],
                    meta["name"],
                    "ready",
                    parse_duration(timeout),
                    err,
                )
                out.print(f"{obj['kind'].lower()}/{meta['name']} ready")

    guarded(run)


@app.command()
def get(
    target: Annotated[
        list[str] | None, typer.Argument(help="KIND, KIND/NAME or KIND NAME.")
    ] = None,
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Namespace (default: default).")
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="List objects of every namespace.")
    ] = False,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="wide, yaml or json.")
    ] = None,
) -> None:
    """List objects, or show one.

    Examples:

        sub get                      # every kind (the `ai` category)

        sub get models -o wide

        sub get model/falcon-7b -o yaml
    """
    from substratus.cli import output as fmt
    from substratus.cli.targets import parse_target

    if output not in (None, "wide", "yaml", "json"):
        fail(f"--output: {output!r} is not one of wide, yaml, json", EXIT_USAGE)

    def run() -> None:
        args = list(target or [])
        if args and args[0].lower() in ("secret", "secrets"):
            items = client().secrets(None if all_namespaces else namespace or "default")
            for s in items:
                out.print(f"{s['metadata']['name']}   keys: {', '.join(s['keys'])}")
            return
        kinds, name = parse_target(args)
        ns = None if all_namespaces else (namespace or "default")
        c = client()
        if name:
            obj = c.get(kinds[0], ns or "default", name)
            objs: list[dict[str, Any]] = [obj]
        else:
            objs = [o for k in kinds for o in c.list_objects(k, ns)]
        if output in ("yaml", "json"):
            out.print(fmt.dump(objs[0] if name else objs, output), markup=False)
            return
        if not objs:
            err.print(f"No resources found{f' in {ns} namespace' if ns else ''}.")
            return
        out.print(
            fmt.table(objs, wide=output == "wide", all_namespaces=all_namespaces), markup=False
        )

    guarded(run)


@app.command()
def describe(
    target: Annotated[list[str], typer.Argument(help="KIND/NAME or KIND NAME.")],
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
        out.print("\n\n".join(fmt.describe(o) for o in objs), markup=False)

    guarded(run)


@app.command()
def logs(
    target: Annotated[list[str], typer.Argument(help="KIND/NAME or KIND NAME.")],
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
        for chunk in client().logs(kind, namespace, name, follow=follow, tail=tail):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()

    guarded(run)


def parse_duration(text: str) -> float:
    from substratus.cli.targets import UsageError

    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text.strip())
    if not m:
        raise UsageError(f"--timeout: {text!r} is not a duration like 30s, 5m or 1h")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    return float(m.group(1)) * scale


@app.command()
def wait(
    target: Annotated[list[str], typer.Argument(help="KIND/NAME or KIND NAME.")],
    for_: Annotated[str, typer.Option("--for", help="ready or delete.")] = "ready",
    namespace: Namespace = "default",
    timeout: Annotated[str, typer.Option(help="e.g. 30s, 5m, 1h.")] = "30m",
) -> None:
    """Wait until an object is Ready (or deleted). Fails early when a job or build fails.

    Example: `sub wait model/falcon-7b --for=ready --timeout=10m`
    """
    from substratus.cli.targets import parse_named
    from substratus.cli.waiting import wait_for

    condition = for_.lower().removeprefix("condition=")
    if condition not in ("ready", "delete"):
        fail(f"--for: {for_!r} is not one of ready, delete", EXIT_USAGE)

    def run() -> None:
        kind, name = parse_named(target, "wait")
        c = client()
        try:
            c.get(kind, namespace, name)
        except NotFoundError:
            if condition != "delete":
                raise
            out.print(f"{kind.lower()}/{name} deleted")
            return
        wait_for(
            c,
            kind,
            namespace,
            name,
            condition,
            parse_duration(timeout),
            err,
        )
        out.print(f"{kind.lower()}/{name} condition met")

    guarded(run)


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
    target: Annotated[list[str] | None, typer.Argument(help="KIND/NAME or KIND NAME.")] = None,
    filename: Annotated[list[str] | None, typer.Option("--filename", "-f")] = None,
    namespace: Namespace = "default",
    retain_artifacts: Annotated[
        bool, typer.Option(help="Keep the object's artifacts in the bucket.")
    ] = False,
    ignore_not_found: Annotated[
        bool, typer.Option(help="Exit 0 when an object does not exist.")
    ] = False,
) -> None:
    """Delete objects, their workloads and (unless retained) their artifacts; or Secrets.

    Examples: `sub delete model/falcon-7b`, `sub delete -f examples/local/`, `sub delete secret/hf`
    """
    from substratus.cli.manifests import read_documents
    from substratus.cli.targets import parse_named

    def run() -> None:
        refs: list[tuple[str, str, str]] = []
        if filename:
            for doc in read_documents(filename, None):
                meta = doc.body.get("metadata") or {}
                refs.append(
                    (
                        str(doc.body.get("kind")),
                        meta.get("namespace", namespace),
                        str(meta.get("name")),
                    )
                )
        elif target and target[0].partition("/")[0].lower() in ("secret", "secrets"):
            refs.append(("Secret", namespace, _secret_name(target)))
        else:
            kind, name = parse_named(list(target or []), "delete")
            refs.append((kind, namespace, name))
        c = client()
        for kind, ns, name in refs:
            try:
                if kind == "Secret":
                    c.delete_secret(ns, name)
                    in_use: list[str] = []
                else:
                    in_use = c.delete(kind_of(kind).KIND, ns, name, retain_artifacts).in_use_by
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
def crds() -> None:
    """Print the CustomResourceDefinitions (`sub crds | kubectl apply -f -`)."""
    from substratus.api.crds import crds_yaml

    sys.stdout.write(crds_yaml())


@local_app.command("start")
def local_start() -> None:
    """Start the local supervisor (and the Servers and Notebooks it keeps running)."""
    from substratus.runtimes.local.client import LocalClient, supervisor_running

    c = LocalClient(autostart=True)
    was_running = supervisor_running(c.paths)
    health = guarded(c.health)
    state = "already running" if was_running else "started"
    out.print(f"supervisor: {state} (pid {health['pid']}, state in {c.paths.home})")


@local_app.command("status")
def local_status() -> None:
    """Show whether the local supervisor runs, and where its state lives."""
    from substratus.runtimes.local.client import LocalClient, supervisor_running

    c = LocalClient(autostart=False)
    paths = c.paths
    if not supervisor_running(paths):
        out.print(f"supervisor: not running (state in {paths.home})")
        raise typer.Exit(EXIT_UNAVAILABLE)
    health = guarded(c.health)
    objs = guarded(lambda: c.list_objects(None, None))
    ready = sum(1 for o in objs if (o.get("status") or {}).get("ready"))
    out.print(f"supervisor: running (pid {health['pid']})")
    out.print(f"state:      {paths.home}")
    out.print(f"socket:     {paths.socket}")
    out.print(f"objects:    {len(objs)} ({ready} ready)")


@local_app.command("stop")
def local_stop() -> None:
    """Stop the local supervisor and the workloads it runs."""
    import time

    from substratus.runtimes.local.client import LocalClient, supervisor_running

    c = LocalClient(autostart=False)
    if not supervisor_running(c.paths):
        out.print("supervisor: not running")
        return
    guarded(c.shutdown)
    deadline = time.monotonic() + 60
    while supervisor_running(c.paths) and time.monotonic() < deadline:
        time.sleep(0.1)
    if supervisor_running(c.paths):
        fail(f"the supervisor still runs after 60s; see {c.paths.supervisor_log}")
    out.print("supervisor: stopped")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
