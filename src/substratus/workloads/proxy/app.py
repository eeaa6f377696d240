"""The proxy's HTTP side: hold, forward, stream back; its load and metrics."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from substratus.core.autoscale import LOAD_PATH, METRICS_PATH, TOKEN_HEADER, UPSTREAMS_PATH
from substratus.workloads.apikeys import PROTECTED_PREFIX, allowed, refusal
from substratus.workloads.proxy.demand import Demand
from substratus.workloads.proxy.upstreams import Upstreams

log = logging.getLogger("substratus.proxy")

# Hop-by-hop headers (RFC 9110 7.6.1) and those the client library sets itself.
_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
MAX_BODY = 64 * 1024 * 1024  # requests are buffered to be replayable on a refused connection
REASON_HEADER = "X-Substratus-Reason"
QUEUED_HEADER = "X-Substratus-Queued-Seconds"
MAX_UPSTREAMS = 1000


@dataclass(frozen=True)
class Settings:
    queue_limit: int
    queue_timeout: float
    keys: tuple[bytes, ...] = ()  # the Server's API_KEYS: checked before a request may wake it
    token: bytes = b""  # the operator's, to replace the upstreams; none: they are not replaced


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "substratus_proxy_requests", "Requests answered, by status code", ["code"], registry=r
        )
        self.rejected = Counter(
            "substratus_proxy_rejected", "Requests turned away with a 503, by reason", ["reason"],
            registry=r,
        )  # fmt: skip
        self.queued = Histogram(
            "substratus_proxy_queued_seconds",
            "How long a held request waited for a ready replica (the cold start it saw)",
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600),
            registry=r,
        )
        self.in_flight = Gauge(
            "substratus_proxy_in_flight", "Requests being answered by replicas", registry=r
        )
        self.waiting = Gauge(
            "substratus_proxy_waiting", "Requests held while no replica is ready", registry=r
        )
        self.ready = Gauge("substratus_proxy_ready_replicas", "Replicas answering", registry=r)


class Proxy:
    def __init__(self, upstreams: Upstreams, demand: Demand, settings: Settings):
        self.upstreams = upstreams
        self.demand = demand
        self.settings = settings
        self.metrics = Metrics()
        self.session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.cleanup_ctx.append(self._lifetime)
        return app

    async def _lifetime(self, app: web.Application) -> AsyncIterator[None]:
        # No total timeout: a streamed answer may take as long as it takes; connecting must not.
        timeout = aiohttp.ClientTimeout(total=None, connect=5, sock_connect=5)
        connector = aiohttp.TCPConnector(limit=0)
        self.session = aiohttp.ClientSession(
            timeout=timeout, connector=connector, auto_decompress=False
        )
        watcher = asyncio.create_task(self.upstreams.watch(self.session))
        yield
        watcher.cancel()
        await self.session.close()

    # -- routes -----------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if request.method == "GET" and path in ("/", "/health"):
            # The proxy's own readiness: answering probes must not wake a replica.
            ready = len(self.upstreams.ready)
            return web.json_response({"status": "ok", "readyReplicas": ready})
        if path == LOAD_PATH:
            return web.json_response(self.load())
        if path == UPSTREAMS_PATH:
            return await self.put_upstreams(request)
        if path == METRICS_PATH:
            self._gauges()
            body = generate_latest(self.metrics.registry)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
        header = request.headers.get("Authorization")
        keys = self.settings.keys
        if keys and path.startswith(PROTECTED_PREFIX) and not allowed(keys, header):
            refused = _error(401, "invalid_api_key", refusal(header))
            refused.headers["WWW-Authenticate"] = "Bearer"
            self.metrics.requests.labels("401").inc()
            return refused
        response = await self.forward(request)
        self.metrics.requests.labels(str(response.status)).inc()
        return response

    def load(self) -> dict[str, object]:
        return {
            "inFlight": self.demand.in_flight,
            "waiting": self.demand.waiting,
            "peak": self.demand.peak(),
            "window": self.demand.window,
            "readyReplicas": len(self.upstreams.ready),
            "replicas": len(self.upstreams.urls),
            "upstreams": list(self.upstreams.urls),
        }

    async def put_upstreams(self, request: web.Request) -> web.Response:
        """The operator's list of the replicas' URLs replaces the proxy's."""
        token = self.settings.token
        if not token:
            return _error(404, "not_found", "this proxy's replicas are not set through its API")
        if request.method != "PUT":
            return _error(405, "method_not_allowed", f"{UPSTREAMS_PATH} takes PUT")
        given = request.headers.get(TOKEN_HEADER, "").encode()
        if not hmac.compare_digest(given, token):
            return _error(403, "forbidden", f"{TOKEN_HEADER}: missing or not this proxy's token")
        try:
            urls = await request.json()
        except ValueError:
            urls = None
        if (
            not isinstance(urls, list)
            or len(urls) > MAX_UPSTREAMS
            or not all(isinstance(u, str) and u.startswith(("http://", "https://")) for u in urls)
        ):
            return _error(
                400, "invalid_request",
                f"expected a JSON list of at most {MAX_UPSTREAMS} http(s) URLs",
            )  # fmt: skip
        if [u.rstrip("/") for u in urls] != self.upstreams.urls:
            log.info("replicas: %s", ", ".join(urls) or "none")
            self.upstreams.replace(urls)
        return web.json_response({"upstreams": self.upstreams.urls})

    def _gauges(self) -> None:
        self.metrics.in_flight.set(self.demand.in_flight)
        self.metrics.waiting.set(self.demand.waiting)
        self.metrics.ready.set(len(self.upstreams.ready))

    # -- forwarding -------------------------------------------------------------------------

    async def forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        started = time.monotonic()
        deadline = started + self.settings.queue_timeout
        held = False
        while True:
            url = self.upstreams.pick()
            if url is None:
                if not held and self.demand.waiting >= self.settings.queue_limit:
                    self.demand.note(self.demand.now + 1)  # seen by the autoscaler all the same
                    return self._reject(
                        "queue_full",
                        f"no replica is ready and {self.demand.waiting} requests already wait "
                        f"(autoscaling.queueLimit {self.settings.queue_limit})",
                    )
                url = await self._hold(deadline, held)
                held = True
                if url is None:
                    return self._reject(
                        "queue_timeout",
                        f"no replica became ready within {self.settings.queue_timeout:g}s "
                        "(autoscaling.queueTimeoutSeconds)",
                    )
            if held:
                self.metrics.queued.observe(time.monotonic() - started)
            response = await self._send(request, url, body, started if held else None)
            if response is not None:
                return response
            # The connection was refused before anything was sent: another replica, or wait.

    async def _hold(self, deadline: float, counted: bool) -> str | None:
        """Wait for a ready replica until ``deadline``; the request counts as waiting."""
        self.demand.change(waiting=1)
        self.upstreams.waiting(+1)
        try:
            while (url := self.upstreams.pick()) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                await self.upstreams.changed(left)
            return url
        finally:
            self.upstreams.waiting(-1)
            self.demand.change(waiting=-1)

    async def _send(
        self, request: web.Request, url: str, body: bytes, held_since: float | None
    ) -> web.StreamResponse | None:
        assert self.session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers["X-Forwarded-For"] = request.remote or ""
        self.demand.change(in_flight=1)
        self.upstreams.in_flight[url] = self.upstreams.in_flight.get(url, 0) + 1
        response: web.StreamResponse | None = None
        try:
            async with self.session.request(
                request.method,
                url + request.path_qs,
                headers=headers,
                data=body or None,
                allow_redirects=False,
            ) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for name, value in upstream.headers.items():
                    if name.lower() not in _HOP:
                        response.headers.add(name, value)
                if upstream.content_length is not None:
                    response.content_length = upstream.content_length
                if held_since is not None:
                    response.headers[QUEUED_HEADER] = f"{time.monotonic() - held_since:.3f}"
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except aiohttp.ClientConnectorError:
            self.upstreams.down(url)
            return None
        except (aiohttp.ClientError, TimeoutError, ConnectionResetError) as exc:
            # Leaving the block closed the replica's connection, so it stops generating.
            if response is not None and response.prepared:
                log.info("%s %s via %s ended early: %s", request.method, request.path, url, exc)
                return response
            log.warning("%s %s via %s: %s", request.method, request.path, url, exc)
            return _error(502, "upstream_error", f"the replica failed: {exc}")
        finally:
            self.upstreams.in_flight[url] -= 1
            self.demand.change(in_flight=-1)

    def _reject(self, reason: str, message: str) -> web.Response:
        self.metrics.rejected.labels(reason).inc()
        return _error(503, reason, message, retry_after=5)


def _error(status: int, code: str, message: str, retry_after: int | None = None) -> web.Response:
    """An OpenAI-style error, with the reason also in a header for clients that skip bodies."""
    kind = (
        "service_unavailable"
        if status == 503
        else ("server_error" if status >= 500 else "invalid_request_error")
    )
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    headers = {REASON_HEADER: code} if status == 503 else {}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json", headers=headers
    )
