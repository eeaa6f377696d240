"""The server's Prometheus metrics (``GET /metrics``), with ``prometheus_client``.

- ``substratus_server_requests_total{endpoint,status}`` and
  ``substratus_server_request_duration_seconds{endpoint}``: API requests (the probes ``/``,
  ``/health`` and ``/metrics`` are not counted);
- ``substratus_server_time_to_first_token_seconds`` and
  ``substratus_server_inter_token_latency_seconds``: per completion, from its queueing to its
  first token, and between its tokens;
- ``substratus_server_prompt_tokens_total``, ``substratus_server_generation_tokens_total``:
  tokens in and out (tokens/s is their ``rate()``);
- ``substratus_server_queue_depth`` (completions waiting for a batch slot),
  ``substratus_server_batch_size`` (completions decoding now), ``substratus_server_ready``;
- ``substratus_server_engine_*``: the engine's own counters and gauges (batch steps,
  prefills, the largest batch, cancellations...).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from substratus.workloads.server.engines.base import Chunk

PREFIX = "substratus_server"
# Seconds: from a warm cached prompt on a GPU to a long prompt on a CPU behind a queue.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Engine stats that have a name of their own above.
QUEUE_DEPTH, BATCH_SIZE = "waiting_sequences", "active_sequences"


class EngineCollector(Collector):
    """Reads the engine's stats at scrape time (they live in its own thread)."""

    def __init__(self, stats: Callable[[], dict[str, float]], ready: Callable[[], bool]) -> None:
        self.stats, self.ready = stats, ready

    def collect(self) -> Iterator[Metric]:
        stats = self.stats()
        yield GaugeMetricFamily(f"{PREFIX}_ready", "1 once the model is loaded", value=self.ready())
        yield GaugeMetricFamily(
            f"{PREFIX}_queue_depth",
            "completions waiting for a slot in the batch",
            value=stats.get(QUEUE_DEPTH, 0.0),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_batch_size", "completions decoding now", value=stats.get(BATCH_SIZE, 0.0)
        )
        for key, value in sorted(stats.items()):
            name = f"{PREFIX}_engine_{key}"
            if key.endswith("_total"):
                yield CounterMetricFamily(name.removesuffix("_total"), f"engine: {key}", value)
            else:
                yield GaugeMetricFamily(name, f"engine: {key}", value=value)


class ServerMetrics:
    """One server's metrics, in a registry of its own (tests run several in one process)."""

    def __init__(self, stats: Callable[[], dict[str, float]], ready: Callable[[], bool]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests",
            "API requests by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.duration = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "API requests' time to the response's last byte",
            ["endpoint"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            f"{PREFIX}_time_to_first_token_seconds",
            "a completion's time from queued to its first token",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            f"{PREFIX}_inter_token_latency_seconds",
            "time between a completion's tokens",
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(f"{PREFIX}_prompt_tokens", "prompt tokens", registry=r)
        self.generation_tokens = Counter(
            f"{PREFIX}_generation_tokens", "generated tokens", registry=r
        )
        r.register(EngineCollector(stats, ready))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.duration.labels(endpoint).observe(seconds)

    def completion(self, times: Sequence[float], tokens: int) -> None:
        """A finished completion: its timeline (when it was queued, then each token; empty
        when unknown) and the tokens it generated."""
        self.generation_tokens.inc(tokens)
        if len(times) < 2:
            return
        self.ttft.observe(times[1] - times[0])
        for before, after in itertools.pairwise(times[1:]):
            self.itl.observe(after - before)


class Timeline:
    """A completion's timeline from its chunks as the HTTP layer receives them, for engines
    that keep none: a chunk's tokens are spread evenly since the chunk before (the first
    chunk's all at its arrival). A completion answered in one piece has no timeline."""

    def __init__(self, stream: bool) -> None:
        self.stream = stream
        self.times = [time.monotonic()]
        self.tokens = 0

    def chunk(self, chunk: Chunk) -> tuple[tuple[float, ...], int] | None:
        """Take a chunk; on the last one, the timeline (the engine's own when it has one,
        else empty when not streamed) and the number of tokens generated."""
        now, came = time.monotonic(), chunk.completion_tokens - self.tokens
        if came > 0:
            last, first = self.times[-1], self.tokens == 0
            step = 0.0 if first else (now - last) / came
            self.times += [now - step * (came - 1 - i) for i in range(came)]
            self.tokens = chunk.completion_tokens
        if chunk.finish_reason is None:
            return None
        if chunk.token_times:
            return chunk.token_times, chunk.completion_tokens
        return (tuple(self.times) if self.stream else ()), chunk.completion_tokens
