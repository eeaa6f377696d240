"""A keyed work queue with delays: each object is reconciled by one worker, never twice at once.

A worker ``get``s a key and calls ``done`` when it is finished with it; a key added meanwhile is
handed out again only after ``done`` (as client-go's work queue does), so several workers never
reconcile one object at the same time.
"""

from __future__ import annotations

import heapq
import threading
import time
from typing import Generic, TypeVar

K = TypeVar("K")


class WorkQueue(Generic[K]):
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._ready: list[K] = []
        self._queued: set[K] = set()
        self._delayed: list[tuple[float, int, K]] = []
        self._due: dict[K, float] = {}  # the earliest pending delay per key; others are stale
        self._seq = 0
        self._closed = False
        self._processing: set[K] = set()
        self._again: set[K] = set()  # added while being processed

    def add(self, key: K, delay: float = 0.0) -> None:
        with self._cond:
            if delay > 0:
                due = time.monotonic() + delay
                if self._due.get(key, float("inf")) <= due:
                    return  # an earlier wake-up is already pending
                self._due[key] = due
                self._seq += 1
                heapq.heappush(self._delayed, (due, self._seq, key))
            else:
                self._make_ready(key)
            self._cond.notify()

    def _make_ready(self, key: K) -> None:
        if key in self._processing:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._ready.append(key)

    def get(self) -> K | None:
        """The next key due, or None once closed."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                now = time.monotonic()
                while self._delayed and self._delayed[0][0] <= now:
                    due, _, key = heapq.heappop(self._delayed)
                    if self._due.get(key) != due:
                        continue  # superseded by an earlier wake-up
                    del self._due[key]
                    self._make_ready(key)
                if self._ready:
                    key = self._ready.pop(0)
                    self._queued.discard(key)
                    self._processing.add(key)
                    return key
                timeout = self._delayed[0][0] - now if self._delayed else None
                self._cond.wait(timeout)

    def done(self, key: K) -> None:
        """The worker is finished with ``key``; if it was added meanwhile, it is due again."""
        with self._cond:
            self._processing.discard(key)
            if key in self._again:
                self._again.discard(key)
                self._make_ready(key)
                self._cond.notify()

    def __len__(self) -> int:
        """Keys due now (the queue's depth), not those waiting for a delay."""
        with self._cond:
            return len(self._ready)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
