"""The trainer's params, read and checked before anything heavy is imported."""

from __future__ import annotations

import string
from dataclasses import asdict, dataclass
from typing import Any

from substratus.workloads.contract import ParamError, Params

METHODS = ("lora", "full", "qlora")

# transformers.TrainingArguments names, as the original project's trainer took them (its
# examples set num_train_epochs and save_steps), for the params they mean here. Names that
# are the same on both sides (learning_rate, max_steps, save_steps, ...) need no entry.
TRAINING_ARGUMENT_ALIASES = {
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
}
# TrainingArguments that change the result and that this trainer does not take: refused,
# since silently training otherwise than asked is worse than failing.
UNSUPPORTED_TRAINING_ARGUMENTS = (
    "lr_scheduler_type",
    "weight_decay",
    "warmup_ratio",
    "optim",
    "max_grad_norm",
    "fp16",
    "bf16",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "label_smoothing_factor",
    "group_by_length",
)
DEFAULT_LEARNING_RATE = {"lora": 2e-4, "qlora": 2e-4, "full": 2e-5}


class TrainError(Exception):
    """A user-facing failure: the message names the file or param and the reason."""


@dataclass(frozen=True)
class TrainConfig:
    method: str = "lora"
    epochs: float = 1.0
    learning_rate: float = 2e-4
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_steps: int = -1
    max_length: int = 512
    text_field: str = "text"
    text_field_set: bool = False
    prompt_template: str | None = None
    # Two fields of each row, rendered as a user message and the assistant's answer.
    chat_fields: tuple[str, ...] = ()
    assistant_only_loss: bool = True
    target_modules: tuple[str, ...] = ()
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    merge: bool = True
    save_steps: int = 100
    keep_checkpoints: bool = False
    seed: int = 42
    logging_steps: int = 0  # 0: chosen from the number of steps
    warmup_steps: int = 0
    gradient_checkpointing: bool = False
    # transformers' integrations to log to as well: tensorboard (into artifacts/tensorboard),
    # mlflow, wandb (configured by their own environment: MLFLOW_TRACKING_URI, WANDB_API_KEY).
    report_to: tuple[str, ...] = ()

    @property
    def uses_lora(self) -> bool:
        return self.method in ("lora", "qlora")

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint depends on: a retry with other values must not resume from it.

        Lengths (epochs, max_steps), save cadence and output choices are left out: changing
        them does not make a checkpoint's weights or optimizer state wrong.
        """
        keep = {
            "method",
            "learning_rate",
            "batch_size",
            "gradient_accumulation_steps",
            "max_length",
            "text_field",
            "prompt_template",
            "chat_fields",
            "assistant_only_loss",
            "target_modules",
            "lora_r",
            "lora_alpha",
            "lora_dropout",
            "seed",
            "warmup_steps",
        }
        values = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items() if k in keep}

    def public(self) -> dict[str, Any]:
        values = asdict(self)
        values.pop("text_field_set")
        values["target_modules"] = ",".join(self.target_modules) or None
        values["chat_fields"] = ",".join(self.chat_fields) or None
        return values


def _positive(name: str, value: int | float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "greater than zero"
        raise ParamError(f"params.{name}: {value!r} must be {bound}")


def check_template(template: str) -> list[str]:
    """The field names a prompt template uses; a malformed template is a ParamError."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ParamError(
            f"params.prompt_template: not a valid format string ({exc}): {template!r}"
        ) from None
    fields: list[str] = []
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if name == "" or name.isdigit():
            raise ParamError(
                "params.prompt_template: use named fields such as {question}, not '{}' or "
                f"positional ones: {template!r} (write '{{{{' and '}}}}' for literal braces)"
            )
        root = name.split(".", 1)[0].split("[", 1)[0]
        if root not in fields:
            fields.append(root)
    if not fields:
        raise ParamError(
            f"params.prompt_template: names no field of the rows (e.g. {{question}}): {template!r}"
        )
    return fields


def _resolve_aliases(params: Params) -> Params:
    """Params with TrainingArguments names turned into ours; refuses what it cannot honour."""
    for name in UNSUPPORTED_TRAINING_ARGUMENTS:
        if name in params.values:
            raise ParamError(
                f"params.{name}: a transformers TrainingArguments field this trainer does not "
                "take; it sets epochs (num_train_epochs), learning_rate, batch_size "
                "(per_device_train_batch_size), gradient_accumulation_steps, max_steps, "
                "warmup_steps, save_steps, logging_steps, seed and gradient_checkpointing"
            )
    values = dict(params.values)
    for alias, name in TRAINING_ARGUMENT_ALIASES.items():
        if alias not in values:
            continue
        value = values.pop(alias)
        if name in values and str(values[name]) != str(value):
            raise ParamError(
                f"params.{alias} and params.{name}: the same setting with different values "
                f"({value!r} and {values[name]!r}); set one of them"
            )
        values[name] = value
    return Params(values)


# What each integration needs importable, and where it comes from.
REPORTERS = {
    "tensorboard": ("tensorboard", "the train extra (pip install tensorboard)"),
    "mlflow": ("mlflow", "pip install mlflow"),
    "wandb": ("wandb", "pip install wandb"),
}


def _report_to(params: Params) -> tuple[str, ...]:
    import importlib.util

    names = tuple(n.strip().lower() for n in params.items("report_to") if n.strip())
    if names in ((), ("none",)):
        return ()
    for name in names:
        if name not in REPORTERS:
            raise ParamError(
                f"params.report_to: {name!r} is not one of none, {', '.join(REPORTERS)}"
            )
        module, where = REPORTERS[name]
        if importlib.util.find_spec(module) is None:
            raise ParamError(
                f"params.report_to: {name} needs the {module} package, which this image "
                f"does not have ({where})"
            )
    return names


def load_config(params: Params) -> TrainConfig:
    params = _resolve_aliases(params)
    method = (params.text("method", "lora") or "lora").strip().lower()
    if method not in METHODS:
        raise ParamError(f"params.method: {method!r} is not one of {', '.join(METHODS)}")
    learning_rate = params.number("learning_rate", DEFAULT_LEARNING_RATE[method])
    text_field = params.text("text_field")
    template = params.text("prompt_template") or None
    if template is not None:
        check_template(template)
    chat_fields = tuple(params.items("chat_fields"))
    chosen = [
        name
        for name, value in (
            ("text_field", text_field),
            ("prompt_template", template),
            ("chat_fields", chat_fields),
        )
        if value
    ]
    if len(chosen) > 1:
        raise ParamError(f"params.{' and params.'.join(chosen)}: set only one of them")
    if chat_fields and (len(chat_fields) != 2 or chat_fields[0] == chat_fields[1]):
        raise ParamError(
            f"params.chat_fields: {params.text('chat_fields')!r} must name two fields, the "
            "user's message and the assistant's answer (e.g. 'question,answer')"
        )
    config = TrainConfig(
        method=method,
        epochs=params.number("epochs", 1.0),
        learning_rate=learning_rate,
        batch_size=params.integer("batch_size", 4),
        gradient_accumulation_steps=params.integer("gradient_accumulation_steps", 1),
        max_steps=params.integer("max_steps", -1),
        max_length=params.integer("max_length", 512),
        text_field=text_field or "text",
        text_field_set=bool(text_field),
        prompt_template=template,
        chat_fields=chat_fields,
        assistant_only_loss=params.flag("assistant_only_loss", True),
        target_modules=tuple(params.items("target_modules")),
        lora_r=params.integer("lora_r", 8),
        lora_alpha=params.integer("lora_alpha", 16),
        lora_dropout=params.number("lora_dropout", 0.05),
        merge=params.flag("merge", True),
        save_steps=params.integer("save_steps", 100),
        keep_checkpoints=params.flag("keep_checkpoints", False),
        seed=params.integer("seed", 42),
        logging_steps=params.integer("logging_steps", 0),
        warmup_steps=params.integer("warmup_steps", 0),
        gradient_checkpointing=params.flag("gradient_checkpointing", method == "qlora"),
        report_to=_report_to(params),
    )
    _positive("learning_rate", config.learning_rate)
    _positive("batch_size", config.batch_size)
    _positive("gradient_accumulation_steps", config.gradient_accumulation_steps)
    _positive("save_steps", config.save_steps)
    _positive("lora_r", config.lora_r)
    _positive("lora_alpha", config.lora_alpha)
    _positive("logging_steps", config.logging_steps, allow_zero=True)
    _positive("warmup_steps", config.warmup_steps, allow_zero=True)
    if config.max_length < 2:
        raise ParamError(f"params.max_length: {config.max_length} must be at least 2 tokens")
    if not 0 <= config.lora_dropout < 1:
        raise ParamError(f"params.lora_dropout: {config.lora_dropout} must be in [0, 1)")
    if config.max_steps == 0 or config.max_steps < -1:
        raise ParamError(
            f"params.max_steps: {config.max_steps} must be greater than zero, or -1 for epochs"
        )
    if config.max_steps == -1:
        _positive("epochs", config.epochs)
    return config
