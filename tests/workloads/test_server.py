"""The model server, end to end: the real process on loopback, driven by the official
``openai`` client and by raw HTTP, with a tiny random Llama made on the spot."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.browser import browse, chromium
from tests.workloads.tiny import make_tiny_llama

MODULE = "substratus.workloads.server"
NAME = "tiny"
SRC = Path(__file__).resolve().parents[2] / "src"

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def contract_dir(base: Path, model: Path | None, params: dict[str, Any] | None = None) -> Path:
    """A run directory as the runtime lays it out: model/ (here a symlink), params.json."""
    root = base / "run"
    root.mkdir(parents=True)
    if model is not None:
        (root / "model").symlink_to(model, target_is_directory=True)
    (root / "artifacts").mkdir()
    (root / "params.json").write_text(json.dumps({"threads": 1, **(params or {})}))
    return root


class ServerProcess:
    """``python -m substratus.workloads.server`` in a run directory, on a free port."""

    def __init__(
        self, root: Path, env: dict[str, str] | None = None, python: str = sys.executable
    ) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full = {k: v for k, v in os.environ.items() if not k.startswith("PARAM_")}
        full.pop("QUANTIZATION_BITS", None)
        full.update(
            {
                "PORT": str(self.port),
                "HOST": "127.0.0.1",
                "SUBSTRATUS_NAME": NAME,
                "PYTHONPATH": str(SRC),
                "HF_HUB_OFFLINE": "1",
            }
        )
        full.update(env or {})
        self.log = root / "server.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [python, "-m", MODULE],
                cwd=root,
                env=full,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        self.seen: list[int] = []  # statuses of GET / while waiting

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.logs()}")
            try:
                status = httpx.get(self.url + "/", timeout=5).status_code
                self.seen.append(status)
                if status == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready in {timeout} s:\n{self.logs()}")

    def wait_exit(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(
                f"server still running after {timeout} s:\n{self.logs()}"
            ) from None

    def metrics(self) -> dict[str, float]:
        """Samples without labels, parsed with Prometheus' own parser, by name less the
        ``substratus_server_`` prefix."""
        return {k: v for (k, labels), v in self.samples().items() if not labels}

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        return {
            (s.name.removeprefix("substratus_server_"), frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Whatever the server started (vLLM's engine processes) goes with it, as the runtimes
        # stop a process group or a container.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("model") / "tiny")


@contextmanager
def running(
    root: Path,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    python: str = sys.executable,
) -> Iterator[ServerProcess]:
    """A server started in ``root`` (by ``python``), ready, and stopped on the way out."""
    proc = ServerProcess(root, env, python)
    try:
        proc.wait_ready(timeout)
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = contract_dir(tmp_path_factory.mktemp("server"), tiny_model, {"max_batch_size": 16})
    with running(root) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture()
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def greedy(**extra: Any) -> dict[str, Any]:
    return {"temperature": 0, "extra_body": {"ignore_eos": True, **extra}}


# --- readiness, models ---------------------------------------------------------------


def test_listens_before_the_model_is_loaded_then_answers_200(server: ServerProcess) -> None:
    assert 503 in server.seen, server.seen  # the readiness probe saw "loading" first
    assert server.seen[-1] == 200
    body = httpx.get(server.url + "/").json()
    assert body == {"status": "ready", "model": NAME, "engine": "transformers"}


def test_models_list(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [NAME]
    assert client.models.retrieve(NAME).id == NAME


# --- completions and chat ------------------------------------------------------------


def test_completion(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model=NAME, prompt="The capital of France is", max_tokens=8, **greedy()
    )
    assert out.object == "text_completion" and out.model == NAME
    assert out.choices[0].finish_reason == "length"
    assert isinstance(out.choices[0].text, str) and out.choices[0].text
    assert out.usage is not None and out.usage.completion_tokens == 8
    assert out.usage.prompt_tokens > 0
    again = client.completions.create(
        model=NAME, prompt="The capital of France is", max_tokens=8, **greedy()
    )
    assert again.choices[0].text == out.choices[0].text  # greedy is deterministic


def test_seeded_sampling_is_reproducible(client: openai.OpenAI) -> None:
    def run(seed: int) -> str:
        out = client.completions.create(
            model=NAME,
            prompt="Hello",
            max_tokens=12,
            temperature=1.0,
            top_p=0.9,
            seed=seed,
            extra_body={"ignore_eos": True},
        )
        return out.choices[0].text

    assert run(7) == run(7)
    assert len({run(s) for s in (1, 2, 3, 4)}) > 1


def test_several_prompts_and_choices(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model=NAME, prompt=["Hello", "The quick brown fox"], n=2, max_tokens=4, **greedy()
    )
    assert sorted(c.index for c in out.choices) == [0, 1, 2, 3]
    by_index = {c.index: c.text for c in out.choices}
    assert by_index[0] == by_index[1] and by_index[2] == by_index[3]  # greedy: same per prompt
    assert out.usage is not None and out.usage.completion_tokens == 16


def test_echo_and_token_prompts(http: httpx.Client) -> None:
    r = http.post(
        "/v1/completions", json={"prompt": "Hello", "max_tokens": 3, "echo": True, "temperature": 0}
    )
    assert r.status_code == 200 and r.json()["choices"][0]["text"].startswith("Hello")
    r = http.post("/v1/completions", json={"prompt": [5, 6, 7], "max_tokens": 3, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 3


def test_chat_completion_plain_and_streamed(client: openai.OpenAI) -> None:
    messages: Any = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    out = client.chat.completions.create(model=NAME, messages=messages, max_tokens=12, **greedy())
    assert out.object == "chat.completion"
    assert out.choices[0].message.role == "assistant"
    text = out.choices[0].message.content or ""
    assert text and out.choices[0].finish_reason == "length"

    stream = client.chat.completions.create(
        model=NAME,
        messages=messages,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
        **greedy(),
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    assert content == text  # streaming and plain decode the same tokens to the same text


def test_stream_is_server_sent_events_ending_with_done(http: httpx.Client) -> None:
    body = {
        "prompt": "Hello",
        "max_tokens": 5,
        "stream": True,
        "temperature": 0,
        "ignore_eos": True,
    }
    with http.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_stop_strings_cut_the_text_plain_and_streamed(client: openai.OpenAI) -> None:
    prompt = "Kubernetes runs containers"
    full = (
        client.completions.create(model=NAME, prompt=prompt, max_tokens=24, **greedy())
        .choices[0]
        .text
    )
    clean = [i for i in range(4, len(full) - 3) if "\ufffd" not in full[i : i + 2]]
    assert clean, f"no usable stop string in {full!r}"
    stop = full[clean[0] : clean[0] + 2]
    expected = full[: full.index(stop)]

    out = client.completions.create(
        model=NAME, prompt=prompt, max_tokens=24, stop=[stop], **greedy()
    )
    assert out.choices[0].text == expected
    assert out.choices[0].finish_reason == "stop"

    stream = client.completions.create(
        model=NAME, prompt=prompt, max_tokens=24, stop=stop, stream=True, **greedy()
    )
    parts = list(stream)
    assert "".join(p.choices[0].text for p in parts if p.choices) == expected
    assert [p.choices[0].finish_reason for p in parts if p.choices][-1] == "stop"


# --- embeddings ----------------------------------------------------------------------


def test_embeddings(client: openai.OpenAI, http: httpx.Client) -> None:
    out = client.embeddings.create(model=NAME, input=["hello world", "The quick brown fox jumps"])
    assert [d.index for d in out.data] == [0, 1]
    vectors = [d.embedding for d in out.data]
    assert all(len(v) == 64 for v in vectors)  # the tiny model's hidden size
    assert all(math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-4) for v in vectors)
    assert out.usage.prompt_tokens > 0
    # Alone or batched with a longer input (padding), the same text embeds the same.
    alone = http.post("/v1/embeddings", json={"input": "hello world", "encoding_format": "float"})
    assert alone.status_code == 200
    single = alone.json()["data"][0]["embedding"]
    assert max(abs(a - b) for a, b in zip(single, vectors[0], strict=True)) < 1e-4
    short = client.embeddings.create(model=NAME, input="hello world", dimensions=16)
    assert len(short.data[0].embedding) == 16


# --- batching ------------------------------------------------------------------------


def test_concurrent_requests_are_batched(server: ServerProcess) -> None:
    before = server.metrics()

    async def run() -> list[Any]:
        aclient = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        async with aclient:
            return await asyncio.gather(
                *(
                    aclient.completions.create(
                        model=NAME, prompt=f"Hello {i}", max_tokens=32, **greedy()
                    )
                    for i in range(16)
                )
            )

    results = asyncio.run(run())
    assert all(r.usage.completion_tokens == 32 for r in results)
    after = server.metrics()
    assert after["engine_requests_total"] - before["engine_requests_total"] == 16
    assert after["engine_batch_size_max"] > 1, after
    # 16 x 32 tokens in far fewer than 16 x 32 decode steps: they shared steps.
    steps = after["engine_batch_steps_total"] - before["engine_batch_steps_total"]
    assert steps < 16 * 32 / 2, steps


def test_a_closed_stream_is_cancelled(server: ServerProcess) -> None:
    before = server.metrics()
    body = {
        "prompt": "Hello",
        "max_tokens": 200,
        "stream": True,
        "temperature": 0,
        "ignore_eos": True,
    }
    with (
        httpx.Client(base_url=server.url, timeout=60) as c,
        c.stream("POST", "/v1/completions", json=body) as r,
    ):
        for line in r.iter_lines():
            if line.startswith("data: {"):
                break  # one chunk, then hang up
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        m = server.metrics()
        if m["batch_size"] == 0:
            break
        time.sleep(0.05)
    after = server.metrics()
    assert after["batch_size"] == 0
    assert after["engine_cancelled_total"] == before["engine_cancelled_total"] + 1
    assert after["engine_generated_tokens_total"] - before["engine_generated_tokens_total"] < 200


def test_metrics_time_each_completion_and_count_api_requests(
    server: ServerProcess, client: openai.OpenAI, http: httpx.Client
) -> None:
    before = server.samples()
    assert http.get("/").status_code == 200  # probes: not requests of the API
    assert http.get("/health").status_code == 200
    messages: list[Any] = [{"role": "user", "content": "Hi"}]
    stream = client.chat.completions.create(
        model=NAME, messages=messages, max_tokens=8, stream=True, **greedy()
    )
    assert [c for c in stream if c.choices and c.choices[0].finish_reason] != []
    out = client.completions.create(model=NAME, prompt="Hello", max_tokens=4, **greedy())
    assert out.usage is not None and out.usage.completion_tokens == 4
    assert http.post("/v1/completions", json={"prompt": ""}).status_code == 400
    after = server.samples()

    def grew(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("requests_total", endpoint="/v1/chat/completions", status="200") == 1
    assert grew("requests_total", endpoint="/v1/completions", status="200") == 1
    assert grew("requests_total", endpoint="/v1/completions", status="400") == 1
    assert grew("request_duration_seconds_count", endpoint="/v1/chat/completions") == 1
    endpoints = {dict(labels).get("endpoint") for name, labels in after if name == "requests_total"}
    assert not endpoints & {"/", "/health", "/metrics"}, endpoints
    # Both completions, streamed or not, timed from the engine's own token times.
    assert grew("time_to_first_token_seconds_count") == 2
    assert grew("inter_token_latency_seconds_count") == 7 + 3
    assert grew("generation_tokens_total") == 12
    assert grew("prompt_tokens_total") > 0
    slow = after[("time_to_first_token_seconds_bucket", frozenset({("le", "+Inf")}))]
    fast = after[("time_to_first_token_seconds_bucket", frozenset({("le", "0.01")}))]
    assert slow >= 2 and fast <= slow
    assert after[("ready", frozenset())] == 1
    assert after[("queue_depth", frozenset())] == 0


# --- docs and API keys ----------------------------------------------------------------


def test_openapi_describes_the_api(http: httpx.Client) -> None:
    doc = http.get("/openapi.json").json()
    assert doc["openapi"] == "3.1.0"
    assert {"/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/models"} <= set(
        doc["paths"]
    )
    post = doc["paths"]["/v1/chat/completions"]["post"]
    ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert "messages" in schema["required"]
    assert schema["properties"]["temperature"]["anyOf"][0]["maximum"] == 2
    assert "text/event-stream" in post["responses"]["200"]["content"]
    assert "security" not in doc and "401" not in post["responses"]  # no keys asked for
    js = http.get("/docs/static/swagger-ui-bundle.js")
    assert js.status_code == 200 and "SwaggerUIBundle" in js.text[:4000]


def test_docs_render_in_a_browser_with_no_network(server: ServerProcess, tmp_path: Path) -> None:
    """Swagger UI's page, its scripts and the OpenAPI document all come from the server."""
    if chromium() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (hack/setup.sh --test installs it as root)")
        pytest.skip("chromium is not installed")
    dom = browse(server.url + "/docs", tmp_path / "docs.png")
    assert "Substratus model server: tiny" in dom
    assert "/v1/chat/completions" in dom and "/v1/embeddings" in dom
    assert (tmp_path / "docs.png").stat().st_size > 10_000


KEY = "sk-test-0123456789abcdef"


@pytest.fixture(scope="module")
def keyed(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = contract_dir(tmp_path_factory.mktemp("keyed"), tiny_model)
    # Ready: GET / needs no key (the runtime's probe has none).
    with running(root, {"API_KEYS": f"another-key-0123456789,\n{KEY}"}) as proc:
        yield proc


def test_api_keys_are_asked_for(keyed: ServerProcess) -> None:
    def client(key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=keyed.url + "/v1", api_key=key, max_retries=0)

    bare = httpx.post(keyed.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 1})
    assert bare.status_code == 401
    assert bare.headers["www-authenticate"] == "Bearer"
    assert bare.json()["error"]["code"] == "invalid_api_key"
    assert "Authorization: Bearer" in bare.json()["error"]["message"]
    with pytest.raises(openai.AuthenticationError) as info:
        client("sk-wrong-0123456789abcdef").completions.create(model=NAME, prompt="Hi")
    assert info.value.code == "invalid_api_key"
    basic = httpx.get(keyed.url + "/v1/models", headers={"Authorization": f"Basic {KEY}"})
    assert basic.status_code == 401  # the key, but not as a bearer token
    for key in (KEY, "another-key-0123456789"):
        out = client(key).completions.create(model=NAME, prompt="Hi", max_tokens=2, **greedy())
        assert out.usage is not None and out.usage.completion_tokens == 2
    # Open without a key: the probes, the scrape, the docs.
    for path in ("/", "/metrics", "/docs", "/openapi.json"):
        assert httpx.get(keyed.url + path).status_code == 200, path
    doc = httpx.get(keyed.url + "/openapi.json").json()
    assert doc["security"] == [{"apiKey": []}]
    refused = ("requests_total", frozenset({("endpoint", "/v1/completions"), ("status", "401")}))
    assert keyed.samples()[refused] == 2
    models = ("requests_total", frozenset({("endpoint", "/v1/models"), ("status", "401")}))
    assert keyed.samples()[models] == 1


# --- bad requests --------------------------------------------------------------------

LONG = "The quick brown fox jumps over the lazy dog. " * 40

BAD: list[tuple[str, str, Any, int, str | None]] = [
    ("malformed json", "/v1/completions", b'{"prompt": "x",', 400, None),
    ("not an object", "/v1/completions", [1, 2], 400, None),
    ("missing prompt", "/v1/completions", {"max_tokens": 3}, 400, "prompt"),
    (
        "max_tokens not int",
        "/v1/completions",
        {"prompt": "x", "max_tokens": "many"},
        400,
        "max_tokens",
    ),
    ("max_tokens zero", "/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    (
        "temperature too high",
        "/v1/completions",
        {"prompt": "x", "temperature": 9},
        400,
        "temperature",
    ),
    ("empty prompt list", "/v1/completions", {"prompt": []}, 400, "prompt"),
    ("token id out of range", "/v1/completions", {"prompt": [1, 99999]}, 400, "prompt"),
    (
        "max_tokens over limit",
        "/v1/completions",
        {"prompt": "x", "max_tokens": 100000},
        400,
        "max_tokens",
    ),
    ("prompt too long", "/v1/completions", {"prompt": LONG, "max_tokens": 4}, 400, "prompt"),
    ("logprobs", "/v1/completions", {"prompt": "x", "logprobs": 2}, 400, "logprobs"),
    ("no messages", "/v1/chat/completions", {"messages": []}, 400, "messages"),
    (
        "bad role",
        "/v1/chat/completions",
        {"messages": [{"role": "wizard", "content": "x"}]},
        400,
        "messages.0.role",
    ),
    (
        "image part",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        400,
        "messages",
    ),
    (
        "chat too long",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": LONG}]},
        400,
        "messages",
    ),
    (
        "stream too long",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": LONG}], "stream": True},
        400,
        "messages",
    ),
    ("empty embedding", "/v1/embeddings", {"input": ""}, 400, "input"),
    ("embedding too long", "/v1/embeddings", {"input": LONG}, 400, "input"),
    ("wrong model", "/v1/completions", {"model": "gpt-4", "prompt": "x"}, 404, "model"),
    (
        "wrong model, chat",
        "/v1/chat/completions",
        {"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]},
        404,
        "model",
    ),
    ("oversized body", "/v1/completions", {"prompt": "x" * 1_100_000}, 413, None),
]


@pytest.mark.parametrize(("what", "path", "body", "status", "param"), BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_openai_errors(
    http: httpx.Client, what: str, path: str, body: Any, status: int, param: str | None
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = http.post(path, content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param, error
    if "too long" in what:
        assert error["code"] == "context_length_exceeded"
    if status == 404:
        assert error["code"] == "model_not_found"


def test_unknown_routes_and_methods_are_json_errors(http: httpx.Client) -> None:
    r = http.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = http.get("/v1/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_openai_client_raises_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=NAME, prompt=LONG, max_tokens=4)
    assert info.value.code == "context_length_exceeded"


def test_still_serving_after_bad_requests(server: ServerProcess, client: openai.OpenAI) -> None:
    assert server.proc.poll() is None
    out = client.completions.create(model=NAME, prompt="Hello", max_tokens=4, **greedy())
    assert out.usage is not None and out.usage.completion_tokens == 4
    m = server.metrics()
    assert m["engine_errors_total"] == 0  # no generation failed
    assert "Traceback" not in server.logs()
