"""A port-forward to a pod, as ``kubectl port-forward`` makes, over the API server's WebSocket
port-forward endpoint (``pods/NAME/portforward``, channel protocol ``v4.channel.k8s.io``).

Every local TCP connection gets its own WebSocket, opened to the pod that serves *now* (asked
of ``pod_for`` each time): a connection dropped by the network or a restarted pod ends that one
connection, and the next one (the browser and Jupyter reconnect on their own, as does the sync)
reaches the new pod. TLS and credentials are the kubeconfig's, as ``kubehttp`` reads them
(client certificates, tokens, exec plugins).

The channel protocol: each binary message starts with a channel byte; for one port, channel 0
carries data and channel 1 errors, and the first message on each is the port number (two
bytes, little-endian).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import websocket

from substratus.cli.kubehttp import ApiServer

PROTOCOL = "v4.channel.k8s.io"
DATA, ERROR = 0, 1
CONNECT_ATTEMPTS = 5
CHUNK = 64 * 1024


class PortForwardError(Exception):
    pass


def _ws_url(server: str, namespace: str, pod: str, port: int) -> str:
    parts = urlsplit(server)
    scheme = "wss" if parts.scheme == "https" else "ws"
    path = (
        parts.path.rstrip("/")
        + f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}/portforward"
    )
    return urlunsplit((scheme, parts.netloc, path, f"ports={port}", ""))


class PortForward:
    def __init__(
        self,
        api: ApiServer,
        namespace: str,
        pod_for: Callable[[], str],
        remote_port: int,
        report: Callable[[str], None],
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.pod_for = pod_for
        self.remote_port = remote_port
        self.report = report
        self.listener: socket.socket | None = None
        self.closed = threading.Event()

    def _headers(self) -> list[str]:
        """The kubeconfig's credentials as request headers (an exec plugin runs when its token
        is first needed)."""
        return [f"{k}: {v}" for k, v in self.api.auth_headers().items()]

    def start(self, local_port: int | None = None) -> int:
        """Listen on 127.0.0.1: ``local_port``, else the remote port when free, else any."""
        for port in [local_port] if local_port is not None else [self.remote_port, 0]:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as e:
                sock.close()
                if local_port is not None:
                    raise PortForwardError(f"--port {local_port}: {e.strerror}") from None
                continue
            sock.listen(64)
            self.listener = sock
            break
        assert self.listener is not None
        threading.Thread(target=self._accept, name="port-forward", daemon=True).start()
        return int(self.listener.getsockname()[1])

    def close(self) -> None:
        self.closed.set()
        if self.listener is not None:
            with contextlib.suppress(OSError):
                self.listener.close()

    def _accept(self) -> None:
        assert self.listener is not None
        while not self.closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def connect(self) -> websocket.WebSocket:
        """A WebSocket to the serving pod, past its port header frames; retried while the pod
        is being replaced."""
        last: Exception | None = None
        for attempt in range(CONNECT_ATTEMPTS):
            if attempt:
                time.sleep(0.2 * attempt)
            try:
                pod = self.pod_for()
                url = _ws_url(self.api.server, self.namespace, pod, self.remote_port)
                context = self.api.ssl_context
                sslopt: dict[str, Any] = {"context": context} if context is not None else {}
                ws = websocket.create_connection(
                    url,
                    header=self._headers(),
                    subprotocols=[PROTOCOL],
                    sslopt=sslopt,
                    timeout=10,
                    enable_multithread=True,
                )
                seen: set[int] = set()
                while seen != {DATA, ERROR}:  # the port number, once on each channel
                    frame = ws.recv()
                    if isinstance(frame, bytes) and len(frame) == 3:
                        seen.add(frame[0])
                    else:
                        raise PortForwardError(f"unexpected first frame {frame!r:.80}")
                ws.settimeout(None)
                return ws
            except Exception as e:  # the pod may be going or coming: try again
                last = e
        raise PortForwardError(f"port-forward to the notebook pod: {last}")

    def _serve(self, conn: socket.socket) -> None:
        try:
            ws = self.connect()
        except PortForwardError as e:
            self.report(str(e))
            conn.close()
            return
        done = threading.Event()

        def upstream() -> None:  # local connection → pod
            try:
                while not done.is_set():
                    data = conn.recv(CHUNK)
                    if not data:
                        break
                    ws.send_binary(bytes([DATA]) + data)
            except (OSError, websocket.WebSocketException):
                pass
            finally:
                done.set()
                with contextlib.suppress(Exception):
                    ws.close()

        threading.Thread(target=upstream, daemon=True).start()
        try:
            while not done.is_set():
                frame = ws.recv()
                if not isinstance(frame, bytes) or not frame:
                    if frame in ("", b""):
                        break  # closed
                    continue
                if frame[0] == DATA:
                    conn.sendall(frame[1:])
                elif frame[0] == ERROR and len(frame) > 1:
                    self.report(f"port-forward: {frame[1:].decode(errors='replace')}")
        except (OSError, websocket.WebSocketException):
            pass
        finally:
            done.set()
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
            with contextlib.suppress(Exception):
                ws.close()
