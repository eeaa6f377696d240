"""llama.cpp's context as the scheduler's ``BatchModel``: continuous batching in the manner of
llama.cpp's own server (its "parallel slots").

Each running sequence owns a slot, a llama.cpp sequence id in one KV cache shared by all slots
(``kv_unified``); a decode step is one ``llama_decode`` of a batch holding each sequence's next
token at its own position, and each row's logits go to the scheduler's sampler, as the
transformers engine's do. A new sequence is prefilled in its own ``llama_decode`` calls and
joins the running batch; a finished one's slot is cleared and reused.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from substratus.workloads.server.batching import NoRoom


class KVCacheFull(NoRoom):
    """The shared KV cache has no room for the batch's next tokens."""


@dataclass
class Rows:
    """The scheduler's state: each row's slot (llama.cpp sequence id) and next position."""

    slots: list[int] = field(default_factory=list)
    pos: list[int] = field(default_factory=list)


class LlamaBatchModel:
    can_join = True

    def __init__(
        self, ctx: Any, n_vocab: int, eos_ids: frozenset[int], slots: int, n_batch: int
    ) -> None:
        import llama_cpp

        self.lib = llama_cpp
        self.ctx = ctx  # llama_cpp._internals.LlamaContext
        self.n_vocab = n_vocab
        self.eos_ids = eos_ids
        self.context_length = int(ctx.n_ctx())
        self.n_batch = n_batch
        self.free = list(range(slots))
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)

    def close(self) -> None:
        if self.batch is not None:
            self.lib.llama_batch_free(self.batch)
            self.batch = None

    # --- the batch --------------------------------------------------------------------

    def _decode(self, tokens: list[tuple[int, int, int, bool]]) -> list[int]:
        """Decode (token, slot, position, wants logits) entries; the batch indices whose
        logits were asked for, in order."""
        b = self.batch
        wanted = []
        for i, (token, slot, pos, logits) in enumerate(tokens):
            b.token[i] = token
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = slot
            b.logits[i] = logits
            if logits:
                wanted.append(i)
        b.n_tokens = len(tokens)
        code = self.lib.llama_decode(self.ctx.ctx, b)
        if code == 1:
            raise KVCacheFull(
                f"the KV cache ({self.context_length} tokens, shared by the sequences of the "
                "batch) is full: the newest sequence stopped; retry, or give the server a "
                "larger params.max_model_len or a smaller params.max_batch_size"
            )
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")
        return wanted

    def _logits(self, indices: list[int]) -> np.ndarray:
        out = np.empty((len(indices), self.n_vocab), dtype=np.float32)
        for row, i in enumerate(indices):
            ptr = self.lib.llama_get_logits_ith(self.ctx.ctx, i)
            out[row] = np.ctypeslib.as_array(
                ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (self.n_vocab,)
            )
        return out

    @staticmethod
    def _tensor(logits: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(logits)

    # --- BatchModel -------------------------------------------------------------------

    def prefill(self, prompts: list[list[int]]) -> tuple[Any, Rows]:
        if len(prompts) > len(self.free):  # the scheduler admits at most max_batch_size
            raise RuntimeError(f"{len(prompts)} prompts for {len(self.free)} free slots")
        rows = Rows()
        for prompt in prompts:
            slot = self.free.pop(0)
            self.lib.llama_memory_seq_rm(self.ctx.memory, slot, -1, -1)
            rows.slots.append(slot)
            rows.pos.append(len(prompt))
        try:
            # Every prompt's tokens, n_batch at a time; logits only of each prompt's last.
            entries = [
                (token, slot, pos, pos == len(prompt) - 1)
                for prompt, slot in zip(prompts, rows.slots, strict=True)
                for pos, token in enumerate(prompt)
            ]
            last = np.empty((len(prompts), self.n_vocab), dtype=np.float32)
            done = 0
            for start in range(0, len(entries), self.n_batch):
                wanted = self._decode(entries[start : start + self.n_batch])
                if wanted:
                    last[done : done + len(wanted)] = self._logits(wanted)
                    done += len(wanted)
        except Exception:
            self.release(rows)
            raise
        return self._tensor(last), rows

    def decode(self, state: Rows, tokens: list[int]) -> Any:
        entries = [
            (token, slot, pos, True)
            for token, slot, pos in zip(tokens, state.slots, state.pos, strict=True)
        ]
        wanted = self._decode(entries)
        state.pos = [p + 1 for p in state.pos]
        return self._tensor(self._logits(wanted))

    def merge(self, state: Rows, other: Rows) -> Rows:
        return Rows(state.slots + other.slots, state.pos + other.pos)

    def select(self, state: Rows, keep: list[int]) -> Rows:
        kept = set(keep)
        gone = Rows(
            [s for i, s in enumerate(state.slots) if i not in kept],
            [p for i, p in enumerate(state.pos) if i not in kept],
        )
        self.release(gone)
        return Rows([state.slots[i] for i in keep], [state.pos[i] for i in keep])

    def release(self, state: Rows) -> None:
        """Clear the rows' slots and make them free."""
        for slot in state.slots:
            self.lib.llama_memory_seq_rm(self.ctx.memory, slot, -1, -1)
            if slot not in self.free:
                self.free.append(slot)
