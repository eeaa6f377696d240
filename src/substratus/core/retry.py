"""Bounded retries with exponential backoff for failed jobs and crashing services."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    base_delay: float = 2.0
    max_delay: float = 300.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RetryPolicy:
        """``SUBSTRATUS_JOB_ATTEMPTS``, ``SUBSTRATUS_BACKOFF_SECONDS``,
        ``SUBSTRATUS_BACKOFF_MAX_SECONDS``; both runtimes read the same settings."""
        default = cls()
        return cls(
            max_attempts=int(env.get("SUBSTRATUS_JOB_ATTEMPTS", default.max_attempts)),
            base_delay=float(env.get("SUBSTRATUS_BACKOFF_SECONDS", default.base_delay)),
            max_delay=float(env.get("SUBSTRATUS_BACKOFF_MAX_SECONDS", default.max_delay)),
        )

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (1-based)."""
        if failures <= 0:
            return 0.0
        return float(min(self.base_delay * 2 ** (failures - 1), self.max_delay))
