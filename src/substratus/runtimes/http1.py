"""HTTP/1.1 for the CLI's clients (the local supervisor over its unix socket, the Kubernetes
API over TLS): a request on a socket the caller opens, and its answer whole or as it comes.

Not http.client: it imports the email package to parse headers, a fifth of a `sub get`'s
start-up; these clients need a status, a few headers and a body that is sized, chunked or
ended by the server closing the connection. Errors are ``OSError``s (``ProtocolError`` for
an answer that is not HTTP), so a caller's one ``except OSError`` covers the network and the
protocol alike.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Callable, Iterator

MAX_HEADER_LINE = 64 * 1024
MAX_HEADERS = 200


class ProtocolError(OSError):
    """The peer's answer is not HTTP/1.x as it should be."""


class Response:
    """One answer: ``status``, ``reason``, ``headers`` (names in lower case) and a body read
    with ``read`` (whole), ``read1`` (what has come) or ``readline``."""

    def __init__(self, conn: Connection, head_only: bool) -> None:
        self._conn = conn
        assert conn.file is not None
        self._file = conn.file
        line = self._line()
        version, _, rest = line.partition(b" ")
        code, _, reason = rest.partition(b" ")
        if not version.startswith(b"HTTP/1.") or not code.isdigit():
            raise ProtocolError(f"not an HTTP/1.x answer: {line[:80]!r}")
        self.status, self.reason = int(code), reason.strip().decode("latin-1")
        self.headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS):
            line = self._line()
            if line in (b"\r\n", b"\n"):
                break
            name, colon, value = line.decode("latin-1").partition(":")
            if not colon:
                raise ProtocolError(f"malformed header line: {line[:80]!r}")
            key = name.strip().lower()
            value = value.strip()
            self.headers[key] = f"{self.headers[key]}, {value}" if key in self.headers else value
        else:
            raise ProtocolError(f"more than {MAX_HEADERS} header lines")
        self.keep_alive = self.headers.get("connection", "").lower() != "close"
        self._buffer = b""
        self._chunks: Iterator[bytes] | None = None
        self._left: int | None = None  # bytes of a sized body still to come
        if head_only or self.status in (204, 304) or 100 <= self.status < 200:
            self._left = 0
        elif self.headers.get("transfer-encoding", "").lower().endswith("chunked"):
            self._chunks = self._chunked()
        elif "content-length" in self.headers:
            try:
                self._left = int(self.headers["content-length"])
            except ValueError:
                raise ProtocolError("a Content-Length that is not a number") from None
        else:
            self.keep_alive = False  # the body ends when the server closes the connection

    def _line(self) -> bytes:
        line = self._file.readline(MAX_HEADER_LINE + 1)
        if not line:
            raise ConnectionResetError("the server closed the connection without answering")
        if len(line) > MAX_HEADER_LINE:
            raise ProtocolError("a header line longer than 64 KiB")
        return line

    def _chunked(self) -> Iterator[bytes]:
        file = self._file
        while True:
            size_line = self._line().split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise ProtocolError(f"a bad chunk size: {size_line[:20]!r}") from None
            if size == 0:
                while self._line() not in (b"\r\n", b"\n"):  # trailers
                    pass
                return
            while size:
                data = file.read1(min(size, 65536))
                if not data:
                    raise ConnectionResetError("the connection closed inside a chunk")
                size -= len(data)
                yield data
            self._line()  # the CRLF after the chunk

    def read1(self, limit: int = 65536) -> bytes:
        """What has arrived of the body (at most ``limit`` bytes); b"" at its end."""
        if self._buffer:  # what readline read past its line
            data, self._buffer = self._buffer[:limit], self._buffer[limit:]
            return data
        return self._next(limit)

    def _next(self, limit: int = 65536) -> bytes:
        if self._chunks is not None:
            data = next(self._chunks, b"")
        elif self._left is None:
            data = self._file.read1(limit)
        elif self._left:
            data = self._file.read1(min(limit, self._left))
            if not data:
                raise ConnectionResetError("the connection closed before the body's end")
            self._left -= len(data)
        else:
            data = b""
        if not data:
            self._conn.done(self)
        return data

    def read(self) -> bytes:
        """The whole body."""
        parts = []
        while data := self.read1():
            parts.append(data)
        return b"".join(parts)

    def readline(self) -> bytes:
        """The next line of the body, with its newline; b"" at the body's end."""
        while b"\n" not in self._buffer:
            data = self._next()
            if not data:
                line, self._buffer = self._buffer, b""
                return line
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line + b"\n"


class Connection:
    """Requests one after another on a socket that ``dial`` opens (again, after the server
    closed it); ``host`` is the Host header."""

    def __init__(self, dial: Callable[[], socket.socket], host: str) -> None:
        self._dial = dial
        self.host = host
        self.sock: socket.socket | None = None
        self.file: io.BufferedReader | None = None
        self._open: Response | None = None

    def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> Response:
        """Send a request and read the answer's head. A kept-alive connection that the
        server has closed meanwhile is dialled again, once."""
        if self._open is not None:  # an unread answer: its connection cannot carry another
            self.close()
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body or b'')}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        for attempt in (1, 2):
            reused = self.sock is not None
            if self.sock is None:
                self.sock = self._dial()
                self.file = self.sock.makefile("rb")
            try:
                self.sock.sendall(head + (body or b""))
                self._open = Response(self, head_only=method == "HEAD")
                return self._open
            except (ConnectionResetError, BrokenPipeError):
                self.close()
                if not (reused and attempt == 1):
                    raise
        raise AssertionError("unreachable")

    def done(self, response: Response) -> None:
        """``response``'s body has been read: the connection may carry the next request."""
        if self._open is response:
            self._open = None
            if not response.keep_alive:
                self.close()

    def close(self) -> None:
        self._open = None
        if self.file is not None:
            self.file.close()
        if self.sock is not None:
            self.sock.close()
        self.sock = self.file = None
