"""The vLLM and llama.cpp engines' glue, against stand-ins for the libraries.

Neither library can run here (vLLM needs a GPU; llama-cpp-python is not installed and takes
minutes to build), so these tests replace ``vllm`` / ``llama_cpp`` with small fakes that
record how they are called and answer the way the real APIs do. They check our side of the
contract: the arguments we pass (OpenAI sampling semantics), streaming deltas, finish
reasons, cancellation (abort), chat templates and embeddings. The real libraries are
exercised where they are installed (a GPU machine, an image with llama-cpp-python).
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from substratus.workloads.server.config import ServerConfig
from substratus.workloads.server.engines.base import Chunk, SamplingParams
from substratus.workloads.server.protocol import APIError
from tests.workloads.tiny import CHAT_TEMPLATE, make_tokenizer

# --- llama.cpp -----------------------------------------------------------------------


class FakeLlama:
    """Text is bytes: token id = byte value; BOS 1, EOS 2 (as llama.cpp's byte vocabs)."""

    instances: ClassVar[list[FakeLlama]] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.calls: list[dict[str, Any]] = []
        self.metadata = {
            "tokenizer.chat_template": CHAT_TEMPLATE,
            "tokenizer.ggml.add_bos_token": "true",
            "general.file_type": "3",
        }
        FakeLlama.instances.append(self)

    def n_ctx(self) -> int:
        return 128

    def n_vocab(self) -> int:
        return 256

    def token_bos(self) -> int:
        return 1

    def token_eos(self) -> int:
        return 2

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return ([1] if add_bos else []) + list(text)

    def detokenize(self, ids: list[int], special: bool = False) -> bytes:
        return bytes(i for i in ids if i > 2 or special)

    def create_completion(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        self.calls.append(kwargs)
        words = ["Hel", "lo", " wor", "ld"][: kwargs["max_tokens"]]
        for i, word in enumerate(words):
            last = i == len(words) - 1
            reason = ("length" if kwargs["max_tokens"] == len(words) else "stop") if last else None
            yield {"choices": [{"text": word, "finish_reason": reason}]}

    def embed(self, texts: list[str]) -> list[list[float]]:
        return [[float(len(t)), 1.0, 0.0] for t in texts]


@pytest.fixture()
def fake_llama_cpp(monkeypatch: pytest.MonkeyPatch) -> type[FakeLlama]:
    module = types.ModuleType("llama_cpp")
    module.Llama = FakeLlama  # type: ignore[attr-defined]
    module.LogitsProcessorList = list  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "llama_cpp", module)
    FakeLlama.instances = []
    return FakeLlama


async def collect(stream: AsyncIterator[Chunk]) -> list[Chunk]:
    return [chunk async for chunk in stream]


def test_llamacpp_engine(fake_llama_cpp: type[FakeLlama], tmp_path: Path) -> None:
    from substratus.workloads.server.engines.llamacpp import LlamaCppEngine

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    engine = LlamaCppEngine(ServerConfig(tmp_path, "m", threads=2), gguf, gpu=False)
    engine.load()
    try:
        llm = fake_llama_cpp.instances[0]
        assert llm.kwargs["model_path"] == str(gguf) and llm.kwargs["n_gpu_layers"] == 0
        assert llm.kwargs["n_threads"] == 2
        assert engine.context_length == 128 and engine.vocab_size == 256
        assert engine.encode("hi") == [1, 104, 105]
        ids = engine.chat_prompt([{"role": "user", "content": "hi"}])
        assert engine.decode(ids) == "<|user|>hi<|end|><|assistant|>"

        params = SamplingParams(10, temperature=0.0, stop=["x"], seed=3, ignore_eos=True)
        chunks = asyncio.run(collect(engine.generate([1, 104], params, stream=True)))
        assert "".join(c.text for c in chunks) == "Hello world"
        assert chunks[-1].finish_reason == "stop" and chunks[-1].completion_tokens == 4
        call = llm.calls[-1]
        # OpenAI semantics, not llama.cpp's defaults (top_k 40, repeat penalty 1.1).
        assert (call["top_k"], call["min_p"], call["repeat_penalty"]) == (0, 0.0, 1.0)
        assert (call["temperature"], call["stop"], call["seed"]) == (0.0, ["x"], 3)
        ban = call["logits_processor"][0]  # ignore_eos: EOS can never be sampled
        assert ban(None, [0.0, 0.0, 5.0])[2] == -math.inf

        chunks = asyncio.run(collect(engine.generate([1], SamplingParams(2), stream=False)))
        assert [(c.text, c.finish_reason) for c in chunks] == [("Hello", "length")]

        vectors = asyncio.run(engine.embed([[1, 104, 105]]))
        assert math.isclose(sum(v * v for v in vectors[0]), 1.0)
        assert fake_llama_cpp.instances[-1].kwargs["embedding"] is True
    finally:
        engine.close()


def test_llamacpp_without_a_chat_template(fake_llama_cpp: type[FakeLlama], tmp_path: Path) -> None:
    from substratus.workloads.server.engines.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine(ServerConfig(tmp_path, "m"), tmp_path / "m.gguf", gpu=True)
    engine.load()
    engine.template = None
    with pytest.raises(APIError, match="no chat template"):
        engine.chat_prompt([{"role": "user", "content": "hi"}])
    assert fake_llama_cpp.instances[0].kwargs["n_gpu_layers"] == -1
    engine.close()


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
