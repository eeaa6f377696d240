"""Loopback ports for servers and notebooks, never handed out twice while in use."""

from __future__ import annotations

import socket
import threading


class PortAllocator:
    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self._held: set[int] = set()
        self._lock = threading.Lock()

    def reserve(self, port: int) -> None:
        """Mark a port as ours (a recovered process already listens on it)."""
        with self._lock:
            self._held.add(port)

    def allocate(self, prefer: int | None = None) -> int:
        """A free port: ``prefer`` if it is free (a restarted proxy keeps its address)."""
        with self._lock:
            if prefer is not None and prefer not in self._held:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    try:
                        s.bind((self.host, prefer))
                    except OSError:
                        pass
                    else:
                        self._held.add(prefer)
                        return prefer
            for _ in range(100):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind((self.host, 0))
                    port = int(s.getsockname()[1])
                if port not in self._held:
                    self._held.add(port)
                    return port
        raise RuntimeError("no free loopback port found")

    def release(self, port: int | None) -> None:
        if port is not None:
            with self._lock:
                self._held.discard(port)
