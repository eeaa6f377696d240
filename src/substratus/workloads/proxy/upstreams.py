"""The replicas behind the proxy: which exist (a fixed list, a file the runtime rewrites, or
what the operator last sent), which answer 200 on ``/`` (the contract's readiness), and how
many requests each has."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path

import aiohttp

log = logging.getLogger("substratus.proxy")

PROBE_TIMEOUT = 2.0
FAST_PROBE = 0.1  # while requests wait for a replica, or none is ready
SLOW_PROBE = 1.0
SAY_EVERY = 10.0


class Upstreams:
    def __init__(self, urls: list[str], file: Path | None = None):
        self.urls = [u.rstrip("/") for u in urls]
        self.file = file
        self._mtime: int | None = None
        self.ready: set[str] = set()
        self.in_flight: dict[str, int] = {}
        self.waiters = 0  # requests held: probe often
        self._said: dict[str, float] = {}  # url -> when its not being ready was last logged
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()  # a request began to wait: probe now

    # -- choosing ---------------------------------------------------------------------------

    def pick(self) -> str | None:
        """The ready replica with the fewest requests in flight (the first, on a tie)."""
        ready = [u for u in self.urls if u in self.ready]
        if not ready:
            return None
        return min(ready, key=lambda u: self.in_flight.get(u, 0))

    def down(self, url: str) -> None:
        """A connection to ``url`` was refused: not ready until a probe says so again."""
        if url in self.ready:
            self.ready.discard(url)
            self._notify()

    async def changed(self, timeout: float) -> None:
        """Wait until the set of ready replicas changes, or ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- watching ---------------------------------------------------------------------------

    def reload(self) -> None:
        """Read the list of replicas again if its file changed (written whole, then renamed)."""
        if self.file is None:
            return
        try:
            mtime = self.file.stat().st_mtime_ns
            if mtime == self._mtime:
                return
            urls = json.loads(self.file.read_text())
        except (OSError, ValueError):
            return  # not written yet: keep what we have
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            log.warning("%s: expected a JSON list of URLs", self.file)
            return
        self._mtime = mtime
        self.replace(urls)

    def replace(self, urls: list[str]) -> None:
        """The replicas are now ``urls``: those gone get no new request (their own finish)."""
        self.urls = [u.rstrip("/") for u in urls]
        gone = self.ready - set(self.urls)
        if gone:
            self.ready -= gone
            self._notify()
        self._wake.set()  # probe the new ones now

    async def watch(self, session: aiohttp.ClientSession) -> None:
        """Probe every replica's ``/`` forever: often while requests wait, else each second."""
        while True:
            self._wake.clear()  # a wake-up from here on means another round at once
            self.reload()
            urls = list(self.urls)
            results = await asyncio.gather(*(self._probe(session, u) for u in urls))
            # (The list may have been replaced while the probes ran.)
            now_ready = {u for u, ok in zip(urls, results, strict=True) if ok} & set(self.urls)
            if now_ready != self.ready:
                added = now_ready - self.ready
                if added:
                    log.info("ready: %s", ", ".join(sorted(added)))
                self.ready = now_ready
                self._notify()
            # Often while requests wait; else once a second (at zero replicas too: nobody needs
            # an answer, and a new waiter wakes this at once).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), FAST_PROBE if self.waiters > 0 else SLOW_PROBE
                )

    def waiting(self, change: int) -> None:
        """A request starts (+1) or stops (-1) waiting for a ready replica."""
        self.waiters += change
        if change > 0:
            self._wake.set()

    async def _probe(self, session: aiohttp.ClientSession, url: str) -> bool:
        try:
            timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
            async with session.get(url + "/", timeout=timeout) as resp:
                if resp.status == 200:
                    return True
                why = f"GET / answered {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            why = f"{type(exc).__name__}: {exc}"
        # Why a replica is not ready, now and then (a held request waits on it).
        now = time.monotonic()
        if self.waiters and now - self._said.get(url, 0.0) >= SAY_EVERY:
            self._said[url] = now
            log.info("not ready: %s (%s)", url, why)
        return False
