"""The fine-tuning trainer (image ``substratusai/model-trainer-huggingface``).

``python -m substratus.workloads.trainer`` in the run's directory fine-tunes the base model in
``model/`` (a transformers model directory with its tokenizer) on the dataset in ``data/``
(``data.jsonl``/``data.parquet`` as the dataset loader writes them, or any .jsonl, .json, .csv,
.parquet or .txt files) with transformers + PEFT, and writes to ``artifacts/``:

- the model: with LoRA/QLoRA and ``merge=true`` (default) the adapter merged into the base, a
  full model that ``AutoModelForCausalLM.from_pretrained`` loads; with ``merge=false`` the
  adapter alone (adapter_config.json, adapter_model.safetensors) and ``base_model.json``, a
  note of the base; with ``method=full`` the fine-tuned model. The tokenizer beside it.
- ``metrics.json`` (``history``: [{step, epoch, loss, learning_rate}], ``summary``: runtime,
  steps and samples per second, final loss, ...) and ``loss.png``.
- ``checkpoints/`` while training (every ``save_steps``); a retry resumes from the latest and
  it is removed once the model is saved, unless ``keep_checkpoints=true``. SIGTERM (a
  preempted node) saves a checkpoint and exits 143.

Params (all optional): method (lora | full | qlora; lora), epochs (1), learning_rate (2e-4 for
lora/qlora, 2e-5 for full), batch_size (4), gradient_accumulation_steps (1), max_steps (-1: by
epochs), max_length (512 tokens; longer texts are cut), text_field ("text") or
prompt_template (a format string over each row's fields, "### Q: {question}\\n### A: {answer}")
or chat_fields (two fields, "question,answer": a user message and the assistant's answer through
the tokenizer's chat template, as rows with ``messages`` go; the format a chat server is asked
in), assistant_only_loss (true: chat rows learn the assistant's turns only), target_modules (comma
separated, or all-linear; default PEFT's choice for the architecture, else all-linear), lora_r (8),
lora_alpha (16), lora_dropout (0.05), merge (true), save_steps (100), keep_checkpoints
(false), seed (42), logging_steps (about 100 lines per run), warmup_steps (0),
gradient_checkpointing (true for qlora, else false).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
import warnings
from typing import TYPE_CHECKING

from substratus.workloads.contract import (
    ParamError,
    Params,
    artifacts_dir,
    data_dir,
    fail,
    model_dir,
)
from substratus.workloads.training.config import TrainError, load_config
from substratus.workloads.training.inputs import (
    check_architecture,
    check_model,
    plan_texts,
    read_rows,
    render_texts,
)

if TYPE_CHECKING:
    from substratus.workloads.training.inputs import Spans
    from substratus.workloads.training.tokens import Encoded


def say(message: str) -> None:
    print(message, flush=True)


def quiet_environment() -> None:
    """Log-friendly output: no progress bars or terminal control codes; never the hub."""
    for name, value in {
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "TQDM_DISABLE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        "MPLBACKEND": "Agg",
    }.items():
        os.environ.setdefault(name, value)
    # Deprecation notices from inside transformers/peft say nothing a user can act on.
    warnings.filterwarnings("ignore", category=FutureWarning)


def run() -> int:
    started = time.monotonic()
    quiet_environment()
    config = load_config(Params.load())
    # Everything up to artifacts_dir() only reads: bad input fails before anything is written.
    if config.method == "qlora":
        from substratus.workloads.training.loop import check_qlora

        check_qlora()
    info = check_model(model_dir())
    rows = read_rows(data_dir())
    plan = plan_texts(rows, config, info)
    texts = render_texts(rows, plan, config) if plan.kind != "messages" else None
    check_architecture(info)
    say(f"data: {len(rows)} rows; training text from {plan.describe}")

    import transformers

    from substratus.workloads.training import checkpoints, loop, outputs, tokens

    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    tokenizer = tokens.load_tokenizer(info)
    if texts is None:
        chat = tokens.chat_renderer(tokenizer, config.assistant_only_loss)
        texts = render_texts(rows, plan, config, chat=chat)
    encoded = tokens.encode(
        tokenizer, texts.texts, config.max_length, plan.kind == "messages", texts.spans
    )
    lengths = [len(r["input_ids"]) for r in encoded.rows]
    mean = encoded.tokens / len(lengths)
    say(
        f"tokens: {encoded.tokens} in {len(encoded.rows)} texts (mean {mean:.0f}, max "
        f"{max(lengths)}); {encoded.truncated} cut at max_length={config.max_length}"
    )
    if texts.spans is not None and config.assistant_only_loss:
        say(_loss_note(encoded, texts.spans, tokenizer.is_fast))
    device = loop.detect_device()
    transformers.set_seed(config.seed)

    artifacts = artifacts_dir()
    outputs.clean_outputs(artifacts)
    fingerprint = {
        **config.fingerprint(),
        "model": outputs.model_identity(info),
        "texts_sha256": _texts_digest(texts.texts),
    }
    checkpoint_dir = artifacts / outputs.CHECKPOINTS
    resume = checkpoints.prepare(checkpoint_dir, fingerprint)
    try:
        model = loop.load_model(info, config, device)
        outcome = loop.train(
            model,
            tokenizer,
            encoded,
            config,
            device,
            checkpoint_dir,
            (resume.path, resume.step) if resume else None,
        )
        del model
    except BaseException:
        if not checkpoints.checkpoints(checkpoint_dir):
            shutil.rmtree(checkpoint_dir, ignore_errors=True)  # nothing to resume from
        raise
    step = outcome.summary["global_step"]
    if outcome.stopped_by_signal:
        say(
            f"stopped by SIGTERM at step {step}; a retry resumes from checkpoints/checkpoint-{step}"
        )
        return 143
    summary = outcome.summary
    if summary["steps_this_run"]:
        say(
            f"trained: {summary['steps_this_run']} steps in {summary['train_runtime']:.1f}s "
            f"({summary['train_steps_per_second']} steps/s, {summary['train_samples_per_second']} "
            f"samples/s); final loss {summary['final_loss']}"
        )
    outputs.write_metrics(
        artifacts,
        outcome,
        {
            "params": config.public(),
            "data": {
                "rows": len(rows),
                "texts": len(encoded.rows),
                "tokens": encoded.tokens,
                "truncated": encoded.truncated,
                "learned_tokens": encoded.learned,
                "text_from": plan.describe,
            },
            "model": {"model_type": info.model_type, "device": device.name},
        },
    )
    outputs.plot_loss(artifacts, outcome, f"{config.method} fine-tuning of {info.model_type}")
    what = outputs.save_model(outcome, tokenizer, info, config, device, artifacts)
    if not config.keep_checkpoints:
        shutil.rmtree(artifacts / outputs.CHECKPOINTS, ignore_errors=True)
    size = sum(p.stat().st_size for p in artifacts.rglob("*") if p.is_file())
    names = sorted(p.name for p in artifacts.iterdir())
    say(
        f"saved {what} to artifacts/ ({size / 1e6:.1f} MB: {', '.join(names)}) in "
        f"{time.monotonic() - started:.0f}s"
    )
    return 0


def _loss_note(encoded: Encoded, spans: list[Spans | None], fast: bool) -> str:
    if encoded.learned is None:
        why = (
            "the chat template renders a conversation's start differently on its own"
            if fast
            else "the tokenizer is not a fast one, so token offsets are unknown"
        )
        return f"loss: on whole texts ({why})"
    whole = sum(s is None for s in spans)
    note = f"loss: on {encoded.learned} tokens of the assistant's answers"
    if whole:
        note += f"; {whole} texts learned whole (their chat template is not prefix-stable)"
    if encoded.unlearnable:
        note += f"; {encoded.unlearnable} texts dropped: no answer left within max_length"
    return note


def _texts_digest(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()


def main() -> int:
    try:
        return run()
    except (ParamError, TrainError) as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return fail("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
