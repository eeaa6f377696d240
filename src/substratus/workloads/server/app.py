"""The HTTP side: an OpenAI-compatible API over an engine, and the process's ``main``.

Endpoints: ``GET /`` (200 once the model is loaded, 503 before), ``GET /metrics``
(Prometheus text: ``metrics.py``), ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (``stream: true`` answers Server-Sent Events ending with
``data: [DONE]``), ``POST /v1/embeddings``; ``GET /docs`` and ``GET /openapi.json`` describe
them (``openapi.py``). Bad requests get OpenAI-style JSON errors with a 4xx status; with
``API_KEYS`` set, a ``/v1/`` request without one of them gets a 401.

The server listens at once and loads the model in a background thread, so the runtime's
readiness probe sees 503 until the model answers; a model that cannot be loaded ends the
process with a clear error and a non-zero exit.
"""

from __future__ import annotations

import array
import asyncio
import base64
import json
import math
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from substratus.workloads.contract import ParamError, fail
from substratus.workloads.server import openapi
from substratus.workloads.server import protocol as p
from substratus.workloads.server.config import ServerConfig, load_config
from substratus.workloads.server.engines.base import Chunk, Engine, SamplingParams, StartupError
from substratus.workloads.server.metrics import ServerMetrics, Timeline
from substratus.workloads.server.middleware import APIKeys, BodyLimit, RequestMetrics

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[Request], Awaitable[Response]]

MAX_EMBEDDING_INPUTS = 2048


@dataclass
class Job:
    """One choice of a response: a prompt and its sampling parameters."""

    index: int
    prompt_index: int
    prompt_ids: list[int]
    params: SamplingParams
    echo: str = ""


def log(message: str) -> None:
    sys.stderr.write(f"server: {message}\n")  # one write: lines from threads stay whole
    sys.stderr.flush()


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n"


class ModelServer:
    """The served model and its HTTP handlers."""

    def __init__(self, config: ServerConfig, engine: Engine) -> None:
        self.config = config
        self.engine = engine
        self.name = config.served_model_name
        self.ready = False
        self.load_error: str | None = None
        self.created = p.now()
        self.metrics = ServerMetrics(self.engine.metrics, lambda: self.ready)

    # --- loading ----------------------------------------------------------------------

    def load(self) -> None:
        """Load the engine (in a background thread); records the error instead of raising."""
        started = time.monotonic()
        log(f"loading {self.config.model_dir} with the {self.engine.name} engine")
        try:
            self.engine.load()
        except StartupError as exc:
            self.load_error = str(exc)
        except Exception as exc:
            traceback.print_exc()
            self.load_error = f"loading the model failed: {type(exc).__name__}: {exc}"
        else:
            self.ready = True
            log(
                f"ready in {time.monotonic() - started:.1f} s: model {self.name!r} "
                f"({self.engine.description})"
            )

    # --- helpers ----------------------------------------------------------------------

    async def parse(self, request: Request, model: type[M]) -> M:
        raw = await request.body()
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise p.APIError(400, f"the request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise p.APIError(400, "the request body must be a JSON object")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise p.validation_error(exc) from None

    def check(self, model: str | None, generation: bool) -> None:
        if model is not None and model != self.name:
            raise p.APIError(
                404,
                f"The model `{model}` does not exist: this server serves `{self.name}`",
                param="model",
                code="model_not_found",
            )
        if not self.ready:
            raise p.APIError(
                503,
                "the model is still loading: retry when GET / answers 200",
                type="server_error",
                code="model_loading",
            )
        if generation and not self.engine.generates:
            raise p.APIError(
                400,
                f"model `{self.name}` is an embedding model: use /v1/embeddings",
                param="model",
            )
        if not generation and not self.engine.embeds:
            raise p.APIError(
                400,
                f"the {self.engine.name} engine does not serve embeddings: serve an "
                "embedding model with params.engine=transformers",
                param="model",
            )

    def check_tokens(self, ids: list[int], param: str) -> None:
        vocab = self.engine.vocab_size
        if vocab and any(not 0 <= t < vocab for t in ids):
            raise p.APIError(400, f"{param}: token ids must be in [0, {vocab})", param=param)

    def max_tokens(
        self, requested: int | None, prompt_len: int, default: int | None, param: str
    ) -> int:
        context = self.engine.context_length
        limit = min(self.config.max_tokens_limit or context, context)
        if prompt_len >= context:
            raise p.APIError(
                400,
                f"This model's maximum context length is {context} tokens, however your "
                f"{param} has {prompt_len} tokens, leaving none for the completion",
                param=param,
                code="context_length_exceeded",
            )
        if requested is not None:
            if requested > limit:
                raise p.APIError(
                    400,
                    f"max_tokens: {requested} is more than this server allows ({limit}; "
                    "params.max_tokens_limit)",
                    param="max_tokens",
                )
            if prompt_len + requested > context:
                raise p.APIError(
                    400,
                    f"This model's maximum context length is {context} tokens, however you "
                    f"requested {prompt_len + requested} tokens ({prompt_len} in the {param}, "
                    f"{requested} for the completion)",
                    param=param,
                    code="context_length_exceeded",
                )
            return requested
        return max(1, min(default or limit, limit, context - prompt_len))

    def sampling(self, req: p._Sampling, max_tokens: int, choice: int) -> SamplingParams:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            stop=req.stops(),
            seed=None if req.seed is None else req.seed + choice,
            ignore_eos=req.ignore_eos,
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            logit_bias=req.bias(),
        )

    def observe(self, timeline: Timeline, chunk: Chunk) -> None:
        if (done := timeline.chunk(chunk)) is not None:
            self.metrics.completion(*done)

    async def collect(self, job: Job) -> Chunk:
        """Run one job to the end: its text, finish reason and token count."""
        texts = []
        timeline = Timeline(stream=False)
        async for chunk in self.engine.generate(job.prompt_ids, job.params, stream=False):
            if chunk.error is not None:
                raise p.APIError(500, chunk.error, type="server_error")
            texts.append(chunk.text)
            self.observe(timeline, chunk)
            if chunk.finish_reason is not None:
                return Chunk("".join(texts), chunk.finish_reason, chunk.completion_tokens)
        raise p.APIError(500, "the generation ended without a result", type="server_error")

    async def merged(self, jobs: list[Job]) -> AsyncIterator[tuple[Job, Chunk]]:
        """Chunks of several jobs as they come; closing it cancels the unfinished ones."""
        if len(jobs) == 1:
            timeline = Timeline(stream=True)
            async for chunk in self.engine.generate(jobs[0].prompt_ids, jobs[0].params, True):
                self.observe(timeline, chunk)
                yield jobs[0], chunk
            return
        queue: asyncio.Queue[tuple[Job, Chunk]] = asyncio.Queue()

        async def pump(job: Job) -> None:
            timeline = Timeline(stream=True)
            try:
                async for chunk in self.engine.generate(job.prompt_ids, job.params, True):
                    self.observe(timeline, chunk)
                    await queue.put((job, chunk))
            except Exception as exc:
                await queue.put((job, Chunk("", None, 0, error=str(exc))))

        tasks = [asyncio.create_task(pump(job)) for job in jobs]
        try:
            left = len(jobs)
            while left:
                job, chunk = await queue.get()
                yield job, chunk
                if chunk.finish_reason is not None or chunk.error is not None:
                    left -= 1
        finally:
            for task in tasks:
                task.cancel()

    @staticmethod
    def stream(events: AsyncIterator[str]) -> StreamingResponse:
        return StreamingResponse(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # --- endpoints --------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        if self.ready:
            return JSONResponse({"status": "ready", "model": self.name, "engine": self.engine.name})
        if self.load_error:
            return JSONResponse({"status": "failed", "error": self.load_error}, status_code=503)
        return JSONResponse({"status": "loading", "model": self.name}, status_code=503)

    async def scrape(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def openapi_json(self, request: Request) -> Response:
        return JSONResponse(openapi.document(self.name, secured=bool(self.config.api_keys)))

    async def docs(self, request: Request) -> Response:
        return HTMLResponse(openapi.docs_page(self.name))

    async def list_models(self, request: Request) -> Response:
        card = p.model_card(self.name, self.created, str(self.config.model_dir))
        return JSONResponse({"object": "list", "data": [card]})

    async def get_model(self, request: Request) -> Response:
        name = request.path_params["model"]
        if name != self.name:
            raise p.APIError(
                404, f"The model `{name}` does not exist", param="model", code="model_not_found"
            )
        return JSONResponse(p.model_card(self.name, self.created, str(self.config.model_dir)))

    def _prompts(self, prompt: p.Prompt) -> list[tuple[list[int], str]]:
        """(token ids, text) of each prompt; a list of ints is one tokenized prompt."""
        items = _inputs(prompt)
        if not items:
            raise p.APIError(400, "prompt: must not be empty", param="prompt")
        out: list[tuple[list[int], str]] = []
        for item in items:
            if isinstance(item, str):
                ids = self.engine.encode(item)
                text = item
            else:
                self.check_tokens(item, "prompt")
                ids, text = list(item), self.engine.decode(list(item))
            if not ids:
                raise p.APIError(400, "prompt: must not be empty", param="prompt")
            out.append((ids, text))
        return out

    async def completions(self, request: Request) -> Response:
        req = await self.parse(request, p.CompletionRequest)
        self.check(req.model, generation=True)
        if req.logprobs is not None:
            raise p.APIError(400, "logprobs: not supported by this server", param="logprobs")
        if req.suffix:
            raise p.APIError(400, "suffix: not supported by this server", param="suffix")
        if req.best_of is not None and req.best_of != req.n:
            raise p.APIError(400, "best_of: only best_of == n is supported", param="best_of")
        jobs: list[Job] = []
        prompt_tokens = 0
        prompts = self._prompts(req.prompt)
        for i, (ids, text) in enumerate(prompts):
            limit = self.max_tokens(req.max_tokens, len(ids), 16, "prompt")
            prompt_tokens += len(ids)
            for j in range(req.n):
                params = self.sampling(req, limit, j)
                jobs.append(Job(i * req.n + j, i, ids, params, text if req.echo else ""))
        self.metrics.prompt_tokens.inc(prompt_tokens)
        cid = p.new_id("cmpl")
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return self.stream(self._stream_completion(cid, jobs, prompt_tokens, usage))
        results = await asyncio.gather(*(self.collect(job) for job in jobs))
        choices = [
            p.completion_choice(job.index, job.echo + r.text, r.finish_reason)
            for job, r in zip(jobs, results, strict=True)
        ]
        completion_tokens = sum(r.completion_tokens for r in results)
        return JSONResponse(
            p.completion(cid, self.name, choices, p.usage(prompt_tokens, completion_tokens))
        )

    async def _stream_completion(
        self, cid: str, jobs: list[Job], prompt_tokens: int, include_usage: bool
    ) -> AsyncIterator[str]:
        created, completion_tokens = p.now(), 0
        for job in jobs:
            if job.echo:
                yield sse(p.completion_chunk(cid, self.name, created, job.index, job.echo))
        async for job, chunk in self.merged(jobs):
            if chunk.error is not None:
                yield sse(p.error_body(chunk.error, "server_error"))
                break
            if chunk.text or chunk.finish_reason:
                yield sse(
                    p.completion_chunk(
                        cid, self.name, created, job.index, chunk.text, chunk.finish_reason
                    )
                )
            if chunk.finish_reason is not None:
                completion_tokens += chunk.completion_tokens
        if include_usage:
            use = p.usage(prompt_tokens, completion_tokens)
            yield sse(p.usage_chunk(cid, "text_completion", self.name, created, use))
        yield "data: [DONE]\n\n"

    async def chat_completions(self, request: Request) -> Response:
        req = await self.parse(request, p.ChatCompletionRequest)
        self.check(req.model, generation=True)
        if req.logprobs:
            raise p.APIError(400, "logprobs: not supported by this server", param="logprobs")
        if req.tools:
            raise p.APIError(400, "tools: not supported by this server", param="tools")
        kind = (req.response_format or {}).get("type", "text")
        if kind != "text":
            raise p.APIError(
                400,
                f"response_format: {kind!r} is not supported by this server (only 'text')",
                param="response_format",
            )
        messages = []
        for message in req.messages:
            entry = {"role": message.role, "content": message.text()}
            if message.name:
                entry["name"] = message.name
            messages.append(entry)
        ids = self.engine.chat_prompt(messages)
        self.metrics.prompt_tokens.inc(len(ids))
        requested = req.max_completion_tokens or req.max_tokens
        limit = self.max_tokens(requested, len(ids), None, "messages")
        jobs = [Job(j, 0, ids, self.sampling(req, limit, j)) for j in range(req.n)]
        cid = p.new_id("chatcmpl")
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return self.stream(self._stream_chat(cid, jobs, len(ids), usage))
        results = await asyncio.gather(*(self.collect(job) for job in jobs))
        choices = [
            p.chat_choice(job.index, r.text, r.finish_reason)
            for job, r in zip(jobs, results, strict=True)
        ]
        completion_tokens = sum(r.completion_tokens for r in results)
        return JSONResponse(
            p.chat_completion(cid, self.name, choices, p.usage(len(ids), completion_tokens))
        )

    async def _stream_chat(
        self, cid: str, jobs: list[Job], prompt_tokens: int, include_usage: bool
    ) -> AsyncIterator[str]:
        created, completion_tokens = p.now(), 0
        for job in jobs:
            role = {"role": "assistant", "content": ""}
            yield sse(p.chat_chunk(cid, self.name, created, job.index, role))
        async for job, chunk in self.merged(jobs):
            if chunk.error is not None:
                yield sse(p.error_body(chunk.error, "server_error"))
                break
            if chunk.text:
                delta = {"content": chunk.text}
                yield sse(p.chat_chunk(cid, self.name, created, job.index, delta))
            if chunk.finish_reason is not None:
                completion_tokens += chunk.completion_tokens
                yield sse(p.chat_chunk(cid, self.name, created, job.index, {}, chunk.finish_reason))
        if include_usage:
            use = p.usage(prompt_tokens, completion_tokens)
            yield sse(p.usage_chunk(cid, "chat.completion.chunk", self.name, created, use))
        yield "data: [DONE]\n\n"

    async def embeddings(self, request: Request) -> Response:
        req = await self.parse(request, p.EmbeddingRequest)
        self.check(req.model, generation=False)
        items = _inputs(req.input)
        if not items:
            raise p.APIError(400, "input: must not be empty", param="input")
        if len(items) > MAX_EMBEDDING_INPUTS:
            raise p.APIError(
                400, f"input: at most {MAX_EMBEDDING_INPUTS} inputs per request", param="input"
            )
        batch: list[list[int]] = []
        for item in items:
            if isinstance(item, str):
                if not item:
                    raise p.APIError(400, "input: strings must not be empty", param="input")
                ids = self.engine.encode(item)
            else:
                self.check_tokens(item, "input")
                ids = list(item)
            if not ids:
                raise p.APIError(400, "input: must not be empty", param="input")
            if len(ids) > self.engine.context_length:
                raise p.APIError(
                    400,
                    f"This model's maximum context length is {self.engine.context_length} "
                    f"tokens, however an input has {len(ids)} tokens",
                    param="input",
                    code="context_length_exceeded",
                )
            batch.append(ids)
        vectors = await self.engine.embed(batch)
        if req.dimensions is not None:
            size = len(vectors[0]) if vectors else 0
            if req.dimensions > size:
                raise p.APIError(
                    400,
                    f"dimensions: this model's embeddings have {size} dimensions",
                    param="dimensions",
                )
            vectors = [_normalise(v[: req.dimensions]) for v in vectors]
        data: list[Any] = vectors
        if req.encoding_format == "base64":
            data = [_base64(v) for v in vectors]
        tokens = sum(len(ids) for ids in batch)
        return JSONResponse(p.embeddings(self.name, data, tokens))

    # --- the app ----------------------------------------------------------------------

    def endpoint(self, handler: Handler) -> Handler:
        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except p.APIError as exc:
                return JSONResponse(exc.body(), status_code=exc.status)
            except Exception as exc:
                if isinstance(exc, HTTPException):
                    raise
                traceback.print_exc()
                body = p.error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error")
                return JSONResponse(body, status_code=500)

        return wrapped

    def app(self) -> ASGIApp:
        e = self.endpoint
        routes: list[BaseRoute] = [
            Route("/", e(self.health), methods=["GET", "HEAD"]),
            Route("/health", e(self.health), methods=["GET", "HEAD"]),
            Route("/metrics", e(self.scrape), methods=["GET"]),
            Route("/v1/models", e(self.list_models), methods=["GET"]),
            Route("/v1/models/{model:path}", e(self.get_model), methods=["GET"]),
            Route("/v1/completions", e(self.completions), methods=["POST"]),
            Route("/v1/chat/completions", e(self.chat_completions), methods=["POST"]),
            Route("/v1/embeddings", e(self.embeddings), methods=["POST"]),
            Route("/openapi.json", e(self.openapi_json), methods=["GET"]),
            Route("/docs", e(self.docs), methods=["GET"]),
        ]
        if (static := openapi.static_dir()) is not None:
            routes.append(Mount("/docs/static", StaticFiles(directory=static), name="static"))
        app: ASGIApp = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
        app = BodyLimit(app, self.config.max_body_bytes)
        if self.config.api_keys:
            app = APIKeys(app, self.config.api_keys)
        return RequestMetrics(app, self.metrics)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    code: str | None = None
    if status == 404:
        message, code = f"no such endpoint: {request.method} {request.url.path}", "not_found"
    elif status == 405:
        message = f"method {request.method} not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return JSONResponse(
        p.error_body(message, "invalid_request_error", None, code),
        status_code=status,
        headers=exc.headers,
    )


def _inputs(value: p.Prompt) -> list[str | list[int]]:
    """A prompt or embedding input as a list of items: a string or a list of token ids is
    one item; a list of strings or of token-id lists is many."""
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(x, int) for x in value):
        return [cast(list[int], value)]
    return cast(list[str | list[int]], list(value))


def _normalise(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def _base64(vector: list[float]) -> str:
    data = array.array("f", vector)
    if sys.byteorder != "little":
        data.byteswap()
    return base64.b64encode(data.tobytes()).decode("ascii")


def main(
    argv: list[str] | None = None,
    default_engine: str = "auto",
    engine_origin: str = "params.engine",
) -> int:
    import uvicorn

    from substratus.workloads.server.engines import make_engine, plan

    try:
        config = load_config(default_engine=default_engine, engine_origin=engine_origin)
        chosen = plan(config)
    except (ParamError, StartupError) as exc:
        return fail(str(exc))
    engine = make_engine(config, chosen)
    server = ModelServer(config, engine)
    uv = uvicorn.Server(
        uvicorn.Config(
            server.app(),
            host=config.host,
            port=config.port,
            log_level="warning",
            access_log=config.access_log,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
    )

    def load() -> None:
        server.load()
        if server.load_error:
            uv.should_exit = True

    threading.Thread(target=load, name="load", daemon=True).start()
    log(
        f"serving on http://{config.host}:{config.port} (engine {chosen.engine}"
        f"{', quantization ' + chosen.quantization if chosen.quantization else ''}); "
        "GET / answers 503 until the model is loaded"
    )
    uv.run()
    engine.close()
    if server.load_error:
        return fail(server.load_error, 1)
    return 0
