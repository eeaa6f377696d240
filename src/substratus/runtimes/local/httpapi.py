"""The supervisor's HTTP API on a user-only unix socket, resource-shaped like Kubernetes'.

Routes:
  GET    /healthz
  POST   /apply                                  body: one object (or a v1 Secret)
  GET    /objects?kind=&namespace=
  GET    /objects/{kind}/{namespace}/{name}
  DELETE /objects/{kind}/{namespace}/{name}?retain=true
  GET    /watch?kind=&namespace=&name=&resourceVersion=&timeoutSeconds=   (JSON lines)
  GET    /logs/{kind}/{namespace}/{name}?follow=true&tailLines=N           (text stream)
  GET    /secrets?namespace=        DELETE /secrets/{namespace}/{name}
  POST   /shutdown
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from substratus import __version__
from substratus.api.limits import MAX_DEPTH, MAX_REQUEST_BYTES
from substratus.api.loading import ValidationFailed
from substratus.runtimes.local.db import Gone
from substratus.runtimes.local.service import LocalService, NotFound

log = logging.getLogger("substratus.supervisor")

# A refused body is drained up to this much; past it the connection is just closed.
DISCARD_LIMIT = 64 * 1024 * 1024


class RequestTooLarge(ValueError):
    pass


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, service: LocalService, on_shutdown: Callable[[], None]):
        self.service = service
        self.on_shutdown = on_shutdown
        if path.exists():
            path.unlink()
        old = os.umask(0o177)  # the socket is the user's alone
        try:
            super().__init__(str(path), Handler)
        finally:
            os.umask(old)


class Handler(BaseHTTPRequestHandler):
    server: UnixHTTPServer
    protocol_version = "HTTP/1.0"

    def address_string(self) -> str:
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # -- plumbing -------------------------------------------------------------------------

    def _send(self, code: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, reason: str, message: str, **extra: Any) -> None:
        self._send(code, {"kind": "Status", "reason": reason, "message": message, **extra})

    def _stream(self, content_type: str, chunks: Iterator[bytes]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.end_headers()
        try:
            for chunk in chunks:
                self.wfile.write(chunk)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        svc = self.server.service
        try:
            self._route(method, parts, q, svc)
        except ValidationFailed as exc:
            self._error(422, "Invalid", str(exc), problems=[list(p) for p in exc.problems])
        except RequestTooLarge as exc:
            self._error(413, "RequestEntityTooLarge", str(exc))
        except RecursionError:
            # Input is bounded before anything recursive reads it; this is the last line.
            log.warning("%s %s: nesting too deep", method, self.path)
            self._error(400, "BadRequest", f"input nests deeper than {MAX_DEPTH} levels")
        except NotFound as exc:
            self._error(404, "NotFound", str(exc))
        except Gone as exc:
            self._error(410, "Expired", str(exc))
        except ValueError as exc:
            self._error(400, "BadRequest", str(exc))
        except (BrokenPipeError, ConnectionResetError):
            log.debug("%s %s: the client went away before the answer", method, self.path)
        except Exception as exc:
            log.exception("%s %s failed", method, self.path)
            self._error(500, "InternalError", f"{type(exc).__name__}: {exc}")

    def _client_open(self) -> bool:
        """The request was read whole, so a readable socket means the client hung up."""
        readable, _, _ = select.select([self.connection], [], [], 0)
        if not readable:
            return True
        try:
            return bool(self.connection.recv(1, socket.MSG_PEEK) != b"")
        except OSError:
            return False

    def _body(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise ValueError("Content-Length is not a number") from None
        if length < 0:
            raise ValueError("Content-Length is negative")
        if length > MAX_REQUEST_BYTES:
            self._discard(length)
            raise RequestTooLarge(
                f"request body is {length} bytes, more than the limit of {MAX_REQUEST_BYTES}"
            )
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except json.JSONDecodeError as exc:
            raise ValueError(f"request body is not JSON: {exc}") from None
        except RecursionError:
            raise ValueError(f"request body nests deeper than {MAX_DEPTH} levels") from None
        if not isinstance(body, dict):
            raise ValueError("request body must be a JSON object")
        return body

    def _discard(self, length: int) -> None:
        """Read and drop a refused body, so the client reads the answer instead of a reset."""
        left = min(length, DISCARD_LIMIT)
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                return
            left -= len(chunk)

    def _route(self, method: str, parts: list[str], q: dict[str, str], svc: LocalService) -> None:
        match method, parts:
            case "GET", ["healthz"]:
                self._send(200, {"ok": True, "pid": os.getpid(), "version": __version__})
            case "POST", ["apply"]:
                dry_run = q.get("dryRun", "").lower() in ("1", "true", "all")
                action, obj = svc.apply(self._body(), q.get("source", "<request>"), dry_run)
                self._send(200, {"action": action, "object": obj})
            case "GET", ["events"]:
                ns, kind, name = q.get("namespace"), q.get("kind"), q.get("name")
                self._send(200, {"items": svc.db.notices(ns, kind, name)})
            case "GET", ["objects"]:
                self._send(200, {"items": svc.list_objects(q.get("kind"), q.get("namespace"))})
            case "GET", ["objects", kind, ns, name]:
                self._send(200, svc.get(kind, ns, name))
            case "DELETE", ["objects", kind, ns, name]:
                retain = q.get("retain", "").lower() in ("1", "true")
                deleted, in_use = svc.delete(kind, ns, name, retain=retain)
                self._send(200, {"object": deleted, "inUseBy": in_use})
            case "GET", ["watch"]:
                rv = q.get("resourceVersion")
                if rv and not rv.isdigit():
                    raise ValueError(f"resourceVersion: {rv!r} is not one this supervisor gave")
                events = svc.watch(
                    q.get("kind"),
                    q.get("namespace"),
                    q.get("name"),
                    int(rv) if rv else None,
                    float(q.get("timeoutSeconds", "3600")),
                )
                self._stream(
                    "application/x-ndjson", (json.dumps(e).encode() + b"\n" for e in events)
                )
            case "GET", ["logs", kind, ns, name]:
                tail = q.get("tailLines")
                chunks = svc.follow_log(
                    kind,
                    ns,
                    name,
                    q.get("follow", "") == "true",
                    int(tail) if tail else None,
                    self._client_open,
                )
                self._stream("text/plain; charset=utf-8", chunks)
            case "GET", ["secrets"]:
                self._send(200, {"items": svc.secrets(q.get("namespace"))})
            case "DELETE", ["secrets", ns, name]:
                svc.delete_secret(ns, name)
                self._send(200, {"deleted": f"{ns}/{name}"})
            case "POST", ["shutdown"]:
                self._send(200, {"stopping": True})
                threading.Thread(target=self.server.on_shutdown, daemon=True).start()
            case _:
                self._error(404, "NotFound", f"no route for {method} {self.path}")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")
