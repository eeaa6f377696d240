"""The llama.cpp engine (llama-cpp-python): GGUF models, already quantized in the file.

Chosen by ``engine=auto`` for a model that is only a GGUF file, when ``llama_cpp`` is
importable. llama-cpp-python's ``Llama`` holds one sequence at a time, so requests are served
one after another on a worker thread (the batch size is 1; use the transformers or vLLM engine
for batching). The chat template is the one in the GGUF metadata (or params.chat_template).
Embeddings use a second ``Llama`` with mean pooling, loaded on first use.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from substratus.workloads.server.batching import AsyncSink
from substratus.workloads.server.config import ServerConfig, default_threads
from substratus.workloads.server.engines.base import Chunk, Engine, SamplingParams, StartupError
from substratus.workloads.server.protocol import APIError

MEAN_POOLING = 1  # llama_cpp.LLAMA_POOLING_TYPE_MEAN


class LlamaCppEngine(Engine):
    name = "llamacpp"

    def __init__(self, config: ServerConfig, gguf: Path, gpu: bool) -> None:
        self.config = config
        self.gguf = gguf
        self.gpu = gpu
        self.llm: Any = None
        self.embedder: Any = None
        self.template: str | None = None
        self.bos_text = self.eos_text = ""
        self.add_bos = True
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamacpp")
        self.requests = 0
        self.generated = 0
        self.served = 0

    def _kwargs(self) -> dict[str, Any]:
        return {
            "model_path": str(self.gguf),
            "n_ctx": self.config.max_model_len or 0,  # 0: the model's own context length
            "n_threads": self.config.threads or default_threads(),
            "n_gpu_layers": self._gpu_layers(),
            "verbose": False,
        }

    def _gpu_layers(self) -> int:
        # params.n_gpu_layers as the original's llama-cpp image took it; else all on a GPU.
        if self.config.n_gpu_layers is not None:
            return self.config.n_gpu_layers
        return -1 if self.gpu else 0

    def load(self) -> None:
        from llama_cpp import Llama

        try:
            self.llm = self.pool.submit(lambda: Llama(**self._kwargs())).result()
        except (ValueError, RuntimeError, OSError) as exc:
            raise StartupError(f"llama.cpp could not load {self.gguf}: {exc}") from None
        self.context_length = int(self.llm.n_ctx())
        self.vocab_size = int(self.llm.n_vocab())
        meta: dict[str, str] = dict(getattr(self.llm, "metadata", {}) or {})
        self.template = self.config.chat_template or meta.get("tokenizer.chat_template")
        self.add_bos = meta.get("tokenizer.ggml.add_bos_token", "true") != "false"
        self.bos_text = self._token_text(self.llm.token_bos())
        self.eos_text = self._token_text(self.llm.token_eos())
        quant = meta.get("general.file_type", "?")
        self.description = (
            f"llama.cpp, {self.gguf.name} (file type {quant}), "
            f"{'GPU' if self.gpu else 'CPU'}, context {self.context_length}, one sequence at a time"
        )

    def _token_text(self, token: int) -> str:
        if token is None or token < 0:
            return ""
        try:
            raw: bytes = self.llm.detokenize([token], special=True)
        except TypeError:  # older llama-cpp-python
            raw = self.llm.detokenize([token])
        return raw.decode("utf-8", errors="ignore")

    # --- tokens -----------------------------------------------------------------------

    # Tokenizing reads only the model's vocabulary, not the context the worker thread is
    # decoding with, so it runs on the caller's thread (not queued behind a generation).

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.llm.tokenize(text.encode("utf-8"), add_bos=self.add_bos)
        return ids

    def decode(self, ids: list[int]) -> str:
        raw: bytes = self.llm.detokenize(ids)
        return raw.decode("utf-8", errors="replace")

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        if not self.template:
            raise APIError(
                400,
                f"model {self.config.served_model_name!r} has no chat template in its GGUF "
                "file: use /v1/completions, or give the server one in params.chat_template",
                param="messages",
            )
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        try:
            text = env.from_string(self.template).render(
                messages=messages,
                add_generation_prompt=True,
                bos_token=self.bos_text,
                eos_token=self.eos_text,
            )
        except TemplateError as exc:
            raise APIError(
                400, f"messages: the chat template rejected them: {exc}", param="messages"
            ) from None
        add_bos = self.add_bos and not (self.bos_text and text.startswith(self.bos_text))
        ids: list[int] = self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
        return ids

    # --- generation -------------------------------------------------------------------

    async def generate(
        self, prompt_ids: list[int], params: SamplingParams, stream: bool
    ) -> AsyncIterator[Chunk]:
        sink = AsyncSink(asyncio.get_running_loop())
        cancel = threading.Event()
        self.requests += 1
        self.pool.submit(self._run, prompt_ids, params, stream, sink, cancel)
        try:
            while True:
                chunk = await sink.get()
                yield chunk
                if chunk.finish_reason is not None or chunk.error is not None:
                    return
        finally:
            cancel.set()

    def _run(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        stream: bool,
        sink: AsyncSink,
        cancel: threading.Event,
    ) -> None:
        if cancel.is_set():
            return
        kwargs: dict[str, Any] = {
            "prompt": prompt_ids,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": 0,  # OpenAI semantics: no top-k, no min-p, no repeat penalty
            "min_p": 0.0,
            "repeat_penalty": 1.0,
            "presence_penalty": params.presence_penalty,
            "frequency_penalty": params.frequency_penalty,
            "stop": params.stop or None,
            "seed": params.seed,
            "logit_bias": params.logit_bias or None,
            "stream": True,
        }
        if params.ignore_eos:
            from llama_cpp import LogitsProcessorList

            eos = self.llm.token_eos()

            def ban_eos(_ids: Any, scores: Any) -> Any:
                scores[eos] = -math.inf
                return scores

            kwargs["logits_processor"] = LogitsProcessorList([ban_eos])
        text, tokens, reason = "", 0, None
        self.served = 1
        try:
            for part in self.llm.create_completion(**kwargs):
                choice = part["choices"][0]
                delta = choice.get("text") or ""
                tokens += 1
                text += delta
                if stream and delta:
                    sink.put(Chunk(delta, None, tokens))
                if choice.get("finish_reason"):
                    reason = "length" if choice["finish_reason"] == "length" else "stop"
                if cancel.is_set():
                    return
            self.generated += tokens
            sink.put(Chunk("" if stream else text, reason or "stop", tokens))
        except Exception as exc:
            sink.put(Chunk("", None, tokens, error=f"llama.cpp failed: {exc}"))

    async def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        future = self.pool.submit(self._embed, inputs)
        return await asyncio.wrap_future(future)

    def _embed(self, inputs: list[list[int]]) -> list[list[float]]:
        if self.embedder is None:
            from llama_cpp import Llama

            self.embedder = Llama(**self._kwargs(), embedding=True, pooling_type=MEAN_POOLING)
        texts = [self.llm.detokenize(ids).decode("utf-8", errors="replace") for ids in inputs]
        vectors: list[list[float]] = self.embedder.embed(texts)
        out = []
        for vector in vectors:
            norm = math.sqrt(sum(v * v for v in vector)) or 1.0
            out.append([v / norm for v in vector])
        return out

    def metrics(self) -> dict[str, float]:
        return {
            "requests_total": self.requests,
            "generated_tokens_total": self.generated,
            "batch_size_max": self.served,
        }

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
