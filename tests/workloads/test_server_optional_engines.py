"""The vLLM engine's glue, against a stand-in for the library.

vLLM needs a GPU, which no test machine here has, so these tests replace ``vllm`` with a small
fake that records how it is called and answers the way the real API does. They check our side
of the contract: the arguments we pass (OpenAI sampling semantics), streaming deltas, finish
reasons, cancellation (abort), chat templates and embeddings. (llama.cpp runs for real:
tests/workloads/test_server_llamacpp.py.)
"""

from __future__ import annotations

import asyncio
import json
import sys
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from substratus.workloads.server.config import ServerConfig
from substratus.workloads.server.engines.base import Chunk, SamplingParams
from tests.workloads.tiny import make_tokenizer


async def collect(stream: AsyncIterator[Chunk]) -> list[Chunk]:
    return [chunk async for chunk in stream]


# --- vLLM ----------------------------------------------------------------------------


class FakeVLLM:
    def __init__(self, args: Any) -> None:
        self.args = args
        self.model_config = types.SimpleNamespace(max_model_len=64)
        self.aborted: list[str] = []
        self.sampling: list[Any] = []

    @classmethod
    def from_engine_args(cls, args: Any) -> FakeVLLM:
        return cls(args)

    async def generate(
        self, prompt: dict[str, Any], sampling: Any, request_id: str
    ) -> AsyncIterator[Any]:
        self.sampling.append(sampling)
        text, ids = "", []
        for i, word in enumerate(["Hel", "lo", " there"]):
            text, ids = text + word, [*ids, i]
            reason = "length" if i == 2 else None
            yield types.SimpleNamespace(
                outputs=[types.SimpleNamespace(text=text, token_ids=ids, finish_reason=reason)]
            )
            await asyncio.sleep(0)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)


@pytest.fixture()
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("vllm")
    module.AsyncEngineArgs = lambda **kw: kw  # type: ignore[attr-defined]
    module.AsyncLLMEngine = FakeVLLM  # type: ignore[attr-defined]
    module.SamplingParams = lambda **kw: kw  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)


def test_vllm_engine(fake_vllm: None, tmp_path: Path) -> None:
    from substratus.workloads.server.engines.vllm import VLLMEngine

    make_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    config = ServerConfig(tmp_path, "m", max_batch_size=8, max_model_len=64)
    engine = VLLMEngine(config, "fp8")
    engine.load()
    vllm: Any = engine.engine
    assert vllm.args["quantization"] == "fp8" and vllm.args["max_num_seqs"] == 8
    assert engine.context_length == 64 and not engine.embeds
    ids = engine.chat_prompt([{"role": "user", "content": "hi"}])
    assert engine.tokenizer.decode(ids) == "<|user|>hi<|end|><|assistant|>"

    params = SamplingParams(3, temperature=0.5, top_p=0.9, stop=["zz"], ignore_eos=True)
    chunks = asyncio.run(collect(engine.generate([5, 6], params, stream=True)))
    assert [c.text for c in chunks] == ["Hel", "lo", " there"]
    assert chunks[-1].finish_reason == "length" and chunks[-1].completion_tokens == 3
    sent = vllm.sampling[-1]
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"]) == (3, 0.5, 0.9)
    assert (sent["stop"], sent["ignore_eos"]) == (["zz"], True)
    assert vllm.aborted == []  # finished: nothing to abort

    chunks = asyncio.run(collect(engine.generate([5], params, stream=False)))
    assert [(c.text, c.finish_reason) for c in chunks] == [("Hello there", "length")]

    async def hang_up() -> None:
        stream = engine.generate([5], params, stream=True)
        await stream.__anext__()
        await stream.aclose()  # the client went away

    asyncio.run(hang_up())
    assert len(vllm.aborted) == 1
    assert engine.metrics()["batch_size_max"] == 1
