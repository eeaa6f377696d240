"""Tokenizing and chat templates with a Hugging Face tokenizer, shared by the engines that
have one (transformers, vLLM)."""

from __future__ import annotations

from typing import Any

from substratus.workloads.server.config import ServerConfig
from substratus.workloads.server.protocol import APIError


class HFTokenizer:
    tokenizer: Any
    config: ServerConfig

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=True)
        return ids

    def decode(self, ids: list[int]) -> str:
        text: str = self.tokenizer.decode(ids, skip_special_tokens=True)
        return text

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        template = self.config.chat_template or getattr(self.tokenizer, "chat_template", None)
        if not template:
            raise APIError(
                400,
                f"model {self.config.served_model_name!r} has no chat template: use "
                "/v1/completions, or give the server one in params.chat_template",
                param="messages",
            )
        try:
            text = self.tokenizer.apply_chat_template(
                messages, chat_template=template, add_generation_prompt=True, tokenize=False
            )
        except Exception as exc:  # jinja2 errors, raise_exception() in templates
            raise APIError(
                400, f"messages: the chat template rejected them: {exc}", param="messages"
            ) from None
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=False)
        return ids
