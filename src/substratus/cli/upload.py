"""The seed's upload flow: pack a local build context, let the control plane sign a URL,
upload the tarball there, and let the control plane build the image."""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from substratus.cli.manifests import Document, upload_section
from substratus.cli.waiting import WaitFailed, WaitTimeout
from substratus.core import conditions as C
from substratus.core.client import Client, ClientError, NotFoundError
from substratus.storage import StorageError, pack_context, upload_to_signed_url
from substratus.storage.signed import SignedUploadError, upload_parts

SIGN_TIMEOUT = 60.0


def prepare_upload(doc: Document, upload_dir: str | None) -> Path | None:
    """Pack the build context of a document that asks for an upload and record its md5."""
    section = upload_section(doc.body.get("spec") or {})
    if section is None:
        return None
    parent, field, md5_key, id_key = section
    if upload_dir is None and doc.directory is None:
        raise ValueError(
            f"{doc.source}: {field}: pass --upload-dir DIR when the manifest comes "
            "from stdin or a URL"
        )
    directory = Path(upload_dir) if upload_dir else doc.directory
    assert directory is not None
    if not directory.is_dir():
        raise ValueError(f"{doc.source}: {field}: build context {directory} is not a directory")
    tarball = Path(tempfile.mkdtemp(prefix="substratus-upload-")) / "context.tar.gz"
    md5 = pack_context(directory, tarball)
    upload = dict(parent["upload"] or {})
    upload[md5_key] = md5
    if field == "spec.image.upload":  # the original project's spelling has no size
        upload["size"] = tarball.stat().st_size
    # Content-addressed: re-applying an unchanged directory does not rebuild.
    upload.setdefault(id_key, md5[:16])
    parent["upload"] = upload
    return tarball


def _upload_with_bar(
    url: str, tarball: Path, md5: str | None, console: Console, parts: dict[str, Any] | None
) -> None:
    size = tarball.stat().st_size
    columns = (
        TextColumn("uploading build context"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("upload", total=size)
        advance = lambda n: bar.advance(task, n)  # noqa: E731
        if parts:  # a large context, where the bucket takes parts
            try:
                upload_parts(
                    parts["urls"], parts["partSize"], parts["completeUrl"], tarball, advance
                )
            except SignedUploadError as e:
                raise StorageError(str(e)) from None
        else:
            upload_to_signed_url(url, tarball, md5=md5, progress=advance)
    how = f" in {len(parts['urls'])} parts" if parts else ""
    console.print(f"uploaded build context ({size / 1e6:.1f} MB{how})")


def finish_upload(client: Client, obj: dict[str, Any], tarball: Path, console: Console) -> None:
    """Upload ``tarball`` once the control plane has published ``status.uploadUrl`` for this
    request; nothing when it holds a context with the same md5 already."""
    kind, meta = obj["kind"], obj["metadata"]
    section = upload_section(obj.get("spec") or {})
    assert section is not None
    parent, _, md5_key, id_key = section
    md5, request_id = parent["upload"].get(md5_key), parent["upload"].get(id_key)
    deadline = time.monotonic() + SIGN_TIMEOUT
    parts: dict[str, Any] | None = None
    with console.status(f"{kind.lower()}/{meta['name']}: waiting for an upload URL"):
        url = None
        for event in client.watch(kind, meta["namespace"], meta["name"], timeout=SIGN_TIMEOUT):
            if event["type"] == "BOOKMARK":
                if time.monotonic() > deadline:
                    break
                continue
            current = event["object"]
            status = current.get("status") or {}
            if status.get("observedGeneration") != current["metadata"].get("generation"):
                continue
            ready: dict[str, Any] = next(
                (c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {}
            )
            if ready.get("reason") != "AwaitingUpload":
                return  # this context was uploaded before: nothing to send
            granted = status.get("buildUpload") or {}
            if status.get("uploadUrl") and granted.get("requestID") == request_id:
                url, parts = status["uploadUrl"], status.get("uploadParts")
                break
    if url is None:
        raise WaitTimeout(
            f"{kind.lower()}/{meta['name']}: no status.uploadUrl after {SIGN_TIMEOUT}s"
        )
    _upload_with_bar(url, tarball, md5, console, parts)


BUILD_TIMEOUT = 3600.0


def _build_phase(obj: dict[str, Any]) -> tuple[str, str]:
    """("built" | "failed" | "building" | "other", message), from a current status only."""
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"].get("generation"):
        return "building", ""  # not decided on this spec yet
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    built, ready = conditions.get(C.BUILT) or {}, conditions.get(C.READY) or {}
    if built.get("status") == "True":
        return "built", ""
    if ready.get("reason") == "BuildFailed":
        return "failed", str(ready.get("message") or "")
    if ready.get("reason") in ("AwaitingUpload", "Building"):
        return "building", ""
    return "other", ""


def show_build(
    client: Client, obj: dict[str, Any], console: Console, timeout: float = BUILD_TIMEOUT
) -> None:
    """Show the image build's log while it runs; return once the image is built (or nothing
    is being built), raise WaitFailed with the reason when the build failed.

    The log streams in a thread while this one watches the status: a log that goes on after
    the build (a runtime that follows the object's next run) never holds the caller."""
    kind, meta = obj["kind"], obj["metadata"]
    ns, name = meta["namespace"], meta["name"]
    deadline = time.monotonic() + timeout
    done = threading.Event()

    def stream() -> None:
        while not done.is_set():
            try:
                for chunk in client.logs(kind, ns, name, follow=True):
                    if done.is_set():
                        return
                    console.file.write(chunk.decode(errors="replace"))
                    console.file.flush()
                return
            except NotFoundError:
                done.wait(1.0)  # no build pod (or run) yet
            except ClientError:
                return  # the log is a courtesy: the status decides

    streamer = threading.Thread(target=stream, name="build-log", daemon=True)
    try:
        while time.monotonic() < deadline:
            phase, message = _build_phase(client.get(kind, ns, name))
            if phase == "failed":
                raise WaitFailed(f"{kind.lower()}/{name}: BuildFailed: {message}")
            if phase != "building":
                return
            if not streamer.is_alive() and streamer.ident is None:
                streamer.start()
            time.sleep(1.0)
    finally:
        done.set()
    raise WaitTimeout(f"{kind.lower()}/{name}: the image was not built within {timeout:.0f}s")
