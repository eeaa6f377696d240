"""The trainer's inputs and params, in process (no torch): dataset files of every kind,
chat rows and which of their tokens are learned, params and their errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.workloads.test_trainer import QA, bad, jsonl, layout, tiny_model
from tests.workloads.tiny import CHAT_TEMPLATE

__all__ = ["tiny_model"]  # a fixture, used by name


def test_dataset_files_of_every_kind(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from substratus.workloads.training.config import TrainError
    from substratus.workloads.training.inputs import read_rows

    data = tmp_path / "data"
    (data / "more").mkdir(parents=True)
    (data / "a.json").write_text(json.dumps([{"text": "one"}, {"text": "two"}]))
    (data / "b.json").write_text(json.dumps({"version": 1, "data": [{"text": "three"}]}))
    (data / "more" / "c.txt").write_text("four\n\nfive\n")
    (data / "d.csv").write_text("text,n\nsix,6\n")
    pq.write_table(pa.table({"text": ["seven", "eight"]}), data / "e.parquet")
    (data / "substratus-manifest.json").write_text("{}")  # not rows
    (data / ".hidden.jsonl").write_text("not json\n")
    texts = [row.values["text"] for row in read_rows(data)]
    assert texts == ["one", "two", "three", "six", "seven", "eight", "four", "five"]
    # What the dataset loader writes wins over anything beside it.
    (data / "data.jsonl").write_text(jsonl([{"text": "only"}]))
    assert [row.values for row in read_rows(data)] == [{"text": "only"}]
    (data / "data.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(TrainError, match=r"data/data\.jsonl line 2: not valid JSON"):
        read_rows(data)


def chat_texts(
    tiny_model: Path, params: dict[str, Any], rows: list[dict[str, Any]], template: str = ""
) -> tuple[Any, Any]:
    from transformers import AutoTokenizer

    from substratus.workloads.contract import Params
    from substratus.workloads.training import inputs, tokens
    from substratus.workloads.training.config import load_config

    config = load_config(Params(params))
    info = inputs.check_model(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    if template:
        tokenizer.chat_template = template
    data = [inputs.Row(f"data.jsonl line {n}", r) for n, r in enumerate(rows, start=1)]
    plan = inputs.plan_texts(data, config, info)
    chat = tokens.chat_renderer(tokenizer, config.assistant_only_loss)
    texts = inputs.render_texts(data, plan, config, chat=chat)
    return tokenizer, (plan, texts)


def learned(tokenizer: Any, row: dict[str, list[int]]) -> str:
    from substratus.workloads.training.tokens import IGNORE

    ids = [i for i, label in zip(row["input_ids"], row["labels"], strict=True) if label != IGNORE]
    assert all(
        label in (IGNORE, i) for i, label in zip(row["input_ids"], row["labels"], strict=True)
    )
    return str(tokenizer.decode(ids))


def test_chat_fields_learn_the_answers_only(tiny_model: Path):
    from substratus.workloads.training.config import TrainError
    from substratus.workloads.training.tokens import IGNORE, PadCollator, encode

    rows = [*QA, {"question": "Unanswered?", "answer": None}]
    tokenizer, (plan, texts) = chat_texts(tiny_model, {"chat_fields": "question,answer"}, rows)
    assert plan.kind == "messages" and "assistant's answers only" in plan.describe
    assert (
        texts.texts[0] == "<|user|>What is the capital of France?<|end|><|assistant|>Paris.<|end|>"
    )
    assert len(texts.texts) == 3  # the row with no answer has nothing to learn
    encoded = encode(tokenizer, texts.texts, 512, True, texts.spans)
    # The answer and its end-of-turn marker, nothing of the question, no appended eos.
    assert learned(tokenizer, encoded.rows[0]) == "Paris.<|end|>"
    assert learned(tokenizer, encoded.rows[2]) == "The quick brown fox.<|end|>"
    assert encoded.rows[0]["input_ids"][-1] != tokenizer.eos_token_id
    assert encoded.learned == sum(
        sum(label != IGNORE for label in r["labels"]) for r in encoded.rows
    )
    # Padding after the shorter row is not learned either.
    first, second = encoded.rows[0], encoded.rows[1]
    batch = PadCollator(tokenizer.pad_token_id)([first, second])
    assert batch["labels"][0].tolist() == first["labels"] + [IGNORE] * (
        len(second["input_ids"]) - len(first["input_ids"])
    )

    # A cut that leaves no answer drops the row; when none is left, the error says why.
    prompts = [
        len(tokenizer(t[:start])["input_ids"])
        for t, [(start, _)] in zip(texts.texts, texts.spans, strict=True)
    ]
    short = encode(tokenizer, texts.texts, max(prompts), True, texts.spans)
    assert short.unlearnable == prompts.count(max(prompts)) < 3
    answers = [r["answer"] for r in QA]
    for r in short.rows:  # the answer's first token is all that is left to learn
        assert sum(label != IGNORE for label in r["labels"]) == 1
        assert any(a.startswith(learned(tokenizer, r)) for a in answers)
    with pytest.raises(TrainError, match="no row has an answer left within max_length"):
        encode(tokenizer, texts.texts, 4, True, texts.spans)

    # assistant_only_loss=false: the whole text is learned, as before.
    tokenizer, (_, whole) = chat_texts(
        tiny_model, {"chat_fields": "question,answer", "assistant_only_loss": False}, QA
    )
    assert whole.spans == [None, None, None]
    assert all(
        "labels" not in r for r in encode(tokenizer, whole.texts, 512, True, whole.spans).rows
    )


def test_chat_rows_learn_every_assistant_turn(tiny_model: Path):
    from substratus.workloads.training.tokens import encode

    talk = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hello world!"},
        {"role": "user", "content": "How are you today?"},
        {"role": "assistant", "content": "I am fine, thank you."},
    ]
    tokenizer, (plan, texts) = chat_texts(tiny_model, {}, [{"messages": talk}])
    assert "the rows' messages" in plan.describe
    row = encode(tokenizer, texts.texts, 512, True, texts.spans).rows[0]
    assert learned(tokenizer, row) == "Hello world!<|end|>I am fine, thank you.<|end|>"
    # A template that renders a conversation's start differently on its own (here: it counts
    # the messages) gives no turn boundaries to trust: the text is learned whole.
    counting = "{{ messages|length }}" + CHAT_TEMPLATE
    tokenizer, (_, texts) = chat_texts(tiny_model, {}, [{"messages": talk}], counting)
    assert texts.spans == [None] and texts.texts[0].startswith("4<|user|>Hello")
    encoded = encode(tokenizer, texts.texts, 512, True, texts.spans)
    assert encoded.learned is None and "labels" not in encoded.rows[0]


def test_chat_fields_params_and_rows(tmp_path: Path, tiny_model: Path):
    from substratus.workloads.contract import ParamError, Params
    from substratus.workloads.training.config import TrainError, load_config

    config = load_config(Params({"chat_fields": "question, answer"}))
    assert config.chat_fields == ("question", "answer") and config.assistant_only_loss
    assert config.public()["chat_fields"] == "question,answer"
    assert config.fingerprint()["assistant_only_loss"] is True
    for params, message in (
        ({"chat_fields": "question"}, r"params\.chat_fields: 'question' must name two fields"),
        ({"chat_fields": "a,a"}, r"params\.chat_fields: 'a,a' must name two fields"),
        (
            {"chat_fields": "q,a", "prompt_template": "{q}"},
            r"params\.prompt_template and params\.chat_fields: set only one of them",
        ),
        (
            {"chat_fields": "q,a", "text_field": "q"},
            r"params\.text_field and params\.chat_fields: set only one",
        ),
        (
            {"assistant_only_loss": "maybe"},
            r"params\.assistant_only_loss: 'maybe' is not a boolean",
        ),
    ):
        with pytest.raises(ParamError, match=message):
            load_config(Params(params))
    with pytest.raises(
        TrainError, match=r"data.jsonl line 1: no field 'answr' \(params\.chat_fields\)"
    ):
        chat_texts(tiny_model, {"chat_fields": "question,answr"}, QA)
    # Through the trainer: a base model without a chat template is refused before training.
    plain = tmp_path / "plain"
    shutil.copytree(tiny_model, plain)
    config_file = plain / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text())
    tokenizer_config.pop("chat_template", None)
    config_file.write_text(json.dumps(tokenizer_config))
    for extra in plain.glob("chat_template.*"):
        extra.unlink()
    root = layout(
        tmp_path / "run", plain, {"chat_fields": "question,answer"}, {"data.jsonl": jsonl(QA)}
    )
    bad(root, "fields 'question' (user) and 'answer' (assistant) needs a chat template")


def test_params_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from substratus.workloads.contract import ParamError, Params
    from substratus.workloads.training.config import load_config

    monkeypatch.setenv("PARAM_METHOD", "full")
    monkeypatch.setenv("PARAM_MERGE", "false")
    monkeypatch.setenv("PARAM_TARGET_MODULES", "q_proj, v_proj")
    config = load_config(Params.load(tmp_path))
    assert (config.method, config.learning_rate, config.merge) == ("full", 2e-5, False)
    assert config.target_modules == ("q_proj", "v_proj")
    assert (config.epochs, config.batch_size, config.max_length, config.lora_r) == (1, 4, 512, 8)
    monkeypatch.setenv("PARAM_BATCH_SIZE", "0")
    with pytest.raises(ParamError, match=r"params\.batch_size: 0 must be greater than zero"):
        load_config(Params.load(tmp_path))
    monkeypatch.delenv("PARAM_BATCH_SIZE")
    monkeypatch.setenv("PARAM_PROMPT_TEMPLATE", "Q: {} A: {answer}")
    with pytest.raises(ParamError, match=r"params\.prompt_template: use named fields"):
        load_config(Params.load(tmp_path))
