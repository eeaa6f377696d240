"""`sub open notebook/NAME | server/NAME`: the URL that works as is (a notebook's with its
token, a server's /docs), opened in the browser or printed. On a cluster the object is reached
through a port-forward (an autoscaled Server's through its proxy) that lasts until Ctrl-C."""

from __future__ import annotations

import threading
from typing import Annotated, Any

import typer

from substratus.cli.common import client, err, guarded, out
from substratus.cli.completion import complete_target
from substratus.cli.options import Namespace

PATHS = {"Notebook": "/lab?token={token}", "Server": "/docs"}
PORTS = {"Notebook": 8888, "Server": 8080}


def page(obj: dict[str, Any], base: str) -> str:
    token = (obj.get("status") or {}).get("token") or ""
    return base.rstrip("/") + PATHS[obj["kind"]].format(token=token)


def open_(
    target: Annotated[
        list[str],
        typer.Argument(help="notebook/NAME or server/NAME.", autocompletion=complete_target),
    ],
    namespace: Namespace = "default",
    browser: Annotated[
        bool, typer.Option(help="Open it in the browser (--no-browser: print the URL only).")
    ] = True,
) -> None:
    """Open a notebook (with its token) or a server's API docs.

    Examples: `sub open notebook/nb`, `sub open server/smollm2 --no-browser`
    """
    from substratus.cli.targets import UsageError, parse_named

    def run() -> None:
        kind, name = parse_named(target, "open")
        if kind not in PATHS:
            raise UsageError("open takes notebook/NAME or server/NAME")
        c: Any = client()
        obj = c.get(kind, namespace, name)
        status = obj.get("status") or {}
        if not status.get("url"):
            raise UsageError(
                f"{kind.lower()}/{name} has no address yet: sub wait {kind.lower()}/{name}"
            )
        api = getattr(c, "api", None)  # a cluster's connection (KubeClient)
        if api is None:  # the local runtime: status.url is this machine's
            show(page(obj, status["url"]), browser)
            return
        from substratus.cli.notebook.portforward import PortForward

        role = "proxy" if (obj.get("spec") or {}).get("autoscaling") else "service"
        forward = PortForward(
            api, namespace, lambda: c.serving_pod(kind, namespace, name, role), PORTS[kind],
            lambda line: err.print(line, markup=False),
        )  # fmt: skip
        port = forward.start()
        err.print(f"forwarding 127.0.0.1:{port} to {kind.lower()}/{name}; Ctrl-C to stop")
        show(page(obj, f"http://127.0.0.1:{port}"), browser)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            forward.close()

    guarded(run)


def show(url: str, browser: bool) -> None:
    out.print(url, markup=False, highlight=False, soft_wrap=True)
    import webbrowser  # a start-up cost of every command, needed by this one

    if browser and not webbrowser.open(url):
        err.print("no browser could be opened here: open the URL above")
