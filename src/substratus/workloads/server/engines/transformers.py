"""The transformers engine: any Hugging Face model, on CPU or GPU, with continuous batching.

Causal LMs generate through ``batching.Scheduler`` with ``HFBatchModel`` (a KV cache per
batch, left padding, merging new sequences' caches into the running batch); encoder models
(BERT, sentence-transformers) serve embeddings only. Quantization: ``dynamic-int8`` (CPU:
torch's dynamic int8 quantization of every ``nn.Linear``) or bitsandbytes 4/8-bit (CUDA).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import sys
import time
import warnings
from collections.abc import AsyncIterator
from typing import Any

from substratus.workloads.server.batching import Scheduler, Sequence, Sink, run_sequence
from substratus.workloads.server.config import ServerConfig, default_threads
from substratus.workloads.server.engines.base import Chunk, Engine, SamplingParams, StartupError
from substratus.workloads.server.engines.hf_tokenizer import HFTokenizer

CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx")


def _transformers() -> Any:
    """The transformers package, untyped (its partial annotations fight strict mypy)."""
    return importlib.import_module("transformers")


def is_causal(config: Any) -> bool:
    """Whether the config is a text generator (else an encoder, served for embeddings)."""
    if getattr(config, "is_encoder_decoder", False):
        return False
    architectures = list(getattr(config, "architectures", None) or [])
    if architectures:
        return any(a.endswith(CAUSAL_SUFFIXES) for a in architectures)
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return getattr(config, "model_type", "") in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def model_context_length(config: Any, tokenizer: Any) -> int:
    for key in CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1_000_000:
        return limit
    return 2048


class HFBatchModel:
    """``batching.BatchModel`` for a transformers causal LM: a DynamicCache per batch."""

    def __init__(self, model: Any, pad_id: int, eos_ids: frozenset[int], context_length: int):
        import torch

        self.torch = torch
        self.model = model
        self.device = next(model.parameters()).device if _has_params(model) else "cpu"
        self.pad_id = pad_id
        self.eos_ids = eos_ids
        self.context_length = context_length
        names = inspect.signature(model.forward).parameters
        self.cache_kw = "cache" if "cache" in names else "past_key_values"
        self.keep = {"logits_to_keep": 1} if "logits_to_keep" in names else {}
        self.can_join = self._cache_layers(self._new_cache()) is not None

    def _new_cache(self) -> Any:
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self.model.config)
        except TypeError:  # older transformers
            return DynamicCache()

    @staticmethod
    def _cache_layers(cache: Any) -> list[Any] | None:
        """The cache's per-layer key/value holders, when every one is a plain dynamic layer
        (so rows can be padded and concatenated); None otherwise (sliding windows, ...)."""
        try:
            from transformers.cache_utils import DynamicLayer
        except ImportError:
            return None
        layers = getattr(cache, "layers", None)
        if not layers or any(type(layer) is not DynamicLayer for layer in layers):
            return None
        return list(layers)

    def _forward(self, ids: Any, mask: Any, positions: Any, cache: Any) -> Any:
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self.cache_kw: cache},
            **self.keep,
        )
        return out.logits[:, -1, :]

    def prefill(self, prompts: list[list[int]]) -> tuple[Any, Any]:
        torch = self.torch
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = self._new_cache()
        padded = any(len(p) < width for p in prompts)
        logits = self._forward(ids, mask if padded else None, positions, cache)
        return logits, _Batch(cache, mask, mask.sum(-1), padded)

    def decode(self, state: Any, tokens: list[int]) -> Any:
        torch = self.torch
        batch: _Batch = state
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(tokens), 1))], dim=1)
        # Without padding the mask is all ones: leaving it out spares building a 4-D mask.
        mask = batch.mask if batch.padded else None
        logits = self._forward(ids, mask, batch.positions[:, None], batch.cache)
        batch.positions = batch.positions + 1
        return logits

    def merge(self, state: Any, other: Any) -> Any:
        torch = self.torch
        pad = torch.nn.functional.pad
        a: _Batch = state
        b: _Batch = other
        la, lb = a.mask.shape[1], b.mask.shape[1]
        width = max(la, lb)
        layers_a = self._cache_layers(a.cache) or []
        layers_b = self._cache_layers(b.cache) or []
        for x, y in zip(layers_a, layers_b, strict=True):
            x.keys = torch.cat(
                [pad(x.keys, (0, 0, width - la, 0)), pad(y.keys, (0, 0, width - lb, 0))]
            )
            x.values = torch.cat(
                [pad(x.values, (0, 0, width - la, 0)), pad(y.values, (0, 0, width - lb, 0))]
            )
        a.mask = torch.cat([pad(a.mask, (width - la, 0)), pad(b.mask, (width - lb, 0))])
        a.positions = torch.cat([a.positions, b.positions])
        a.padded = a.padded or b.padded or la != lb
        return a

    def select(self, state: Any, keep: list[int]) -> Any:
        torch = self.torch
        batch: _Batch = state
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        batch.mask = batch.mask.index_select(0, index)
        batch.positions = batch.positions.index_select(0, index)
        layers = self._cache_layers(batch.cache)
        if layers is None:
            batch.cache.batch_select_indices(index)
            return batch
        # Rows are [padding..., tokens...]: drop the columns that are padding in every row.
        trim = batch.mask.shape[1] - int(batch.mask.sum(-1).max())
        for layer in layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, trim:]
            layer.values = layer.values.index_select(0, index)[:, :, trim:]
        if trim:
            batch.mask = batch.mask[:, trim:]
        batch.padded = bool((batch.mask == 0).any())
        return batch


class _Batch:
    """A running batch: its KV cache, attention mask ``[rows, length]`` (0 = left padding),
    next position of each row, and whether any row is padded."""

    __slots__ = ("cache", "mask", "padded", "positions")

    def __init__(self, cache: Any, mask: Any, positions: Any, padded: bool) -> None:
        self.cache, self.mask, self.positions, self.padded = cache, mask, positions, padded


def _has_params(model: Any) -> bool:
    return any(True for _ in model.parameters())


class TransformersEngine(HFTokenizer, Engine):
    name = "transformers"

    def __init__(self, config: ServerConfig, quantization: str | None, gpu: bool) -> None:
        self.config = config
        self.quantization = quantization
        self.gpu = gpu
        self.model: Any = None
        self.tokenizer: Any = None
        self.scheduler: Scheduler | None = None
        self.eos_ids: frozenset[int] = frozenset()

    # --- loading ----------------------------------------------------------------------

    def load(self) -> None:
        started = time.monotonic()
        tf = _transformers()
        tf.utils.logging.disable_progress_bar()
        directory = self.config.model_dir
        try:  # config and tokenizer first: a bad one is reported before torch is imported
            hf_config = tf.AutoConfig.from_pretrained(directory)
            self.tokenizer = tf.AutoTokenizer.from_pretrained(directory)
        except Exception as exc:  # the files are the user's: say which and why, no traceback
            raise StartupError(
                f"cannot read the model in {directory}: {type(exc).__name__}: {exc}"
            ) from None
        import torch

        if not self.gpu:
            torch.set_num_threads(self.config.threads or default_threads())
        causal = is_causal(hf_config)
        kwargs: dict[str, Any] = {"dtype": self._dtype(torch)}
        if self.quantization in ("bitsandbytes-4bit", "bitsandbytes-8bit"):
            four = self.quantization == "bitsandbytes-4bit"
            kwargs["quantization_config"] = tf.BitsAndBytesConfig(
                load_in_4bit=four, load_in_8bit=not four
            )
            kwargs["device_map"] = {"": 0}
        loader = tf.AutoModelForCausalLM if causal else tf.AutoModel
        try:
            model = loader.from_pretrained(directory, **kwargs)
        except Exception as exc:
            raise StartupError(
                f"cannot load the model in {directory}: {type(exc).__name__}: {exc}"
            ) from None
        if self.gpu and "device_map" not in kwargs:
            model = model.to("cuda")
        model.eval()
        if self.quantization == "dynamic-int8":
            model = quantize_dynamic_int8(model)
        self.model = model
        self.vocab_size = int(getattr(hf_config, "vocab_size", 0) or len(self.tokenizer))
        context = model_context_length(hf_config, self.tokenizer)
        if self.config.max_model_len:
            context = min(context, self.config.max_model_len)
        self.context_length = context
        self.generates = causal
        device = "cuda" if self.gpu else f"cpu ({torch.get_num_threads()} threads)"
        self.description = (
            f"{type(model).__name__}, {device}, {next(model.parameters()).dtype}"
            f"{', ' + self.quantization if self.quantization else ''}, context {context}"
        )
        if causal:
            self.eos_ids = self._eos_ids(model)
            pad = self.tokenizer.pad_token_id
            if pad is None:
                pad = next(iter(self.eos_ids), 0)
            batch_model = HFBatchModel(model, pad, self.eos_ids, context)
            self.scheduler = Scheduler(batch_model, self.config.max_batch_size)
            mode = "continuous" if batch_model.can_join else "waves (this cache cannot merge)"
            self.description += f", batching {mode} up to {self.config.max_batch_size}"
        else:
            self.scheduler = Scheduler(None, 1)
            self.description += ", embeddings only (an encoder model)"
        self.description += f", loaded in {time.monotonic() - started:.1f} s"

    def _dtype(self, torch: Any) -> Any:
        if self.config.dtype != "auto":
            return getattr(torch, self.config.dtype)
        # bfloat16/float16 matmuls are slow or missing on many CPUs: float32 there.
        return "auto" if self.gpu else torch.float32

    def _eos_ids(self, model: Any) -> frozenset[int]:
        ids: set[int] = set()
        for source in (getattr(model, "generation_config", None), model.config):
            value = getattr(source, "eos_token_id", None)
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list):
                ids.update(v for v in value if isinstance(v, int))
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return frozenset(ids)

    # --- tokens -----------------------------------------------------------------------

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
        out: list[list[float]] = []
        step = max(1, self.config.max_batch_size)
        for start in range(0, len(inputs), step):
            future = self.scheduler.call(
                functools.partial(self._embed, inputs[start : start + step])
            )
            out += await asyncio.wrap_future(future)
        return out

    def _embed(self, batch: list[list[int]]) -> list[list[float]]:
        import torch

        width = max(len(ids) for ids in batch)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, seq in enumerate(batch):  # right padding: causal rows never see it
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        device = next(self.model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        base = getattr(self.model, "base_model", self.model)
        with torch.inference_mode():
            kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
            if self.generates:
                kwargs["use_cache"] = False
            hidden = base(**kwargs)[0].float()
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
            vectors: list[list[float]] = torch.nn.functional.normalize(pooled, dim=-1).tolist()
        return vectors

    def metrics(self) -> dict[str, float]:
        return self.scheduler.gauges() if self.scheduler is not None else {}

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()


def quantize_dynamic_int8(model: Any) -> Any:
    """torch's dynamic int8 quantization of every ``nn.Linear`` (int8 weights with a scale
    per output channel, activations quantized on the fly): linear weights 4x smaller, and
    about 2x faster decoding on CPU (SmolLM2-135M, benchmarks/server_throughput.py)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ao: Any = importlib.import_module("torch.ao.quantization")
            quantize_dynamic, qconfig = ao.quantize_dynamic, ao.per_channel_dynamic_qconfig
        except (ImportError, AttributeError) as exc:  # pragma: no cover - a future torch
            raise StartupError(
                f"spec.quantization.bits=8 on CPU needs torch's dynamic quantization, which "
                f"this torch ({torch.__version__}) lacks: {exc}"
            ) from None
        # Per output channel: per-tensor scales garble small models (SmolLM2-135M answers
        # "Le Grand-Bouleau" for the capital of France; per channel, "Paris").
        spec = {torch.nn.Linear: qconfig}
        quantized = quantize_dynamic(model, spec, dtype=torch.qint8, inplace=False)
    count = sum(1 for m in quantized.modules() if ".quantized.dynamic" in type(m).__module__)
    sys.stderr.write(f"server: quantized {count} Linear layers to int8 (dynamic)\n")
    return quantized
