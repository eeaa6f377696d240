"""Continuous batching: one decode loop over a batch of active sequences.

A ``Scheduler`` thread owns the model. Requests are ``Sequence`` objects submitted from the
HTTP loop; at every step the scheduler admits waiting sequences (a prefill of the new ones,
left-padded, whose KV cache is then merged into the running batch), or else runs one decode
step for the whole batch (one token per sequence, with the KV cache). Each sequence samples
with its own parameters (temperature, top_p, seed, penalties, logit bias) and stops on its own
(EOS, ``max_tokens``, stop strings); finished rows leave the batch at once and new ones join
at the next step. Models whose cache cannot be merged (``BatchModel.can_join`` False) run in
waves instead: new sequences join when the batch has drained.

The model side is the small ``BatchModel`` protocol (``engines/transformers.py`` implements
it for Hugging Face models); text handling (incremental detokenisation, stop strings, the
streaming hold-back) lives here, independent of the model.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from substratus.workloads.server.engines.base import Chunk, SamplingParams


class Sink(Protocol):
    def put(self, chunk: Chunk) -> None: ...


class AsyncSink:
    """Hands chunks from the scheduler thread to a coroutine on the HTTP loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[Chunk] = asyncio.Queue()

    def put(self, chunk: Chunk) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody listens any more
            self._loop.call_soon_threadsafe(self._queue.put_nowait, chunk)

    async def get(self) -> Chunk:
        return await self._queue.get()


class IncrementalDecoder:
    """Token ids to text, a token at a time, without re-decoding the whole sequence.

    Decodes a short window (the previous token(s) for context, so tokenizers that drop a
    leading space or merge bytes decode right) and returns only text that is complete: a
    window ending in an unfinished UTF-8 character (U+FFFD) waits for the next token.
    """

    def __init__(self, decode: Callable[[list[int]], str], context: list[int]) -> None:
        self._decode = decode
        self.ids = list(context)
        self._prefix = 0
        self._read = len(self.ids)

    def add(self, token: int) -> str:
        self.ids.append(token)
        return self._advance(final=False)

    def flush(self) -> str:
        return self._advance(final=True) if self._read < len(self.ids) else ""

    def _advance(self, final: bool) -> str:
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        if len(new_text) > len(prefix_text) and (final or not new_text.endswith("\ufffd")):
            self._prefix, self._read = self._read, len(self.ids)
            return new_text[len(prefix_text) :]
        if final:
            self._prefix = self._read = len(self.ids)
        return ""


class Sequence:
    """One completion in flight: its prompt, sampling parameters, tokens and text so far."""

    def __init__(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        sink: Sink,
        stream: bool,
        decode: Callable[[list[int]], str],
        context_length: int,
    ) -> None:
        self.prompt_ids = prompt_ids
        self.params = params
        self.sink = sink
        self.stream = stream
        self.generated: list[int] = []
        self.limit = max(1, min(params.max_tokens, context_length - len(prompt_ids)))
        self.greedy = params.temperature <= 0.0
        self.adjusts = bool(
            params.logit_bias or params.presence_penalty or params.frequency_penalty
        )
        self.generator: Any = None  # torch.Generator, made on first sampled token
        self.decoder = IncrementalDecoder(decode, prompt_ids[-4:])
        self.needs_text = stream or bool(params.stop)
        self.max_stop = max((len(s) for s in params.stop), default=0)
        self.text = ""  # decoded so far (when needs_text)
        self.sent = 0  # characters of text already streamed
        self.finish_reason: str | None = None
        self.cancelled = False
        self.done = False
        self.times = [time.monotonic()]  # queued, then each token (the latency metrics)

    def add(self, token: int, eos: frozenset[int]) -> None:
        """Take the next token; finishes the sequence on EOS, a stop string or the limit."""
        if token in eos and not self.params.ignore_eos:
            self.finish("stop")
            return
        self.generated.append(token)
        self.times.append(time.monotonic())
        if self.needs_text:
            delta = self.decoder.add(token)
            if delta:
                start = len(self.text)
                self.text += delta
                if self.params.stop and self._stop_at(start):
                    return
        if len(self.generated) >= self.limit:
            self.finish("length")
        elif self.stream:
            end = self._safe_end()
            if end > self.sent:
                self.sink.put(Chunk(self.text[self.sent : end], None, len(self.generated)))
                self.sent = end

    def _stop_at(self, start: int) -> bool:
        lo = max(0, start - self.max_stop + 1)
        hits = [i for i in (self.text.find(s, lo) for s in self.params.stop) if i >= 0]
        if not hits:
            return False
        self.text = self.text[: min(hits)]
        self.finish("stop", flush=False)
        return True

    def _safe_end(self) -> int:
        """How much text can be streamed: not a tail that may be the start of a stop string."""
        if not self.params.stop:
            return len(self.text)
        for k in range(min(len(self.text), self.max_stop - 1), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self.params.stop):
                return len(self.text) - k
        return len(self.text)

    def finish(self, reason: str, flush: bool = True) -> None:
        if self.done:
            return
        if not self.needs_text:
            for token in self.generated:
                self.decoder.ids.append(token)
        if flush:
            tail = self.decoder.flush()
            if tail:
                start = len(self.text)
                self.text += tail
                if self.params.stop and self._stop_at(start):
                    return
        self.done, self.finish_reason = True, reason
        times = tuple(self.times)
        self.sink.put(Chunk(self.text[self.sent :], reason, len(self.generated), None, times))
        self.sent = len(self.text)

    def fail(self, message: str) -> None:
        if not self.done:
            self.done = True
            self.sink.put(Chunk("", None, len(self.generated), error=message))


class BatchModel(Protocol):
    """The model operations the scheduler needs; ``state`` is the model's batch (KV cache,
    attention mask, positions), opaque to the scheduler. Logits are ``[rows, vocab]``."""

    can_join: bool
    eos_ids: frozenset[int]
    context_length: int

    def prefill(self, prompts: list[list[int]]) -> tuple[Any, Any]: ...

    def decode(self, state: Any, tokens: list[int]) -> Any: ...

    def merge(self, state: Any, other: Any) -> Any: ...

    def select(self, state: Any, keep: list[int]) -> Any: ...


def sample(logits: Any, seqs: list[Sequence]) -> list[int]:
    """The next token of each row, with that row's sampling parameters."""
    import torch

    if any(s.adjusts for s in seqs):
        logits = logits.clone()
        vocab = logits.shape[-1]
        for i, s in enumerate(seqs):
            if not s.adjusts:
                continue
            p = s.params
            for token, bias in p.logit_bias.items():
                if 0 <= token < vocab:
                    logits[i, token] += bias
            if s.generated and (p.presence_penalty or p.frequency_penalty):
                ids = torch.tensor(s.generated, device=logits.device)
                counts = torch.bincount(ids, minlength=vocab)[:vocab].to(logits.dtype)
                logits[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0)
    tokens: list[int] = logits.argmax(dim=-1).tolist()
    rows = [i for i, s in enumerate(seqs) if not s.greedy]
    if not rows:
        return tokens
    index = torch.tensor(rows, device=logits.device)
    temps = torch.tensor(
        [seqs[i].params.temperature for i in rows], device=logits.device, dtype=torch.float32
    )
    probs = torch.softmax(logits.index_select(0, index).float() / temps[:, None], dim=-1)
    for j, i in enumerate(rows):
        s = seqs[i]
        if s.generator is None:
            s.generator = torch.Generator(device=logits.device)
            seed = s.params.seed if s.params.seed is not None else int.from_bytes(os.urandom(7))
            s.generator.manual_seed(seed)
        row = probs[j]
        if s.params.top_p < 1.0:
            ordered, order = torch.sort(row, descending=True)
            cumulative = torch.cumsum(ordered, dim=-1)
            ordered = ordered.masked_fill(cumulative - ordered >= s.params.top_p, 0.0)
            pick = torch.multinomial(ordered, 1, generator=s.generator)
            tokens[i] = int(order[pick])
        else:
            tokens[i] = int(torch.multinomial(row, 1, generator=s.generator))
    return tokens


class NoRoom(RuntimeError):
    """The model has no room for the batch's next tokens (llama.cpp's shared KV cache is full):
    the newest sequence gives way, with this message, and the others go on."""


@dataclass
class Stats:
    requests: int = 0
    finished: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    steps: int = 0
    prefills: int = 0
    batch_size_max: int = 0
    batch_size_sum: int = 0
    cancelled: int = 0
    errors: int = 0


class Scheduler:
    """The thread that owns the model: admits, prefills, decodes and retires sequences."""

    def __init__(self, model: BatchModel | None, max_batch_size: int, name: str = "scheduler"):
        self.model = model
        self.max_batch_size = max_batch_size
        self.stats = Stats()
        self._cond = threading.Condition()
        self._waiting: deque[Sequence] = deque()
        self._tasks: deque[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = deque()
        self._active: list[Sequence] = []
        self._last: list[int] = []
        self._state: Any = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # --- called from other threads ----------------------------------------------------

    def submit(self, *seqs: Sequence) -> None:
        """Queue sequences; those submitted together are admitted (prefilled) together."""
        with self._cond:
            for seq in seqs:
                self._waiting.append(seq)
                self.stats.requests += 1
                self.stats.prompt_tokens += len(seq.prompt_ids)
            self._cond.notify()

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run ``fn`` on the scheduler thread between two steps (e.g. an embedding batch)."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._cond:
            self._tasks.append((fn, future))
            self._cond.notify()
        return future

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=10)

    def gauges(self) -> dict[str, float]:
        s = self.stats
        return {
            "requests_total": s.requests,
            "finished_total": s.finished,
            "prompt_tokens_total": s.prompt_tokens,
            "generated_tokens_total": s.generated_tokens,
            "batch_steps_total": s.steps,
            "prefills_total": s.prefills,
            "batch_size_max": s.batch_size_max,
            "batch_size_mean": s.batch_size_sum / s.steps if s.steps else 0.0,
            "cancelled_total": s.cancelled,
            "errors_total": s.errors,
            "active_sequences": len(self._active),
            "waiting_sequences": len(self._waiting),
        }

    # --- the loop ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            import torch

            context: Any = torch.inference_mode()
        except ImportError:  # pragma: no cover - every engine that batches has torch
            context = contextlib.nullcontext()
        with context:
            while True:
                with self._cond:
                    while (
                        not self._waiting
                        and not self._tasks
                        and not self._active
                        and not self._stopping
                    ):
                        self._cond.wait()
                    if self._stopping:
                        break
                    tasks = list(self._tasks)
                    self._tasks.clear()
                    new = self._admit()
                for fn, future in tasks:
                    if future.set_running_or_notify_cancel():
                        try:
                            future.set_result(fn())
                        except BaseException as exc:
                            future.set_exception(exc)
                self._drop_cancelled()
                if not new and not self._active:
                    continue
                try:
                    if new:
                        self._prefill(new)
                    else:
                        self._step()
                except Exception as exc:  # keep serving: fail this batch, not the server
                    self._fail_all(new, exc)
        for seq in [*self._active, *self._waiting]:
            seq.fail("the server is shutting down")

    def _admit(self) -> list[Sequence]:
        if self.model is None or not self._waiting:
            return []
        if self._active and not self.model.can_join:
            return []
        new: list[Sequence] = []
        room = self.max_batch_size - len(self._active)
        while self._waiting and len(new) < room:
            seq = self._waiting.popleft()
            if seq.cancelled:
                seq.fail("cancelled")
                self.stats.cancelled += 1
                continue
            new.append(seq)
        return new

    def _prefill(self, new: list[Sequence]) -> None:
        assert self.model is not None
        try:
            logits, state = self.model.prefill([s.prompt_ids for s in new])
        except Exception as exc:  # the running batch is untouched: only the new ones fail
            message = f"generation failed: {type(exc).__name__}: {exc}"
            print(f"server: {message}", file=sys.stderr, flush=True)
            self.stats.errors += 1
            for seq in new:
                seq.fail(message)
            return
        tokens = sample(logits, new)
        self.stats.prefills += 1
        if self._state is None:
            self._state, self._active, self._last = state, list(new), list(tokens)
        else:
            self._state = self.model.merge(self._state, state)
            self._active += new
            self._last += tokens
        self._take(new, tokens)
        self._retire()

    def _step(self) -> None:
        assert self.model is not None
        try:
            logits = self.model.decode(self._state, self._last)
        except NoRoom as exc:
            print(f"server: {exc}", file=sys.stderr, flush=True)
            self.stats.errors += 1
            self._active[-1].fail(str(exc))
            self._retire()
            return
        tokens = sample(logits, self._active)
        self.stats.steps += 1
        size = len(self._active)
        self.stats.batch_size_sum += size
        self.stats.batch_size_max = max(self.stats.batch_size_max, size)
        self._last = tokens
        self._take(self._active, tokens)
        self._retire()

    def _take(self, seqs: list[Sequence], tokens: list[int]) -> None:
        assert self.model is not None
        eos = self.model.eos_ids
        before = sum(len(s.generated) for s in seqs)
        for seq, token in zip(seqs, tokens, strict=True):
            if not seq.done:
                seq.add(token, eos)
        self.stats.generated_tokens += sum(len(s.generated) for s in seqs) - before

    def _drop_cancelled(self) -> None:
        if any(s.cancelled and not s.done for s in self._active):
            for seq in self._active:
                if seq.cancelled and not seq.done:
                    seq.fail("cancelled")
                    self.stats.cancelled += 1
            self._retire()

    def _retire(self) -> None:
        keep = [i for i, s in enumerate(self._active) if not s.done]
        if len(keep) == len(self._active):
            return
        self.stats.finished += len(self._active) - len(keep)
        if not keep:
            self._release()
            self._state, self._active, self._last = None, [], []
            return
        assert self.model is not None
        self._state = self.model.select(self._state, keep)
        self._active = [self._active[i] for i in keep]
        self._last = [self._last[i] for i in keep]

    def _fail_all(self, new: list[Sequence], exc: Exception) -> None:
        message = f"generation failed: {type(exc).__name__}: {exc}"
        print(f"server: {message}", file=sys.stderr, flush=True)
        self.stats.errors += 1
        for seq in [*self._active, *new]:
            seq.fail(message)
        self._release()
        self._state, self._active, self._last = None, [], []

    def _release(self) -> None:
        """A model that holds per-sequence resources (llama.cpp's slots) frees those of the
        batch being dropped."""
        release = getattr(self.model, "release", None)
        if release is not None and self._state is not None:
            release(self._state)


async def run_sequence(
    scheduler: Scheduler, make: Callable[[Sink], Sequence]
) -> AsyncIterator[Chunk]:
    """Submit a sequence and yield its chunks until the last one; closing cancels it."""
    sink = AsyncSink(asyncio.get_running_loop())
    seq = make(sink)
    scheduler.submit(seq)
    try:
        while True:
            chunk = await sink.get()
            yield chunk
            if chunk.finish_reason is not None or chunk.error is not None:
                return
    finally:
        seq.cancelled = True
