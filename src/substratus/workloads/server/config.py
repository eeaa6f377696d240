"""The server's settings: params (params.json / ``PARAM_*``) and the runtime's environment.

| param | meaning | default |
|---|---|---|
| ``engine`` | ``auto``, ``transformers``, ``vllm`` or ``llamacpp`` | ``auto`` |
| ``max_batch_size`` | sequences decoded together in one batch | 16 |
| ``max_tokens_limit`` | the largest ``max_tokens`` a request may ask for | the context length |
| ``max_model_len`` | context length (prompt + completion), at most the model's | the model's |
| ``served_model_name`` | the name clients pass as ``model`` | ``$SUBSTRATUS_NAME``, else the dir |
| ``max_body_bytes`` | largest request body | 1048576 |
| ``dtype`` | ``auto``, ``float32``, ``bfloat16``, ``float16`` | ``auto`` (float32 on CPU) |
| ``threads`` | CPU threads for the model | cores - 1 (one left for HTTP) |
| ``gguf_file`` | which ``.gguf`` file to serve when model/ has several | the only one |
| ``chat_template`` | a Jinja chat template (text, or a file in the run's directory) | the model's |
| ``access_log`` | log every request | false |

``QUANTIZATION_BITS`` (set by the runtime from ``spec.quantization.bits``): 8 or 4; 16 or
unset means none.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from substratus.workloads.contract import ParamError, Params, host, model_dir, port

ENGINES = ("auto", "transformers", "vllm", "llamacpp")
DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZATION_ENV = "QUANTIZATION_BITS"


@dataclass(frozen=True)
class ServerConfig:
    model_dir: Path
    served_model_name: str
    engine: str = "auto"
    max_batch_size: int = 16
    max_tokens_limit: int | None = None
    max_model_len: int | None = None
    quantization_bits: int | None = None
    max_body_bytes: int = 1_048_576
    dtype: str = "auto"
    threads: int | None = None
    gguf_file: str | None = None
    chat_template: str | None = None
    access_log: bool = False
    host: str = "0.0.0.0"
    port: int = 8080


def quantization_bits(value: str | None) -> int | None:
    """``spec.quantization.bits`` as the runtime passes it: None for no quantization."""
    text = (value or "").strip()
    if text in ("", "16", "32", "0", "none"):
        return None
    if text in ("4", "8"):
        return int(text)
    raise ParamError(
        f"spec.quantization.bits: {text!r} is not supported by the model server "
        f"(use 4 or 8, or 16 for none)"
    )


def _positive(params: Params, name: str, default: int) -> int:
    value = params.integer(name, default)
    if value < 1:
        raise ParamError(f"params.{name}: must be at least 1, got {value}")
    return value


def _optional_positive(params: Params, name: str) -> int | None:
    if params.text(name) in (None, ""):
        return None
    return _positive(params, name, 1)


def _chat_template(params: Params, root: Path) -> str | None:
    text = params.text("chat_template")
    if not text:
        return None
    if "{" not in text:  # a file name, not a template
        path = root / text
        if not path.is_file():
            raise ParamError(f"params.chat_template: no file {text!r} in the run's directory")
        return path.read_text()
    return text


def default_threads() -> int:
    """All cores but one: the HTTP loop needs a core, or the model's threads stall on it."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def load_config(root: Path | None = None) -> ServerConfig:
    """Read params and environment; raises ParamError naming the bad param."""
    root = root or Path.cwd()
    params = Params.load(root)
    engine = (params.text("engine") or "auto").strip().lower()
    if engine not in ENGINES:
        raise ParamError(f"params.engine: {engine!r} is not one of {', '.join(ENGINES)}")
    dtype = (params.text("dtype") or "auto").strip().lower()
    if dtype not in DTYPES:
        raise ParamError(f"params.dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    directory = model_dir()
    name = (
        params.text("served_model_name")
        or os.environ.get("SUBSTRATUS_NAME")
        or directory.name
        or "model"
    )
    return ServerConfig(
        model_dir=directory,
        served_model_name=name,
        engine=engine,
        max_batch_size=_positive(params, "max_batch_size", 16),
        max_tokens_limit=_optional_positive(params, "max_tokens_limit"),
        max_model_len=_optional_positive(params, "max_model_len"),
        quantization_bits=quantization_bits(os.environ.get(QUANTIZATION_ENV)),
        max_body_bytes=_positive(params, "max_body_bytes", 1_048_576),
        dtype=dtype,
        threads=_optional_positive(params, "threads"),
        gguf_file=params.text("gguf_file") or None,
        chat_template=_chat_template(params, root),
        access_log=params.flag("access_log", False),
        host=host(),
        port=_port(),
    )


def _port() -> int:
    try:
        value = port()
    except ValueError:
        raise ParamError(f"PORT: {os.environ.get('PORT')!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise ParamError(f"PORT: {value} is not a port number")
    return value
