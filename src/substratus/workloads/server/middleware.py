"""The ASGI layers around the API: request metrics, API keys, the body size limit."""

from __future__ import annotations

import time

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from substratus.workloads.apikeys import PROTECTED_PREFIX, allowed, refusal
from substratus.workloads.server import protocol as p
from substratus.workloads.server.metrics import ServerMetrics


class APIKeys:
    """``/v1/`` answers only requests with ``Authorization: Bearer KEY`` for one of the keys
    (compared in constant time); the probes, ``/metrics`` and the docs stay open."""

    def __init__(self, app: ASGIApp, keys: tuple[str, ...]) -> None:
        self.app = app
        self.keys = tuple(k.encode() for k in keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("authorization")
        if allowed(self.keys, header):
            await self.app(scope, receive, send)
            return
        body = p.error_body(refusal(header), "invalid_request_error", None, "invalid_api_key")
        headers = {"WWW-Authenticate": "Bearer"}
        await JSONResponse(body, status_code=401, headers=headers)(scope, receive, send)


class RequestMetrics:
    """Counts and times API requests by endpoint and status, to the response's last byte (a
    stream's too); the probes and the scrape are not requests of the API."""

    API = ("/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/embeddings")

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    @classmethod
    def endpoint(cls, path: str) -> str | None:
        if path in ("/", "/health", "/metrics", "/docs", "/openapi.json"):
            return None
        if path.startswith("/docs/"):
            return None
        if path in cls.API:
            return path
        return "/v1/models/{model}" if path.startswith("/v1/models/") else "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.endpoint(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        started, status = time.monotonic(), 500

        async def timed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed)
        finally:
            self.metrics.request(endpoint, status, time.monotonic() - started)


class BodyLimit:
    """413, as an OpenAI-style error, for a body over ``limit`` bytes: at once when the
    Content-Length says so, else (chunked uploads) as soon as the body read passes it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    def error(self) -> p.APIError:
        return p.APIError(
            413,
            f"the request body is larger than this server accepts ({self.limit} bytes; "
            "params.max_body_bytes)",
            code="request_too_large",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            exc = self.error()
            response = JSONResponse(exc.body(), status_code=413, headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise self.error()
            return message

        await self.app(scope, limited, send)
