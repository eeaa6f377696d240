"""Requests in flight and held, and their highest sum over a window (the scale-down delay)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class Demand:
    """Counts that the proxy changes as requests come and go; ``peak()`` is the highest
    ``in_flight + waiting`` within the last ``window`` seconds, now included. Memory is one
    entry per second of the window, however many requests come."""

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic):
        self.window = window
        self.clock = clock
        self.in_flight = 0
        self.waiting = 0
        self._seconds: deque[list[int]] = deque()  # [second, highest demand in it]

    @property
    def now(self) -> int:
        return self.in_flight + self.waiting

    def change(self, in_flight: int = 0, waiting: int = 0) -> None:
        before = self.now
        self.in_flight += in_flight
        self.waiting += waiting
        self._record(max(before, self.now))

    def note(self, demand: int) -> None:
        """A moment of demand that left no count behind (a request turned away at once)."""
        self._record(demand)

    def _record(self, demand: int) -> None:
        second = int(self.clock())
        if self._seconds and self._seconds[-1][0] == second:
            self._seconds[-1][1] = max(self._seconds[-1][1], demand)
        else:
            self._seconds.append([second, demand])
        self._prune()

    def peak(self) -> int:
        self._prune()
        return max([self.now, *(d for _, d in self._seconds)])

    def _prune(self) -> None:
        # A second that began before the window may still have held demand inside it: keep
        # the one second before the window's start.
        start = self.clock() - self.window - 1
        while self._seconds and self._seconds[0][0] < start:
            self._seconds.popleft()
