"""Training texts to token ids, and the batches the Trainer feeds the model."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from substratus.workloads.training.config import TrainError
from substratus.workloads.training.inputs import ChatRenderer, ChatText, ModelInfo, Spans

IGNORE = -100  # the label torch's cross-entropy skips


@dataclass
class Encoded:
    rows: list[dict[str, list[int]]]  # input_ids, and labels where only some tokens are learned
    tokens: int
    truncated: int
    learned: int | None = None  # tokens with a label, when not all of them
    unlearnable: int = 0  # texts dropped: nothing to learn left in them after max_length


def load_tokenizer(info: ModelInfo) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(info.path)
    except Exception as exc:  # tokenizers raise many kinds
        raise TrainError(f"model/: the tokenizer does not load ({exc})") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            raise TrainError("model/: the tokenizer has no pad, eos or unk token to pad with")
    return tokenizer


def chat_renderer(tokenizer: Any, assistant_only: bool) -> ChatRenderer:
    """Renders messages with the tokenizer's chat template and finds the assistant's turns.

    A turn spans from the end of the conversation before it rendered with the generation
    prompt (the text the server sends the model) to the end of the conversation up to it
    (its end-of-turn marker included, so the model learns to stop). A template that renders
    a conversation's start differently on its own gives no spans: that text is learned whole.
    """

    def apply(messages: list[dict[str, Any]], prompt: bool = False) -> str:
        try:
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=prompt
            )
        except Exception as exc:  # jinja raises its own errors for bad roles/order
            raise TrainError(f"data/: the chat template rejects a row's messages ({exc})") from None
        return str(text)

    def render(messages: list[dict[str, Any]]) -> ChatText:
        text = apply(messages)
        if not assistant_only:
            return ChatText(text, None)
        spans: Spans = []
        for i, message in enumerate(messages):
            if message.get("role") != "assistant":
                continue
            if i == 0:
                return ChatText(text, None)
            start, end = apply(messages[:i], prompt=True), apply(messages[: i + 1])
            if not (text.startswith(end) and end.startswith(start) and len(start) < len(end)):
                return ChatText(text, None)
            spans.append((len(start), len(end)))
        return ChatText(text, spans)

    return render


def encode(
    tokenizer: Any,
    texts: list[str],
    max_length: int,
    chat: bool,
    spans: list[Spans | None] | None = None,
) -> Encoded:
    """Token ids per text, cut at ``max_length``; an eos ends each text that fits, except chat
    texts learned by spans (their template ends each turn). With ``spans``, labels mark the
    tokens to learn; a text with none left after the cut is dropped."""
    eos = tokenizer.eos_token_id
    # Token offsets need a fast tokenizer; without one, texts are learned whole.
    masked = spans is not None and any(s is not None for s in spans) and tokenizer.is_fast
    rows: list[dict[str, list[int]]] = []
    tokens = truncated = learned = unlearnable = 0
    for start in range(0, len(texts), 1000):
        chunk = texts[start : start + 1000]
        batch = tokenizer(chunk, add_special_tokens=not chat, return_offsets_mapping=masked)
        for n, ids in enumerate(batch["input_ids"]):
            ids = list(ids)
            learn = spans[start + n] if masked and spans is not None else None
            labels = _labels(ids, batch["offset_mapping"][n], learn) if learn is not None else None
            if len(ids) > max_length:
                ids = ids[:max_length]
                truncated += 1
            elif eos is not None and labels is None and ids[-1:] != [eos] and len(ids) < max_length:
                ids.append(eos)
            if len(ids) < 2:
                continue
            row = {"input_ids": ids}
            if masked:
                row["labels"] = labels[: len(ids)] if labels is not None else list(ids)
                # The first label is never predicted: nothing precedes it.
                count = sum(label != IGNORE for label in row["labels"][1:])
                if not count:
                    unlearnable += 1
                    continue
                learned += count
            rows.append(row)
            tokens += len(ids)
    if not rows:
        why = "an answer left within max_length" if unlearnable else "two or more tokens"
        raise TrainError(f"data/: the dataset is empty: no row has {why}")
    return Encoded(rows, tokens, truncated, learned if masked else None, unlearnable)


def _labels(ids: list[int], offsets: list[tuple[int, int]], spans: Spans) -> list[int]:
    """Each token's id where it overlaps a span, else IGNORE."""
    return [
        token if end > begin and any(s < end and begin < e for s, e in spans) else IGNORE
        for token, (begin, end) in zip(ids, offsets, strict=True)
    ]


class PadCollator:
    """Pads a batch; padding, and tokens not to learn, are masked out of the labels (-100)."""

    def __init__(self, pad_id: int, multiple_of: int = 1):
        self.pad_id, self.multiple_of = pad_id, multiple_of

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        width = math.ceil(longest / self.multiple_of) * self.multiple_of
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        labels = torch.full((len(features), width), -100, dtype=torch.long)
        for i, f in enumerate(features):
            row = torch.tensor(f["input_ids"], dtype=torch.long)
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
            labels[i, : len(row)] = torch.tensor(f.get("labels", f["input_ids"]), dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
