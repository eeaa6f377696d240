"""`sub notebook` and the kubectl plugins `kubectl open notebook` and `kubectl notebook`."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from substratus.cli.common import client, err, guarded, out, parse_duration
from substratus.cli.options import Namespace

TARGET_HELP = "notebook/NAME, model/NAME, dataset/NAME or server/NAME (default: the directory)."


def notebook(
    target: Annotated[str | None, typer.Argument(help=TARGET_HELP)] = None,
    filename: Annotated[
        str | None,
        typer.Option(
            "--filename", "-f", help="A directory of code (default: .) or a Notebook manifest."
        ),
    ] = None,
    namespace: Namespace = "default",
    name: Annotated[
        str | None, typer.Option(help="The Notebook's name (default: the directory's).")
    ] = None,
    browser: Annotated[
        bool, typer.Option(help="Open the browser (--no-browser prints the URL only).")
    ] = True,
    keep: Annotated[
        bool, typer.Option(help="Leave the Notebook running on exit instead of suspending it.")
    ] = False,
    trainer: Annotated[
        bool | None,
        typer.Option(
            help="On exit, write model-<epoch|branch>.yaml that trains this code as a Model "
            "(default: ask when interactive)."
        ),
    ] = None,
    trainer_command: Annotated[
        str | None, typer.Option(help="The trainer's command (default: python train.py).")
    ] = None,
    sync: Annotated[
        bool, typer.Option(help="Sync the directory with the notebook both ways while open.")
    ] = True,
    port: Annotated[
        int | None,
        typer.Option(help="Local port of the port-forward on a cluster (default: 8888, or any)."),
    ] = None,
    timeout: Annotated[str, typer.Option(help="How long to wait for it to start.")] = "30m",
) -> None:
    """Open a notebook on a directory of code (or on an object), syncing files both ways.

    Builds the directory into the notebook's image (`.dockerignore` honoured), mounts the model
    and dataset its `model.yaml` names, opens JupyterLab in the browser with its token, and on
    Ctrl-C syncs the notebook's changes back and suspends it. The same as `kubectl open notebook`.

    Examples:

        sub notebook                          # this directory, on the local runtime

        sub --context prod notebook -f .      # on a cluster (port-forwarded)

        sub notebook model/falcon-7b-k8s      # the environment of a Model's training
    """
    from substratus.cli.notebook.session import Options, Session

    opts = Options(
        target=target,
        filename=filename,
        namespace=namespace,
        name=name,
        browser=browser,
        keep=keep,
        trainer=trainer,
        trainer_command=trainer_command,
        sync=sync,
        port=port,
        timeout=parse_duration(timeout),
    )
    guarded(lambda: Session(client(start=True), opts, out, err).run())


def plugin_main() -> None:
    """``kubectl-open-notebook`` / ``kubectl-notebook``: `sub notebook` against the kubeconfig's
    current context, as kubectl would act (``--context`` chooses another; with no context at
    all, the local runtime)."""
    from substratus.cli.app import app
    from substratus.cli.common import chosen_context
    from substratus.cli.kube import current_context
    from substratus.cli.main import split_cluster_flags

    flags, rest = split_cluster_flags(sys.argv[1:])
    given = dict(zip(flags[::2], flags[1::2], strict=True))
    if "--context" not in given and not chosen_context(None):
        context = current_context(given.get("--kubeconfig"))
        if context:
            flags += ["--context", context]
        else:
            err.print("no kubeconfig context: using the local runtime", highlight=False)
    name = os.path.basename(sys.argv[0]).removeprefix("kubectl-").replace("-", " ")
    app(args=[*flags, "notebook", *rest], prog_name=f"kubectl {name}")
