"""The llama.cpp engine (llama-cpp-python): GGUF models, already quantized in the file.

Chosen by ``engine=auto`` for a model that is only a GGUF file, when ``llama_cpp`` is
importable (``hack/setup.sh --llamacpp`` builds it). Concurrent requests are batched: the
scheduler of the transformers engine (``batching.py``: admission, sampling with OpenAI's
semantics, stop strings, streaming, cancellation) drives llama.cpp's context through
``llamacpp_batch.py``, one slot per sequence in a shared KV cache, up to
``params.max_batch_size`` at once. The chat template is the one in the GGUF metadata (or
params.chat_template). Embeddings use a second context with mean pooling, made on first use.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from substratus.workloads.server.batching import Scheduler, Sequence, Sink, run_sequence
from substratus.workloads.server.config import ServerConfig, default_threads
from substratus.workloads.server.engines.base import Chunk, Engine, SamplingParams, StartupError
from substratus.workloads.server.engines.llamacpp_batch import LlamaBatchModel
from substratus.workloads.server.protocol import APIError

MEAN_POOLING = 1  # llama_cpp.LLAMA_POOLING_TYPE_MEAN
N_BATCH = 512  # tokens per llama_decode while prefilling


class LlamaCppEngine(Engine):
    name = "llamacpp"

    def __init__(self, config: ServerConfig, gguf: Path, gpu: bool) -> None:
        self.config = config
        self.gguf = gguf
        self.gpu = gpu
        self.model: Any = None  # llama_cpp._internals.LlamaModel
        self.ctx: Any = None
        self.embedder: Any = None
        self.batch_model: LlamaBatchModel | None = None
        self.scheduler: Scheduler | None = None
        self.template: str | None = None
        self.bos_text = self.eos_text = ""
        self.add_bos = True

    def _gpu_layers(self) -> int:
        # params.n_gpu_layers as the original's llama-cpp image took it; else all on a GPU.
        if self.config.n_gpu_layers is not None:
            return self.config.n_gpu_layers
        return -1 if self.gpu else 0

    def _context(self, n_ctx: int, slots: int, embeddings: bool = False) -> Any:
        import llama_cpp
        from llama_cpp import _internals

        params = llama_cpp.llama_context_default_params()
        threads = self.config.threads or default_threads()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = min(N_BATCH, n_ctx)
        params.n_seq_max = slots
        params.kv_unified = True  # one cache; any slot may use all of it
        params.n_threads = params.n_threads_batch = threads
        if embeddings:
            # Pooling needs each input in one micro-batch.
            params.n_batch = params.n_ubatch = n_ctx
            params.embeddings = True
            params.pooling_type = MEAN_POOLING
        return _internals.LlamaContext(model=self.model, params=params, verbose=False)

    def load(self) -> None:
        import llama_cpp
        from llama_cpp import _internals

        started = time.monotonic()
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = self._gpu_layers()
        try:
            self.model = _internals.LlamaModel(
                path_model=str(self.gguf), params=model_params, verbose=False
            )
            trained = int(self.model.n_ctx_train())
            n_ctx = min(self.config.max_model_len or trained, trained)
            # A decode step holds one token per slot, in a batch of at most N_BATCH tokens.
            slots = min(
                self.config.max_batch_size,
                llama_cpp.llama_max_parallel_sequences(),
                N_BATCH,
                n_ctx,
            )
            self.ctx = self._context(n_ctx, slots)
        except (ValueError, RuntimeError, OSError) as exc:
            raise StartupError(f"llama.cpp could not load {self.gguf}: {exc}") from None
        self.vocab_size = int(self.model.n_vocab())
        eog = frozenset(
            t for t in range(self.vocab_size) if llama_cpp.llama_vocab_is_eog(self.model.vocab, t)
        )
        self.batch_model = LlamaBatchModel(self.ctx, self.vocab_size, eog, slots, N_BATCH)
        self.context_length = self.batch_model.context_length
        self.scheduler = Scheduler(self.batch_model, slots, name="llamacpp")
        meta: dict[str, str] = self.model.metadata()
        self.template = self.config.chat_template or meta.get("tokenizer.chat_template")
        self.add_bos = meta.get("tokenizer.ggml.add_bos_token", "true") != "false"
        self.bos_text = self._token_text(self.model.token_bos())
        self.eos_text = self._token_text(self.model.token_eos())
        quant = meta.get("general.file_type", "?")
        self.description = (
            f"llama.cpp, {self.gguf.name} (file type {quant}), "
            f"{'GPU' if self.gpu else 'CPU'}, context {self.context_length} shared by up to "
            f"{slots} sequences batched, loaded in {time.monotonic() - started:.1f} s"
        )

    def _token_text(self, token: int) -> str:
        if token is None or token < 0:
            return ""
        try:
            raw: bytes = self.model.detokenize([token], special=True)
        except TypeError:  # older llama-cpp-python
            raw = self.model.detokenize([token])
        return raw.decode("utf-8", errors="ignore")

    # --- tokens -----------------------------------------------------------------------

    # Tokenizing reads only the model's vocabulary, not the context the scheduler is
    # decoding with, so it runs on the caller's thread (not queued behind a generation).

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.model.tokenize(text.encode("utf-8"), self.add_bos, False)
        return ids

    def decode(self, ids: list[int]) -> str:
        raw: bytes = self.model.detokenize(ids)
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
        ids: list[int] = self.model.tokenize(text.encode("utf-8"), add_bos, True)
        return ids

    # --- generation -------------------------------------------------------------------

    def generate(
        self, prompt_ids: list[int], params: SamplingParams, stream: bool
    ) -> AsyncIterator[Chunk]:
        scheduler = self.scheduler
        assert scheduler is not None

        def make(sink: Sink) -> Sequence:
            return Sequence(prompt_ids, params, sink, stream, self.decode, self.context_length)

        return run_sequence(scheduler, make)

    async def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        assert self.scheduler is not None
        future = self.scheduler.call(functools.partial(self._embed, inputs))
        return await asyncio.wrap_future(future)

    def _embed(self, inputs: list[list[int]]) -> list[list[float]]:
        """On the scheduler's thread, between two decode steps."""
        import llama_cpp
        from llama_cpp import _internals

        if self.embedder is None:
            self.embedder = self._context(self.context_length, 1, embeddings=True)
        ctx = self.embedder
        batch: Any = _internals.LlamaBatch(
            n_tokens=self.context_length, embd=0, n_seq_max=1, verbose=False
        )
        out = []
        try:
            for ids in inputs:
                ctx.kv_cache_clear()
                batch.reset()
                batch.add_sequence(ids, 0, True)
                code = llama_cpp.llama_decode(ctx.ctx, batch.batch)
                if code != 0:
                    raise RuntimeError(f"llama_decode returned {code}")
                size = self.model.n_embd()
                vector = list(ctx.get_embeddings_seq(0)[:size])
                norm = math.sqrt(sum(v * v for v in vector)) or 1.0
                out.append([v / norm for v in vector])
        finally:
            batch.close()
        return out

    def metrics(self) -> dict[str, float]:
        return self.scheduler.gauges() if self.scheduler is not None else {}

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.batch_model is not None:
            self.batch_model.close()
