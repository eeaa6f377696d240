"""The trainer's inputs, checked before any weights are loaded: the base model directory and
the dataset rows, rendered to training texts.

Everything here is cheap (no torch): bad input fails in well under a second, before anything
is written to artifacts/.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from substratus.workloads.training.config import TrainConfig, TrainError

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")
# What the dataset loader writes; when present, only these are read.
LOADER_FILES = ("data.jsonl", "data.parquet")
# Files beside the data that are not rows.
METADATA_FILES = {"substratus-manifest.json", "dataset_info.json", "state.json", "params.json"}
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    model_type: str
    config: dict[str, Any]
    has_chat_template: bool

    @property
    def dtype(self) -> str | None:
        value = self.config.get("torch_dtype") or self.config.get("dtype")
        return str(value) if value else None


def _listing(path: Path, limit: int = 8) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    more = f", … ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more if names else "nothing"


def check_model(path: Path) -> ModelInfo:
    """The base model directory, or a TrainError saying what is wrong with it (files only;
    ``check_architecture`` asks transformers about the model type)."""
    label = "model/"
    if not path.is_dir():
        raise TrainError(
            f"{label}: no base model is mounted ({path} does not exist); the Model needs "
            "spec.baseModel naming a Ready Model"
        )
    if not any(path.iterdir()):
        raise TrainError(f"{label}: the base model directory {path} is empty")
    ggufs = sorted(p.name for p in path.rglob("*.gguf"))
    convert = (
        "the trainer needs a transformers model (config.json + safetensors): import the base "
        "Model with the model loader's param convert=safetensors"
    )
    config_file = path / "config.json"
    if not config_file.is_file():
        if ggufs:
            raise TrainError(f"{label}: holds only GGUF weights ({', '.join(ggufs)}); {convert}")
        if (path / "adapter_config.json").is_file():
            raise TrainError(
                f"{label}: holds a LoRA adapter alone (a Model trained with merge=false), not a "
                "full model; fine-tune from a merged model (train the base with merge=true)"
            )
        raise TrainError(
            f"{label}: no config.json, so not a transformers model (found: {_listing(path)})"
        )
    try:
        config = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TrainError(f"{label}config.json: not readable JSON ({exc})") from None
    if not isinstance(config, dict):
        raise TrainError(f"{label}config.json: not a JSON object")
    model_type = config.get("model_type")
    if not model_type:
        raise TrainError(f"{label}config.json: has no model_type, so the architecture is unknown")
    if not any(any(path.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        hint = f"; {convert}" if ggufs else ""
        raise TrainError(
            f"{label}: config.json but no weights (*.safetensors or pytorch_model.bin; "
            f"found: {_listing(path)}){hint}"
        )
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise TrainError(
            f"{label}: no tokenizer ({' or '.join(TOKENIZER_FILES)}); save the tokenizer with "
            "the model"
        )
    return ModelInfo(path, str(model_type), config, _has_chat_template(path))


def check_architecture(info: ModelInfo) -> None:
    """Is model_type a causal LM that this transformers knows? (Imports transformers: done
    after the cheap checks of the model directory and the dataset.)"""
    import transformers
    from transformers.models.auto import configuration_auto
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type, config = info.model_type, info.config
    version = transformers.__version__
    known: dict[str, str] = getattr(configuration_auto, "CONFIG_MAPPING_NAMES")  # noqa: B009
    if model_type not in known:
        remote = " (its auto_map asks for custom code, which the trainer does not run)"
        raise TrainError(
            f"model/config.json: model_type {model_type!r} is not an architecture transformers "
            f"{version} knows{remote if 'auto_map' in config else ''}; the trainer supports "
            "causal language models such as llama, mistral, qwen2, gemma, gpt2, phi"
        )
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise TrainError(
            f"model/config.json: model_type {model_type!r} has no causal language-model head in "
            f"transformers {version}; the trainer fine-tunes text-generation models"
        )


def _has_chat_template(path: Path) -> bool:
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return True
    try:
        tokenizer_config = json.loads((path / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(tokenizer_config, dict) and bool(tokenizer_config.get("chat_template"))


# ---------------------------------------------------------------------------------------------
# Dataset


@dataclass(frozen=True)
class Row:
    where: str  # "data/data.jsonl line 3": for error messages
    values: dict[str, Any]


def data_files(root: Path) -> list[Path]:
    if not root.is_dir():
        raise TrainError(
            f"data/: no dataset is mounted ({root} does not exist); the Model needs "
            "spec.trainingDataset naming a Ready Dataset"
        )
    loader = [root / name for name in LOADER_FILES if (root / name).is_file()]
    if loader:
        return loader
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in DATA_SUFFIXES
        and p.name not in METADATA_FILES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise TrainError(
            f"data/: the dataset is empty: no data files ({', '.join(DATA_SUFFIXES)}) in it "
            f"(found: {_listing(root)})"
        )
    return files


def read_rows(root: Path) -> list[Row]:
    files = data_files(root)
    rows = [row for path in files for row in _read_file(path, root)]
    if not rows:
        names = ", ".join(str(p.relative_to(root)) for p in files)
        raise TrainError(f"data/: the dataset is empty: 0 rows in {names}")
    return rows


def _read_file(path: Path, root: Path) -> Iterator[Row]:
    label = f"data/{path.relative_to(root)}"
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            yield from _read_parquet(path, label)
        elif suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as f:
                for n, record in enumerate(csv.DictReader(f), start=2):
                    yield Row(f"{label} line {n}", dict(record))
        elif suffix == ".txt":
            with path.open(encoding="utf-8") as f:
                for n, line in enumerate(f, start=1):
                    if line.strip():
                        yield Row(f"{label} line {n}", {"text": line.rstrip("\n")})
        elif suffix == ".json":
            yield from _read_json(path, label)
        else:
            yield from _read_jsonl(path, label)
    except UnicodeDecodeError as exc:
        raise TrainError(f"{label}: not UTF-8 text ({exc})") from None
    except OSError as exc:
        raise TrainError(f"{label}: cannot be read ({exc})") from None


def _read_jsonl(path: Path, label: str) -> Iterator[Row]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TrainError(f"{label} line {n}: not valid JSON ({exc.msg})") from None
            yield _row(value, f"{label} line {n}")


def _read_json(path: Path, label: str) -> Iterator[Row]:
    text = path.read_text(encoding="utf-8")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        # datasets' json builder also reads JSON lines from .json files.
        yield from _read_jsonl(path, label)
        return
    if isinstance(value, dict):
        lists = [k for k, v in value.items() if isinstance(v, list)]
        if len(lists) != 1:
            raise TrainError(
                f"{label}: a JSON object; expected a list of rows, or an object with one list "
                'of rows (e.g. {"data": [...]})'
            )
        value = value[lists[0]]
    if not isinstance(value, list):
        raise TrainError(f"{label}: expected a list of rows (JSON objects)")
    for n, item in enumerate(value, start=1):
        yield _row(item, f"{label} row {n}")


def _read_parquet(path: Path, label: str) -> Iterator[Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TrainError(
            f"{label}: reading parquet needs pyarrow, which is not installed"
        ) from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own error types
        raise TrainError(f"{label}: not a readable parquet file ({exc})") from None
    for n, record in enumerate(table.to_pylist(), start=1):
        yield Row(f"{label} row {n}", record)


def _row(value: Any, where: str) -> Row:
    if isinstance(value, str):
        return Row(where, {"text": value})
    if not isinstance(value, dict):
        raise TrainError(f"{where}: a row must be a JSON object, not {type(value).__name__}")
    return Row(where, value)


# ---------------------------------------------------------------------------------------------
# Rows -> texts

Spans = list[tuple[int, int]]


@dataclass(frozen=True)
class ChatText:
    """A conversation rendered by the chat template; ``spans``: the character ranges of the
    assistant's turns (the only ones learned), or None to learn the whole text."""

    text: str
    spans: Spans | None


ChatRenderer = Callable[[list[dict[str, Any]]], ChatText]


@dataclass(frozen=True)
class TextPlan:
    """How rows become training texts: 'template', 'field' or 'messages'."""

    kind: str
    describe: str


@dataclass
class Texts:
    texts: list[str]
    # Per text, the spans to learn (chat rows with assistant_only_loss); None: learn all.
    spans: list[Spans | None] | None = None


def plan_texts(rows: list[Row], config: TrainConfig, info: ModelInfo) -> TextPlan:
    first = rows[0].values
    if config.prompt_template is not None:
        return TextPlan("template", f"params.prompt_template {config.prompt_template!r}")
    chat = bool(config.chat_fields) or (
        not config.text_field_set and "messages" in first and config.text_field not in first
    )
    if chat:
        source = (
            "the rows' fields {!r} (user) and {!r} (assistant)".format(*config.chat_fields)
            if config.chat_fields
            else "the rows' messages"
        )
        if not info.has_chat_template:
            raise TrainError(
                f"data/: training on {source} needs a chat template, but the base model's "
                "tokenizer has none; set params.prompt_template or params.text_field instead"
            )
        loss = "; loss on the assistant's answers only" if config.assistant_only_loss else ""
        return TextPlan("messages", f"{source} through the tokenizer's chat template{loss}")
    return TextPlan("field", f"the rows' field {config.text_field!r}")


def render_texts(
    rows: list[Row], plan: TextPlan, config: TrainConfig, chat: ChatRenderer | None = None
) -> Texts:
    """One training text per row (empty rows dropped); a TrainError names the row at fault."""
    out = Texts([], [] if plan.kind == "messages" else None)
    for row in rows:
        spans: Spans | None = None
        if plan.kind == "template":
            text = _fill(config.prompt_template or "", row)
        elif plan.kind == "messages":
            messages = _messages(row, config.chat_fields)
            if not messages:
                continue
            rendered = chat(messages) if chat is not None else ChatText("", None)
            text, spans = rendered.text, rendered.spans
        else:
            text = _field(row, config.text_field)
        if text.strip():
            out.texts.append(text)
            if out.spans is not None:
                out.spans.append(spans)
    if not out.texts:
        raise TrainError(f"data/: the dataset is empty: all {len(rows)} rows have no text")
    return out


def _fields(row: Row) -> str:
    return ", ".join(sorted(map(str, row.values))) or "none"


def _field(row: Row, name: str) -> str:
    if name not in row.values:
        raise TrainError(
            f"{row.where}: no field {name!r} (params.text_field); the rows have: {_fields(row)}. "
            "Set params.text_field to one of them, or params.prompt_template to combine them "
            "(e.g. '### Question: {question}\\n### Answer: {answer}')"
        )
    value = row.values[name]
    return "" if value is None else str(value)


class _Values(dict[str, Any]):
    def __missing__(self, key: str) -> Any:
        raise KeyError(key)


def _fill(template: str, row: Row) -> str:
    values = _Values({k: ("" if v is None else v) for k, v in row.values.items()})
    try:
        return template.format_map(values)
    except KeyError as exc:
        raise TrainError(
            f"params.prompt_template: {row.where} has no field {exc.args[0]!r}, which the "
            f"template {template!r} uses; the rows have: {_fields(row)}"
        ) from None
    except (IndexError, AttributeError, ValueError, TypeError) as exc:
        raise TrainError(
            f"params.prompt_template: {template!r} does not apply to {row.where} ({exc})"
        ) from None


def _messages(row: Row, chat_fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """The row's conversation; [] for a chat_fields row with no answer (nothing to learn)."""
    if chat_fields:
        user, assistant = chat_fields
        for name in chat_fields:
            if name not in row.values:
                raise TrainError(
                    f"{row.where}: no field {name!r} (params.chat_fields); the rows have: "
                    f"{_fields(row)}"
                )
        question, answer = (row.values[user], row.values[assistant])
        if answer is None or not str(answer).strip():
            return []
        return [
            {"role": "user", "content": "" if question is None else str(question)},
            {"role": "assistant", "content": str(answer)},
        ]
    messages = row.values.get("messages")
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and "role" in m and "content" in m for m in messages
    ):
        raise TrainError(
            f'{row.where}: \'messages\' must be a list of {{"role": ..., "content": ...}} objects'
        )
    return messages
