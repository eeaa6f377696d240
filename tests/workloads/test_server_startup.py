"""The model server's startup: settings it cannot honour end the process with a clear
error and a non-zero exit (no traceback); quantization bits 8 on CPU serves for real."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.workloads.test_server import NAME, ServerProcess, contract_dir
from tests.workloads.tiny import make_tiny_llama

pytestmark = pytest.mark.integration


def fake_hf_model(path: Path) -> Path:
    """config.json + weights file names: enough for the checks made before loading."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (path / "model.safetensors").write_bytes(b"")
    return path


def fake_gguf_model(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    return path


@dataclass
class Case:
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    server: ServerProcess | None = None


def make_cases(base: Path) -> dict[str, Case]:
    hf = fake_hf_model(base / "hf")
    gguf = fake_gguf_model(base / "gguf")
    empty = base / "empty"
    empty.mkdir()
    broken = base / "broken"  # found only when transformers reads it
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    (broken / "model.safetensors").write_bytes(b"junk, not safetensors")

    def case(
        name: str, model: Path | None, params: dict[str, Any] | None = None, **env: str
    ) -> Case:
        return Case(contract_dir(base / name, model, params), env)

    return {
        "no model": case("none", None),
        "empty model dir": case("empty", empty),
        "gguf to transformers": case("gguf-tf", gguf, {"engine": "transformers"}),
        "gguf, auto, no llama.cpp": case("gguf-auto", gguf),
        "bits 4 on cpu": case("bits4", hf, QUANTIZATION_BITS="4"),
        "bits 3": case("bits3", hf, QUANTIZATION_BITS="3"),
        "unknown engine": case("engine", hf, {"engine": "tensorrt"}),
        "negative batch": case("batch", hf, {"max_batch_size": -1}),
        "llamacpp without gguf": case("llamacpp", hf, {"engine": "llamacpp"}),
        "a model that cannot load": case("broken", broken),
        "bits 8 on cpu": case("bits8", make_tiny_llama(base / "tiny"), QUANTIZATION_BITS="8"),
        "a short api key": case("keys", hf, API_KEYS="0123456789abcdef-ok, short"),
    }


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Case]]:
    """Every case's server started at once (each start is mostly one busy core)."""
    started = make_cases(tmp_path_factory.mktemp("startup"))
    for case in started.values():
        case.server = ServerProcess(case.root, case.env)
    try:
        yield started
    finally:
        for case in started.values():
            assert case.server is not None
            case.server.stop()


def failed(cases: dict[str, Case], name: str) -> str:
    server = cases[name].server
    assert server is not None
    code = server.wait_exit(timeout=120)
    logs = server.logs()
    assert code != 0, logs
    assert "Traceback" not in logs, logs
    return logs


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no model", "error: no model: "),
        ("empty model dir", "error: no model in"),
        ("gguf to transformers", "cannot serve a GGUF file (SmolLM2-135M-Instruct.Q4_1.gguf)"),
        ("bits 3", "spec.quantization.bits: '3' is not supported"),
        ("unknown engine", "params.engine: 'tensorrt' is not one of"),
        ("negative batch", "params.max_batch_size: must be at least 1"),
        ("llamacpp without gguf", "params.engine=llamacpp needs a .gguf file"),
        ("a model that cannot load", "error: cannot read the model in"),
        ("a short api key", "API_KEYS: key 2 has 5 characters; an API key needs at least 16"),
    ],
)
def test_clear_startup_errors(cases: dict[str, Case], name: str, message: str) -> None:
    assert message in failed(cases, name)


def test_gguf_errors_say_what_to_do(cases: dict[str, Case]) -> None:
    logs = failed(cases, "gguf to transformers")
    assert "convert=safetensors" in logs and "llama-cpp-python" in logs
    logs = failed(cases, "gguf, auto, no llama.cpp")
    if importlib.util.find_spec("llama_cpp") is None:
        assert "llama-cpp-python is not installed" in logs and "convert=safetensors" in logs
    else:  # auto picks llama.cpp, which refuses the truncated file with the error named
        assert "llama.cpp could not load" in logs and "SmolLM2-135M-Instruct.Q4_1.gguf" in logs


def test_quantization_bits_4_on_cpu(cases: dict[str, Case]) -> None:
    if any(Path("/dev").glob("nvidia[0-9]*")):
        pytest.skip("a GPU is present: bits 4 goes to bitsandbytes there")
    logs = failed(cases, "bits 4 on cpu")
    assert "spec.quantization.bits=4 is not supported by the transformers engine on CPU" in logs


def test_a_model_that_fails_to_load_is_503_then_exits(cases: dict[str, Case]) -> None:
    """Found only while loading, in the background: the probe sees 503, then the exit."""
    server = cases["a model that cannot load"].server
    assert server is not None
    assert "no-such-architecture" in failed(cases, "a model that cannot load")
    assert server.proc.returncode == 1


def test_quantization_bits_8_on_cpu_serves(cases: dict[str, Case]) -> None:
    server = cases["bits 8 on cpu"].server
    assert server is not None
    server.wait_ready()
    logs = server.logs()
    assert "quantized 15 Linear layers to int8" in logs  # 2 x 7 in the layers + lm_head
    assert "dynamic-int8" in logs
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    out = client.completions.create(
        model=NAME, prompt="Hello", max_tokens=6, temperature=0, extra_body={"ignore_eos": True}
    )
    assert out.usage is not None and out.usage.completion_tokens == 6
    r = httpx.post(server.url + "/v1/embeddings", json={"input": "hello"}, timeout=30)
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 64
