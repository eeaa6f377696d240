"""The local supervisor's client: HTTP over its unix socket, starting it on demand.

HTTP/1.1 of ``runtimes/http1.py``, not httpx or http.client: a `sub` call is mostly start-up,
and httpx with httpcore costs ~40 ms of imports for one request over a local socket,
http.client (through the email package) a fifth of a `sub get`."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

from substratus.core.client import (
    ApplyResult,
    ClientError,
    DeleteResult,
    InvalidError,
    NotFoundError,
    UnavailableError,
)
from substratus.runtimes import http1
from substratus.runtimes.local.paths import LocalPaths

START_TIMEOUT = 30.0


def _unix_connection(path: str, timeout: float | None = None) -> http1.Connection:
    """HTTP/1.1 over a unix socket."""

    def dial() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        return sock

    return http1.Connection(dial, "supervisor")


class _Response:
    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


TRANSPORT_ERRORS = (OSError,)  # http1's protocol errors are OSErrors too


class LocalClient:
    def __init__(self, paths: LocalPaths | None = None, autostart: bool = True):
        self.paths = paths or LocalPaths.from_env()
        self.autostart = autostart
        self._checked = False

    # -- connection -----------------------------------------------------------------------

    def _connect(self) -> http1.Connection:
        """A connection of its own per request: a unix socket connects in microseconds, and
        nothing then depends on the supervisor keeping a connection open between requests."""
        if not self._checked:
            if self.autostart:
                ensure_supervisor(self.paths)
            elif not supervisor_running(self.paths):
                # Reading commands never start it: that would start every Server and Notebook.
                raise UnavailableError(
                    f"the local supervisor is not running (state in {self.paths.home}); "
                    "`sub apply` or `sub local start` starts it"
                )
            self._checked = True
        return _unix_connection(str(self.paths.socket))

    def close(self) -> None:
        self._checked = False

    def _request(
        self, method: str, path: str, params: dict[str, Any] | None = None, json_body: Any = None
    ) -> Any:
        conn = self._connect()
        body = None if json_body is None else json.dumps(json_body).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            raw = conn.request(method, _target(path, params), headers, body)
            resp = _Response(raw.status, raw.read())
        except TRANSPORT_ERRORS as exc:
            raise UnavailableError(
                f"the local supervisor at {self.paths.socket} is not answering: {exc}"
            ) from exc
        finally:
            conn.close()
        _raise_for(resp)
        return resp.json()

    def _stream(self, path: str, params: dict[str, Any]) -> Iterator[bytes]:
        """The response's bytes as they arrive, on a connection of its own."""
        conn = self._connect()
        try:
            raw = conn.request("GET", _target(path, params))
            if raw.status >= 400:
                _raise_for(_Response(raw.status, raw.read()))
            while chunk := raw.read1(65536):
                yield chunk
        except TRANSPORT_ERRORS as exc:
            raise UnavailableError(f"the local supervisor stopped answering: {exc}") from exc
        finally:
            conn.close()

    # -- the Client interface --------------------------------------------------------------

    def apply(
        self, doc: dict[str, Any], source: str = "<request>", dry_run: bool = False
    ) -> ApplyResult:
        params = {"source": source, **({"dryRun": "All"} if dry_run else {})}
        out = self._request("POST", "/apply", params=params, json_body=doc)
        return ApplyResult(out["action"], out["object"])

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        out: dict[str, Any] = self._request("GET", f"/objects/{kind}/{namespace}/{name}")
        return out

    def list_objects(self, kind: str | None, namespace: str | None) -> list[dict[str, Any]]:
        params = {k: v for k, v in (("kind", kind), ("namespace", namespace)) if v}
        out: list[dict[str, Any]] = self._request("GET", "/objects", params=params)["items"]
        return out

    def delete(self, kind: str, namespace: str, name: str, retain: bool = False) -> DeleteResult:
        params = {"retain": "true"} if retain else {}
        out = self._request("DELETE", f"/objects/{kind}/{namespace}/{name}", params=params)
        return DeleteResult(out["object"], list(out.get("inUseBy", [])))

    def watch(
        self,
        kind: str | None,
        namespace: str | None,
        name: str | None = None,
        resource_version: str | None = None,
        timeout: float = 3600,
    ) -> Iterator[dict[str, Any]]:
        params: dict[str, Any] = {"timeoutSeconds": timeout}
        for k, v in (("kind", kind), ("namespace", namespace), ("name", name)):
            if v:
                params[k] = v
        if resource_version is not None:
            params["resourceVersion"] = resource_version
        pending = b""
        for chunk in self._stream("/watch", params):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if line.strip():
                    yield json.loads(line)

    def logs(
        self, kind: str, namespace: str, name: str, follow: bool = False, tail: int | None = None
    ) -> Iterator[bytes]:
        params: dict[str, Any] = {"follow": "true" if follow else "false"}
        if tail is not None:
            params["tailLines"] = tail
        yield from self._stream(f"/logs/{kind}/{namespace}/{name}", params)

    def secrets(self, namespace: str | None) -> list[dict[str, Any]]:
        params = {"namespace": namespace} if namespace else {}
        out: list[dict[str, Any]] = self._request("GET", "/secrets", params=params)["items"]
        return out

    def delete_secret(self, namespace: str, name: str) -> None:
        self._request("DELETE", f"/secrets/{namespace}/{name}")

    # -- supervisor control ----------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = self._request("GET", "/healthz")
        return out

    def events(
        self, namespace: str | None, kind: str | None = None, name: str | None = None
    ) -> list[dict[str, Any]]:
        query = (("namespace", namespace), ("kind", kind), ("name", name))
        params = {k: v for k, v in query if v}
        out: list[dict[str, Any]] = self._request("GET", "/events", params=params)["items"]
        return out

    def server_version(self) -> str:
        health = self.health()
        version = health.get("version", "unknown")
        return f"local supervisor {version} (pid {health.get('pid')}, {self.paths.home})"

    def shutdown(self) -> None:
        self._request("POST", "/shutdown")


def _target(path: str, params: dict[str, Any] | None) -> str:
    return f"{path}?{urlencode(params)}" if params else path


def _raise_for(resp: _Response) -> None:
    if resp.status < 400:
        return
    try:
        body = resp.json()
    except ValueError:
        body = {"message": resp.text}
    if not isinstance(body, dict):
        body = {"message": resp.text}
    message = body.get("message", resp.text)
    if resp.status == 404:
        raise NotFoundError(message)
    if resp.status == 422:
        raise InvalidError(message, [tuple(p) for p in body.get("problems", [])])
    raise ClientError(message)


def supervisor_running(paths: LocalPaths) -> bool:
    if not paths.socket.exists():
        return False
    conn = _unix_connection(str(paths.socket), timeout=2.0)
    try:
        answer = conn.request("GET", "/healthz")
        answer.read()  # whole: hanging up mid-answer would break the supervisor's write
        return answer.status == 200
    except TRANSPORT_ERRORS:
        return False
    finally:
        conn.close()


def ensure_supervisor(paths: LocalPaths) -> None:
    """Start the supervisor for ``paths.home`` unless one answers already."""
    if supervisor_running(paths):
        return
    import subprocess  # only here: a start-up cost every other command does without

    paths.ensure()
    # Serialise starts: two CLIs at once must not both spawn a supervisor.
    with open(paths.home / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if supervisor_running(paths):
            return
        env = dict(os.environ, SUBSTRATUS_HOME=str(paths.home))
        with open(paths.supervisor_log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "substratus.runtimes.local.supervisor"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                cwd=paths.home,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if supervisor_running(paths):
                return
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = ""
        with contextlib.suppress(OSError):
            tail = paths.supervisor_log.read_text()[-2000:]
        raise UnavailableError(
            f"the local supervisor did not start (see {paths.supervisor_log}):\n{tail}"
        )
