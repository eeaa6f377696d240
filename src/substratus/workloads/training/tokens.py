"""Training texts to token ids, and the batches the Trainer feeds the model."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from substratus.workloads.training.config import TrainError
from substratus.workloads.training.inputs import ModelInfo


@dataclass
class Encoded:
    rows: list[dict[str, list[int]]]
    tokens: int
    truncated: int


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


def encode(tokenizer: Any, texts: list[str], max_length: int, chat: bool) -> Encoded:
    """Token ids per text, cut at ``max_length``; an eos ends each text that fits."""
    eos = tokenizer.eos_token_id
    rows: list[dict[str, list[int]]] = []
    tokens = truncated = 0
    for start in range(0, len(texts), 1000):
        batch = tokenizer(texts[start : start + 1000], add_special_tokens=not chat)
        for ids in batch["input_ids"]:
            ids = list(ids)
            if len(ids) > max_length:
                ids = ids[:max_length]
                truncated += 1
            elif eos is not None and (not ids or ids[-1] != eos) and len(ids) < max_length:
                ids.append(eos)
            if len(ids) >= 2:
                rows.append({"input_ids": ids})
                tokens += len(ids)
    if not rows:
        raise TrainError("data/: the dataset is empty: no row has two or more tokens")
    return Encoded(rows, tokens, truncated)


class PadCollator:
    """Pads a batch; padding is masked out of attention and labels (-100)."""

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
            labels[i, : len(row)] = row
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
