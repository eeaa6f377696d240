"""One `sub notebook` / `kubectl open notebook` session, start to finish.

Apply the Notebook (packing and uploading its directory when it is built from one, with the
build's log shown), wait for it with its start log shown, reach it (locally its own address; on
a cluster a port-forward to its pod), bring the directory's files in and keep both sides in
sync, open the browser on the tokenized URL, and on Ctrl-C sync the last changes back, write a
trainer manifest when asked, and suspend the Notebook (unless ``--keep``).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import webbrowser
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console

from substratus.cli.manifests import Document
from substratus.cli.notebook import spec as nbspec
from substratus.cli.notebook.sides import JupyterTree, LocalTree
from substratus.cli.notebook.sync import Syncer, SyncLoop, base_file, summary
from substratus.cli.targets import UsageError
from substratus.cli.upload import finish_upload, prepare_upload, show_build
from substratus.cli.waiting import wait_for
from substratus.core.client import Client, NotFoundError

KIND = "Notebook"
JUPYTER_PORT = 8888


@dataclass
class Options:
    target: str | None
    filename: str | None
    namespace: str
    name: str | None
    browser: bool
    keep: bool
    trainer: bool | None  # None: ask when interactive
    trainer_command: str | None
    sync: bool
    port: int | None
    timeout: float


@dataclass
class Resolved:
    body: dict[str, Any]
    directory: Path | None  # synced (and built, with image.upload)
    source: str
    note: str = ""


def resolve(c: Client, opts: Options, cluster: bool) -> Resolved:
    """The Notebook the command line means, and the directory it syncs."""
    path = Path(opts.filename) if opts.filename else None
    if path is not None and not path.exists():
        raise NotFoundError(f"-f {opts.filename}: no such file or directory")
    if opts.target:
        kind, name = nbspec.parse_object_target(opts.target)
        body = nbspec.notebook_for_object(c.get(kind, opts.namespace, name))
        if opts.name:
            body["metadata"]["name"] = opts.name
        if path is not None and not path.is_dir():
            raise UsageError(f"-f {opts.filename}: with {opts.target}, -f names the directory")
        return Resolved(body, path, opts.target)
    if path is not None and path.is_file():
        body = nbspec.notebook_in_manifest(path, opts.namespace)
        body["metadata"].setdefault("namespace", opts.namespace)
        return Resolved(body, path.parent, str(path))
    directory = path or Path(".")
    body, note = nbspec.notebook_for_directory(directory, opts.namespace, opts.name, cluster)
    return Resolved(body, directory, str(directory), note)


class Session:
    def __init__(self, c: Client, opts: Options, out: Console, err: Console) -> None:
        self.c, self.opts, self.out, self.err = c, opts, out, err
        self.cluster = hasattr(c, "serving_pod")
        self.where = str(getattr(c, "context", "local"))
        self.stop = threading.Event()
        self.forward: Any = None
        self.loop: SyncLoop | None = None
        self.syncer: Syncer | None = None
        self.remote: JupyterTree | None = None

    def say(self, text: str) -> None:
        self.err.print(text, markup=False, highlight=False)

    # -- start ---------------------------------------------------------------------------

    def apply(self, resolved: Resolved) -> dict[str, Any]:
        body = resolved.body
        tarball = None
        image = (body.get("spec") or {}).get("image")
        if isinstance(image, dict) and image.get("upload") is not None:
            doc = Document(body, resolved.source, resolved.directory)
            tarball = prepare_upload(doc, str(resolved.directory) if resolved.directory else None)
        if resolved.note:
            self.say(f"notebook/{body['metadata']['name']}: {resolved.note}")
        result = self.c.apply(body, resolved.source)
        obj = result.object
        self.out.print(f"notebook/{obj['metadata']['name']} {result.action}")
        if tarball is not None:
            finish_upload(self.c, obj, tarball, self.err)
            show_build(self.c, obj, self.err)
        return obj

    def _show_start_log(self, ns: str, name: str, started: threading.Event) -> None:
        with contextlib.suppress(Exception):  # the log is a courtesy: waiting decides
            for chunk in self.c.logs(KIND, ns, name, follow=True):
                if started.is_set():
                    return
                self.err.file.write(chunk.decode(errors="replace"))
                self.err.file.flush()

    def wait_ready(self, ns: str, name: str) -> dict[str, Any]:
        started = threading.Event()
        threading.Thread(target=self._show_start_log, args=(ns, name, started), daemon=True).start()
        try:
            wait_for(self.c, KIND, ns, name, "ready", self.opts.timeout, self.err)
        finally:
            started.set()
        return self.c.get(KIND, ns, name)

    def endpoint(self, obj: dict[str, Any]) -> str:
        """The notebook's base URL as this machine reaches it."""
        meta = obj["metadata"]
        if not self.cluster:
            url = (obj.get("status") or {}).get("url")
            if not url:
                raise NotFoundError(f"notebook/{meta['name']}: no status.url")
            return str(url).rstrip("/")
        from substratus.cli.notebook.portforward import PortForward

        kube: Any = self.c
        ns, name = meta["namespace"], meta["name"]
        self.forward = PortForward(
            kube.api, ns, lambda: kube.serving_pod(KIND, ns, name), JUPYTER_PORT, self.say
        )
        port = self.forward.start(self.opts.port)
        self.say(f"forwarding 127.0.0.1:{port} to notebook/{name}'s pod, port {JUPYTER_PORT}")
        return f"http://127.0.0.1:{port}"

    def start_sync(self, obj: dict[str, Any], url: str, directory: Path) -> None:
        meta, token = obj["metadata"], (obj.get("status") or {}).get("token") or ""
        self.remote = JupyterTree(url, token)
        local = LocalTree(directory)
        base = base_file(self.where, meta["namespace"], meta["name"], directory)
        self.syncer = Syncer(local, self.remote, base, self.say)
        first = self.syncer.sync_once()
        moved = summary(first)
        done = f"synced {directory.resolve()} with the notebook"
        self.say(done + (f": {moved}" if moved else ""))
        self.loop = SyncLoop(self.syncer, self.say)
        self.loop.start()

    # -- run -----------------------------------------------------------------------------

    def run(self) -> int:
        resolved = resolve(self.c, self.opts, self.cluster)
        body = resolved.body
        meta = body["metadata"]
        ns, name = meta.get("namespace") or self.opts.namespace, meta["name"]
        meta["namespace"] = ns
        opened = False
        try:
            self.apply(resolved)
            obj = self.wait_ready(ns, name)
            url = self.endpoint(obj)
            if resolved.directory is not None and self.opts.sync:
                self.start_sync(obj, url, resolved.directory)
            token = (obj.get("status") or {}).get("token") or ""
            page = f"{url}/lab?token={token}"
            opened = True
            self.out.print(page, markup=False, highlight=False)
            if self.opts.browser and not webbrowser.open(page):
                self.say("no browser could be opened here: open the URL above")
            self.say(
                "Ctrl-C to stop: the notebook's changes are synced back, then it is "
                + ("kept running" if self.opts.keep else "suspended (--keep leaves it running)")
            )
            self._wait_for_stop()
        except KeyboardInterrupt:
            self.say("stopping")
        finally:
            self.finish(ns, name, resolved, opened)
        return 0

    def _wait_for_stop(self) -> None:
        def stop(signum: int, frame: FrameType | None) -> None:
            self.stop.set()

        previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not self.stop.wait(0.5):
                pass
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    # -- stop ----------------------------------------------------------------------------

    def finish(self, ns: str, name: str, resolved: Resolved, opened: bool) -> None:
        # A second Ctrl-C while finishing would lose the last changes: hold it off.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if self.loop is not None:
                self.loop.stop()
            if self.syncer is not None:
                try:
                    last = self.syncer.sync_once()
                    self.say("synced back" + (f": {summary(last)}" if last.changed() else ""))
                except Exception as e:  # the notebook is gone or unreachable
                    self.say(f"the last changes could not be synced back: {e}")
            if opened and resolved.directory is not None and self._want_trainer():
                from substratus.cli.notebook.trainer import write_trainer

                try:
                    path = write_trainer(self.c, ns, name, resolved.directory, self.opts)
                    self.say(f"wrote {path}: `sub apply -f {path}` trains it as a Model")
                except (UsageError, ValueError, OSError) as e:
                    self.say(f"no trainer manifest: {e}")
            if not self.opts.keep:
                self.suspend(ns, name)
        finally:
            if self.remote is not None:
                self.remote.close()
            if self.forward is not None:
                self.forward.close()
            signal.signal(signal.SIGINT, previous)

    def _want_trainer(self) -> bool:
        if self.opts.trainer is not None:
            return self.opts.trainer
        if not sys.stdin.isatty():
            return False
        import typer

        return typer.confirm("Write a trainer manifest (model-*.yaml) for this directory?")

    def suspend(self, ns: str, name: str) -> None:
        try:
            current = self.c.get(KIND, ns, name)
        except NotFoundError:
            return
        body = nbspec.notebook_for_object(current)
        body["spec"]["suspend"] = True
        self.c.apply(body, f"notebook/{name}")
        self.out.print(f"notebook/{name} suspended")
