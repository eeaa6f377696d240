"""Bounded retries with exponential backoff for failed jobs and crashing services."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    base_delay: float = 2.0
    max_delay: float = 300.0

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (1-based)."""
        if failures <= 0:
            return 0.0
        return float(min(self.base_delay * 2 ** (failures - 1), self.max_delay))
