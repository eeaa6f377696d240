"""The training run: tokenize, load the base model (LoRA, QLoRA or full), run the transformers
Trainer with checkpoints and readable progress lines. Heavy imports stay inside functions."""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from substratus.workloads.contract import artifacts_dir, report_progress
from substratus.workloads.training.config import TrainConfig, TrainError
from substratus.workloads.training.inputs import ModelInfo
from substratus.workloads.training.tokens import Encoded, PadCollator


def say(message: str) -> None:
    print(message, flush=True)


@dataclass
class Device:
    kind: str  # "cuda" or "cpu"
    name: str
    bf16: bool = False
    fp16: bool = False

    @property
    def cuda(self) -> bool:
        return self.kind == "cuda"


def detect_device() -> Device:
    import torch

    if torch.cuda.is_available():
        bf16 = bool(torch.cuda.is_bf16_supported())
        count = torch.cuda.device_count()
        name = f"{count} x {torch.cuda.get_device_name(0)}"
        return Device("cuda", name, bf16=bf16, fp16=not bf16)
    if "OMP_NUM_THREADS" not in os.environ:
        # torch sizes its pool by the host's cores; a pod's CPU limit may be far fewer, and
        # more threads than cores makes every step wait on descheduled threads.
        torch.set_num_threads(cpu_threads())
    threads = torch.get_num_threads()
    return Device("cpu", f"cpu ({threads} thread{'' if threads == 1 else 's'})")


def cpu_threads() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota."""
    count = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return count


def check_qlora() -> None:
    """QLoRA needs a CUDA GPU and bitsandbytes: say which is missing."""
    import importlib.util

    import torch

    missing = []
    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a CPU-only build")
        missing.append(f"a CUDA GPU (none is available to {build})")
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("the bitsandbytes package (not installed: pip install bitsandbytes)")
    if missing:
        raise TrainError(
            f"params.method=qlora needs {' and '.join(missing)}; use method=lora to train "
            "without 4-bit quantization"
        )


# ---------------------------------------------------------------------------------------------
# Model


def torch_dtype(name: str | None) -> Any:
    import torch

    value = getattr(torch, name, None) if name else None
    return value if isinstance(value, torch.dtype) and value.is_floating_point else None


def load_model(info: ModelInfo, config: TrainConfig, device: Device) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {}
    half = torch.bfloat16 if device.bf16 else torch.float16
    if config.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=half,
        )
        kwargs["dtype"] = half
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    elif config.method == "lora" and device.cuda:
        # The base is frozen: half precision weights, adapters in float32 (PEFT's default).
        kwargs["dtype"] = half
        kwargs["device_map"] = "auto" if torch.cuda.device_count() > 1 else None
    else:
        # Full fine-tuning keeps float32 master weights (mixed precision on a GPU); CPUs too.
        kwargs["dtype"] = torch.float32
    started = time.monotonic()
    try:
        model = AutoModelForCausalLM.from_pretrained(info.path, **kwargs)
    except Exception as exc:
        raise TrainError(f"model/: transformers could not load the model ({exc})") from None
    params = sum(p.numel() for p in model.parameters())
    say(
        f"model: {info.model_type}, {params / 1e6:.1f}M parameters, loaded in "
        f"{time.monotonic() - started:.1f}s ({str(kwargs['dtype']).removeprefix('torch.')}"
        f"{', 4-bit nf4' if config.method == 'qlora' else ''})"
    )
    model.config.use_cache = False
    if config.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
            model, use_gradient_checkpointing=config.gradient_checkpointing
        )
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable()  # type: ignore[no-untyped-call]
        if config.uses_lora:
            model.enable_input_require_grads()  # type: ignore[no-untyped-call]
    if config.uses_lora:
        model = add_lora(model, info, config)
    return model


def linear_names(model: Any) -> list[str]:
    import torch

    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) or type(module).__name__.startswith("Linear")
    }
    return sorted(names)


def add_lora(model: Any, info: ModelInfo, config: TrainConfig) -> Any:
    from peft import LoraConfig, get_peft_model
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as KNOWN

    targets: list[str] | str | None = list(config.target_modules) or None
    if targets == ["all-linear"]:
        targets = "all-linear"  # PEFT's word for every linear layer but the output head
    if targets is None and info.model_type not in KNOWN:
        targets = "all-linear"  # PEFT has no default for this architecture
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, lora)
    except ValueError as exc:
        raise TrainError(
            f"params.target_modules: {exc}; the model's linear layers are: "
            f"{', '.join(linear_names(model))}"
        ) from None
    trainable, total = model.get_nb_trainable_parameters()
    chosen = model.peft_config["default"].target_modules
    shown = ", ".join(sorted(chosen)) if isinstance(chosen, set | list) else str(chosen)
    say(
        f"lora: r={config.lora_r} alpha={config.lora_alpha} dropout={config.lora_dropout} on "
        f"{shown}: {trainable / 1e6:.2f}M trainable of {total / 1e6:.1f}M parameters "
        f"({100 * trainable / total:.2f}%)"
    )
    return model


# ---------------------------------------------------------------------------------------------
# Trainer


@dataclass
class Outcome:
    trainer: Any
    model: Any
    stopped_by_signal: bool
    resumed_from: int | None
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def planned_steps(config: TrainConfig, rows: int) -> int:
    if config.max_steps > 0:
        return config.max_steps
    per_epoch = max(
        1, math.ceil(math.ceil(rows / config.batch_size) / config.gradient_accumulation_steps)
    )
    return max(1, math.ceil(config.epochs * per_epoch))


def _thin(values: list[float], most: int) -> list[float]:
    """At most ``most`` values spread over the whole run, the last one included."""
    if len(values) <= most:
        return list(values)
    step = len(values) / most
    return [values[int(i * step)] for i in range(most - 1)] + [values[-1]]


def _callback(stop: dict[str, bool]) -> Any:
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """One line per logged step, one per checkpoint; a SIGTERM checkpoints and stops."""

        started = 0.0
        first_step = 0
        losses: list[float]

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.started, self.first_step = time.monotonic(), state.global_step
            self.losses = []

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if not logs or "loss" not in logs:
                return
            done = state.global_step - self.first_step
            elapsed = time.monotonic() - self.started
            rate = done / elapsed if elapsed > 0 else 0.0
            eta = (state.max_steps - state.global_step) / rate if rate > 0 else 0.0
            say(
                f"step {state.global_step}/{state.max_steps} epoch {logs.get('epoch', 0):.2f} "
                f"loss {logs['loss']:.4f} lr {logs.get('learning_rate', 0):.2e} "
                f"({rate:.2f} steps/s, eta {eta:.0f}s)"
            )
            metrics = {k: float(logs[k]) for k in ("loss", "learning_rate", "epoch") if k in logs}
            self.losses.append(round(float(logs["loss"]), 5))
            report_progress(
                state.global_step, state.max_steps, eta_seconds=eta, metrics=metrics,
                message="training", history=_thin(self.losses, 120),
            )  # fmt: skip

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            say(f"checkpoint saved: checkpoints/checkpoint-{state.global_step}")

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            if stop["requested"]:
                control.should_save = True
                control.should_training_stop = True
            return control

    return Progress()


def train(
    model: Any,
    tokenizer: Any,
    encoded: Encoded,
    config: TrainConfig,
    device: Device,
    checkpoint_dir: Path,
    resume: tuple[Path, int] | None,
) -> Outcome:
    from transformers import PrinterCallback, Trainer, TrainerState, TrainingArguments

    total = planned_steps(config, len(encoded.rows))
    logging_steps = config.logging_steps or max(1, math.ceil(total / 100))
    args = TrainingArguments(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        logging_steps=logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        report_to=list(config.report_to) or "none",
        disable_tqdm=True,
        log_level="warning",
        seed=config.seed,
        bf16=device.bf16,
        fp16=device.fp16,
        use_cpu=not device.cuda,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        optim="paged_adamw_8bit" if config.method == "qlora" else "adamw_torch",
    )
    if "tensorboard" in config.report_to:
        # Into the artifacts, so the run's curves are kept with its model (tensorboard --logdir).
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(artifacts_dir() / "tensorboard"))
    stop = {"requested": False}

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        say("SIGTERM: saving a checkpoint at the end of this step, then stopping")
        stop["requested"] = True

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=encoded.rows,
        data_collator=PadCollator(tokenizer.pad_token_id, 8 if device.cuda else 1),
        processing_class=tokenizer,
        callbacks=[_callback(stop)],
    )
    trainer.remove_callback(PrinterCallback)
    if resume is not None:
        say(f"resuming from checkpoints/{resume[0].name} (step {resume[1]} of {total})")
    say(
        f"training: {len(encoded.rows)} rows, {total} steps (batch {config.batch_size} x "
        f"{config.gradient_accumulation_steps} accumulation, epochs {config.epochs:g}), lr "
        f"{config.learning_rate:g}, logging every {logging_steps}, checkpoint every "
        f"{config.save_steps} steps, on {device.name}"
    )
    metrics: dict[str, Any] = {}
    try:
        if resume is not None and resume[1] >= total:
            # The Trainer would run one step past max_steps: take the weights as they are.
            say(f"checkpoints/{resume[0].name} holds all {total} steps: saving the model from it")
            trainer._load_from_checkpoint(str(resume[0]))
            trainer.state = TrainerState.load_from_json(str(resume[0] / "trainer_state.json"))
        else:
            result = trainer.train(resume_from_checkpoint=str(resume[0]) if resume else None)
            metrics = dict(result.metrics)
    finally:
        signal.signal(signal.SIGTERM, previous)
    outcome = Outcome(trainer, trainer.model, stop["requested"], resume[1] if resume else None)
    for entry in trainer.state.log_history:
        if "loss" in entry:
            outcome.history.append(
                {
                    "step": entry.get("step"),
                    "epoch": entry.get("epoch"),
                    "loss": entry.get("loss"),
                    "learning_rate": entry.get("learning_rate"),
                }
            )
    # The Trainer's own speeds count resumed steps as if run now: measure this session's.
    runtime = float(metrics.get("train_runtime") or 0.0)
    steps = trainer.state.global_step - (outcome.resumed_from or 0)
    samples = steps * config.batch_size * config.gradient_accumulation_steps
    outcome.summary = {
        "train_runtime": round(runtime, 3),
        "steps_this_run": steps,
        "train_steps_per_second": round(steps / runtime, 3) if runtime > 0 else None,
        "train_samples_per_second": round(samples / runtime, 3) if runtime > 0 else None,
        "train_loss": metrics.get("train_loss"),
        "final_loss": outcome.history[-1]["loss"] if outcome.history else None,
        "global_step": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "epoch": trainer.state.epoch,
        "resumed_from_step": outcome.resumed_from,
    }
    return outcome
