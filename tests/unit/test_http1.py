"""runtimes/http1.py against real HTTP servers on loopback: sized, chunked and close-ended
bodies, lines across chunk boundaries, kept-alive connections (and one the server closed
meanwhile, also over TLS), and answers that are not HTTP."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from substratus.runtimes import http1


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    connections: ClassVar[set[int]] = set()

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        Handler.connections.add(id(self.connection))
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b"line one\nline ", b"two\n", b"", b"tail"):
                if piece:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\nX-Trailer: 1\r\n\r\n")
        elif self.path == "/close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"until the end")
            self.close_connection = True
        elif self.path == "/empty":
            self.send_response(204)
            self.end_headers()
        else:
            body = f"{self.command} {self.path} {self.headers['Host']}".encode()
            self.send_response(404 if self.path == "/missing" else 200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Multi", "a")
            self.send_header("X-Multi", "b")
            self.end_headers()
            self.wfile.write(body)

    def do_PATCH(self) -> None:
        size = int(self.headers["Content-Length"])
        body = self.rfile.read(size)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[tuple[str, int]]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield "127.0.0.1", httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def _connection(address: tuple[str, int]) -> http1.Connection:
    return http1.Connection(lambda: socket.create_connection(address, 5), "api:6443")


def test_sized_chunked_and_close_ended_bodies_on_one_kept_alive_connection(
    server: tuple[str, int],
) -> None:
    Handler.connections = set()
    conn = _connection(server)
    first = conn.request("GET", "/a?b=c")
    assert (first.status, first.read()) == (200, b"GET /a?b=c api:6443")
    assert first.headers["x-multi"] == "a, b"
    missing = conn.request("GET", "/missing")
    assert missing.status == 404 and missing.read().startswith(b"GET /missing")
    sent = conn.request("PATCH", "/p", {"Content-Type": "application/json"}, b'{"x": 1}')
    assert sent.read() == b'{"x": 1}'
    chunked = conn.request("GET", "/chunked")
    lines = []
    while line := chunked.readline():
        lines.append(line)
    assert lines == [b"line one\n", b"line two\n", b"tail"]
    assert conn.request("GET", "/empty").read() == b""
    assert len(Handler.connections) == 1  # every answer read whole: the connection kept
    closing = conn.request("GET", "/close")
    assert closing.read() == b"until the end" and conn.sock is None
    assert conn.request("GET", "/again").read() == b"GET /again api:6443"  # dialled again
    conn.close()


def _tls_contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server's context with a self-signed certificate for 127.0.0.1, and a client's
    that trusts it."""
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", key, "-out", cert, "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=cert)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_kept_alive_connection_the_server_closed_is_dialled_again(
    tls: bool, tmp_path: Path
) -> None:
    """A server that hangs up on an idle connection (as API servers and proxies do). Over
    TLS it drops it without a close_notify, as a proxy or load balancer may: the socket
    reads a ragged EOF as the end (wrap_socket's default), and the request goes out again."""
    server_tls, client_tls = _tls_contexts(tmp_path) if tls else (None, None)
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def serve() -> None:
        while True:
            try:
                peer = listener.accept()[0]
            except OSError:
                return
            if server_tls is not None:
                peer = server_tls.wrap_socket(peer, server_side=True)
            accepted.append(peer)
            request = b""
            while b"\r\n\r\n" not in request:
                request += peer.recv(4096)
            body = request.split(b" ")[1]
            peer.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            # No Connection: close said: the client finds out on its next request. Over TLS
            # a FIN without close_notify, the socket left open (so no RST follows).
            if tls:
                peer.shutdown(socket.SHUT_WR)
            else:
                peer.close()

    def dial() -> socket.socket:
        sock = socket.create_connection(listener.getsockname(), 5)
        if client_tls is None:
            return sock
        return client_tls.wrap_socket(sock, server_hostname="127.0.0.1")

    threading.Thread(target=serve, daemon=True).start()
    conn = http1.Connection(dial, "api:6443")
    assert conn.request("GET", "/one").read() == b"/one"
    time.sleep(0.2)
    assert conn.request("GET", "/two").read() == b"/two"
    assert len(accepted) == 2
    listener.close()


def test_an_answer_that_is_not_http_is_a_protocol_error() -> None:
    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        peer, _ = listener.accept()
        peer.recv(4096)
        peer.sendall(b"SSH-2.0-OpenSSH\r\n")
        peer.close()

    threading.Thread(target=answer, daemon=True).start()
    conn = _connection(listener.getsockname())
    with pytest.raises(http1.ProtocolError, match=r"not an HTTP/1\.x answer"):
        conn.request("GET", "/")
    listener.close()
    with pytest.raises(OSError):  # nobody listens now
        conn.request("GET", "/")
