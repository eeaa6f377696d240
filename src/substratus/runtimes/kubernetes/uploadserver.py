"""The operator's own upload endpoint, for clusters whose bucket cannot sign URLs for clients
(an in-cluster S3 server clients cannot reach, a file store): the same flow as a bucket's
signed URLs, with the operator signing and receiving.

A URL is ``<public URL>/uploads/<path>?expires=<unix time>&md5=<hex>&sig=<HMAC-SHA256>``, where
``<path>`` is the object's place under the artifact store (always under ``.uploads/``) and the
signature covers the method, the path, the expiry and the md5 with a key only the operator
holds (``SUBSTRATUS_UPLOAD_KEY``, from a Secret, so every replica and restart agrees). A PUT is
refused when the signature, the expiry or the ``Content-MD5`` header do not match; the body is
streamed to a temporary file, its md5 checked, and only then stored: nothing partial or
unverified lands where a build reads it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import tempfile
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from substratus.storage import ArtifactStore, StorageError

log = logging.getLogger("substratus.operator")

PREFIX = "/uploads/"
MAX_BYTES = 20 << 30  # a context at most (the unpack limit's cap)
CHUNK = 1 << 20


class UploadEndpoint:
    def __init__(self, store: ArtifactStore, key: bytes, public_url: str) -> None:
        self.store = store
        self.key = key
        self.public_url = public_url.rstrip("/")
        self.server: ThreadingHTTPServer | None = None

    def _signature(self, path: str, expires: int, md5: str) -> str:
        message = f"PUT\n{path}\n{expires}\n{md5}".encode()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()

    def sign(self, object_url: str, seconds: int, md5: str | None) -> str:
        """A URL for one PUT of ``object_url`` (a URL under the artifact store)."""
        base = self.store.base_url.rstrip("/") + "/"
        if not object_url.startswith(base):
            raise StorageError(f"{object_url} is not under {base}")
        path = object_url[len(base) :]
        expires = int(time.time()) + seconds
        sig = self._signature(path, expires, md5 or "")
        query = f"expires={expires}&md5={md5 or ''}&sig={sig}"
        return f"{self.public_url}{PREFIX}{quote(path)}?{query}"

    def check(self, path: str, query: dict[str, list[str]], content_md5: str | None) -> str:
        """The md5 (hex, maybe empty) a PUT of ``path`` may store; PermissionError if its URL
        is not one this endpoint signed or has expired, ValueError if the header is wrong."""
        try:
            expires = int(query["expires"][0])
            md5 = query.get("md5", [""])[0]
            sig = query["sig"][0]
        except (KeyError, IndexError, ValueError):
            raise PermissionError("not a signed upload URL") from None
        if not path.startswith(".uploads/") or ".." in path.split("/"):
            raise PermissionError("not an upload path")
        if not hmac.compare_digest(sig, self._signature(path, expires, md5)):
            raise PermissionError("the signature does not match")
        if expires < time.time():
            raise PermissionError("the URL has expired")
        if md5:
            expected = base64.b64encode(bytes.fromhex(md5)).decode()
            if content_md5 != expected:
                raise ValueError(f"Content-MD5 must be {expected} (the md5 this URL is for)")
        return md5

    def receive(self, path: str, md5: str, body: Any, length: int) -> None:
        """Stream ``length`` bytes of ``body`` to a temporary file, check the md5, store."""
        digest = hashlib.md5(usedforsecurity=False)
        with tempfile.TemporaryDirectory(prefix="substratus-upload-") as tmp:
            local = Path(tmp) / "context.tar.gz"
            with open(local, "wb") as f:
                left = length
                while left > 0:
                    chunk = body.read(min(CHUNK, left))
                    if not chunk:
                        raise ConnectionError(f"the body ended {left} bytes short")
                    digest.update(chunk)
                    f.write(chunk)
                    left -= len(chunk)
            if md5 and digest.hexdigest() != md5:
                raise ValueError(f"the body's md5 is {digest.hexdigest()}, not {md5}")
            self.store.put_file(local, self.store.base_url.rstrip("/") + "/" + path)

    def serve(self, host: str, port: int) -> int:
        """Listen in a thread; returns the port (0: any free one)."""
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: HTTPStatus, message: str) -> None:
                data = (message + "\n").encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                parts = urlsplit(self.path)
                if not parts.path.startswith(PREFIX):
                    return self._reply(HTTPStatus.NOT_FOUND, "not an upload URL")
                path = unquote(parts.path[len(PREFIX) :])
                try:
                    md5 = endpoint.check(path, parse_qs(parts.query), self.headers["Content-MD5"])
                except PermissionError as e:
                    return self._reply(HTTPStatus.FORBIDDEN, str(e))
                except ValueError as e:
                    return self._reply(HTTPStatus.BAD_REQUEST, str(e))
                length = self.headers.get("Content-Length")
                if length is None or not length.isdigit():
                    return self._reply(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
                if int(length) > MAX_BYTES:
                    return self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"over {MAX_BYTES}")
                try:
                    endpoint.receive(path, md5, self.rfile, int(length))
                except ValueError as e:
                    return self._reply(HTTPStatus.BAD_REQUEST, str(e))
                except (StorageError, OSError) as e:
                    log.warning("upload of %s failed: %s", path, e)
                    return self._reply(HTTPStatus.BAD_GATEWAY, f"cannot store the upload: {e}")
                log.info("received %s (%s bytes)", path, length)
                return self._reply(HTTPStatus.CREATED, "stored")

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="uploads", daemon=True).start()
        return int(self.server.server_address[1])

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
