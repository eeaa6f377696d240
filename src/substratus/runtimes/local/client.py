"""The local supervisor's client: HTTP over its unix socket, starting it on demand."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx

from substratus.core.client import (
    ApplyResult,
    ClientError,
    DeleteResult,
    InvalidError,
    NotFoundError,
    UnavailableError,
)
from substratus.runtimes.local.paths import LocalPaths

START_TIMEOUT = 30.0


class LocalClient:
    def __init__(self, paths: LocalPaths | None = None, autostart: bool = True):
        self.paths = paths or LocalPaths.from_env()
        self.autostart = autostart
        self._http: httpx.Client | None = None

    # -- connection -----------------------------------------------------------------------

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            if self.autostart:
                ensure_supervisor(self.paths)
            elif not supervisor_running(self.paths):
                # Reading commands never start it: that would start every Server and Notebook.
                raise UnavailableError(
                    f"the local supervisor is not running (state in {self.paths.home}); "
                    "`sub apply` or `sub local start` starts it"
                )
            self._http = httpx.Client(
                transport=socket_transport(self.paths), base_url="http://supervisor", timeout=None
            )
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def _request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = self.http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise UnavailableError(
                f"the local supervisor at {self.paths.socket} is not answering: {exc}"
            ) from exc
        _raise_for(resp)
        return resp.json()

    def _stream(self, path: str, params: dict[str, Any]) -> Iterator[httpx.Response]:
        try:
            with self.http.stream("GET", path, params=params) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    _raise_for(resp)
                yield resp
        except httpx.TransportError as exc:
            raise UnavailableError(f"the local supervisor stopped answering: {exc}") from exc

    # -- the Client interface --------------------------------------------------------------

    def apply(
        self, doc: dict[str, Any], source: str = "<request>", dry_run: bool = False
    ) -> ApplyResult:
        params = {"source": source, **({"dryRun": "All"} if dry_run else {})}
        out = self._request("POST", "/apply", params=params, json=doc)
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
        for resp in self._stream("/watch", params):
            for line in resp.iter_lines():
                if line:
                    yield json.loads(line)

    def logs(
        self, kind: str, namespace: str, name: str, follow: bool = False, tail: int | None = None
    ) -> Iterator[bytes]:
        params: dict[str, Any] = {"follow": "true" if follow else "false"}
        if tail is not None:
            params["tailLines"] = tail
        for resp in self._stream(f"/logs/{kind}/{namespace}/{name}", params):
            yield from resp.iter_bytes()

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


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        body = resp.json()
    except ValueError:
        body = {"message": resp.text}
    message = body.get("message", resp.text)
    if resp.status_code == 404:
        raise NotFoundError(message)
    if resp.status_code == 422:
        raise InvalidError(message, [tuple(p) for p in body.get("problems", [])])
    raise ClientError(message)


def socket_transport(paths: LocalPaths) -> httpx.HTTPTransport:
    """Plain HTTP over the supervisor's unix socket. No TLS is spoken there, so no certificate
    store is loaded (httpx would, by default: ~25 ms of every `sub` call)."""
    return httpx.HTTPTransport(uds=str(paths.socket), verify=False)


def supervisor_running(paths: LocalPaths) -> bool:
    if not paths.socket.exists():
        return False
    try:
        with httpx.Client(transport=socket_transport(paths), timeout=2.0) as c:
            return c.get("http://supervisor/healthz").status_code == 200
    except httpx.TransportError:
        return False


def ensure_supervisor(paths: LocalPaths) -> None:
    """Start the supervisor for ``paths.home`` unless one answers already."""
    if supervisor_running(paths):
        return
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
