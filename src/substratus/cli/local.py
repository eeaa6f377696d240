"""`sub local start|status|stop`: the local supervisor (the embedded runtime)."""

from __future__ import annotations

import typer

from substratus.cli.common import EXIT_UNAVAILABLE, fail, guarded, out

local_app = typer.Typer(help="Manage the local supervisor (the embedded runtime).")


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
