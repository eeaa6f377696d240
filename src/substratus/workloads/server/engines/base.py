"""What every engine offers the HTTP layer, and the types they exchange."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


class StartupError(RuntimeError):
    """The server cannot serve this model with these settings; the message says why and what
    to change (a param, ``spec.quantization.bits``, the model's files)."""


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)


@dataclass
class Chunk:
    """A piece of one completion: new text; the last one carries ``finish_reason``
    (``stop`` or ``length``) or ``error``. ``completion_tokens`` counts tokens so far.
    ``token_times``, on the last chunk of an engine that keeps them: when the completion was
    queued, then when each token came (``time.monotonic``), for the latency metrics; without
    them the HTTP layer times the chunks as they arrive."""

    text: str
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: str | None = None
    token_times: tuple[float, ...] = ()


class Engine(ABC):
    """A loaded model that completes token prompts and embeds token sequences."""

    name: str = "engine"
    #: prompt + completion tokens the engine accepts (set by ``load``)
    context_length: int = 0
    #: ``vocab_size`` bound for token-id prompts (0: unknown, not checked)
    vocab_size: int = 0
    generates: bool = True
    embeds: bool = True
    #: one line for the log: device, dtype, quantization
    description: str = ""

    @abstractmethod
    def load(self) -> None:
        """Load the model (slow; runs in a background thread while HTTP answers 503)."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of a prompt, with the special tokens the model expects (BOS, CLS...)."""

    @abstractmethod
    def decode(self, ids: list[int]) -> str: ...

    @abstractmethod
    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """The chat template applied to ``messages``, ready for the assistant's turn.
        Raises ``protocol.APIError`` (400) when the model has no template or rejects them."""

    @abstractmethod
    def generate(
        self, prompt_ids: list[int], params: SamplingParams, stream: bool
    ) -> AsyncIterator[Chunk]:
        """Chunks of one completion. With ``stream`` False a single final chunk holds all
        the text. Closing the iterator early cancels the completion."""

    async def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        """Mean-pooled, L2-normalised last hidden states, one vector per input."""
        raise NotImplementedError(f"the {self.name} engine does not serve embeddings")

    def metrics(self) -> dict[str, float]:
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Stop background threads or processes."""
