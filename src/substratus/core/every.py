"""A function called every few seconds in a thread of its own, until stopped: the runtimes'
pollers (proxies' loads, jobs' progress). An exception is logged, never the end of it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable


class Every:
    def __init__(self, seconds: float, fn: Callable[[], None], name: str, log: logging.Logger):
        self.seconds = seconds
        self.fn = fn
        self.name = name
        self.log = log
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.seconds):
            try:
                self.fn()
            except Exception:  # a bug must not stop the polling for good
                self.log.exception("%s failed", self.name)
