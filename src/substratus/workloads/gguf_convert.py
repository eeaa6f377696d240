"""GGUF -> transformers safetensors, for the model loader's ``convert: safetensors``.

transformers reads a GGUF file (``from_pretrained(dir, gguf_file=...)``, with the ``gguf``
package), dequantising its tensors, but ``save_pretrained`` refuses a model loaded that way.
So the tensors are moved into a fresh model built from the same config with the
``quantization_config`` removed, which saves as a plain model (``config.json``,
``model.safetensors``, ``generation_config.json``) beside the tokenizer read from the same
file; the result reloads in plain transformers, without ``gguf``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from substratus.workloads.contract import ParamError


class ConversionError(RuntimeError):
    """The GGUF file could not be converted; the message names it and says why."""


def _quiet() -> None:
    """No tqdm bars (terminal control codes) in workload logs."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging: Any = importlib.import_module("transformers.utils.logging")
    logging.disable_progress_bar()
    # transformers' GGUF reader uses tqdm directly, which no setting turns off.
    try:
        tqdm: Any = importlib.import_module("tqdm.auto").tqdm
        gguf_utils: Any = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    except ImportError:
        return
    if gguf_utils.__dict__.get("tqdm") is tqdm:  # not yet replaced
        gguf_utils.tqdm = functools.partial(tqdm, disable=True)


@contextlib.contextmanager
def _parse_once() -> Iterator[None]:
    """transformers parses the GGUF file three times (config, tokenizer, weights) and rebuilds
    gguf's tensor-name map once per module: memoise both while converting (a third of the
    time for a small model). Restored afterwards."""
    gguf: Any = importlib.import_module("gguf")
    reader_cls, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple[str, str], Any] = {}

    def reader(path: Any, mode: str = "r") -> Any:
        key = (os.path.realpath(str(path)), mode)
        if key not in readers:
            readers[key] = reader_cls(path, mode)
        return readers[key]

    gguf.GGUFReader = reader
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=64)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_cls, name_map
        readers.clear()


def convert_gguf(gguf: Path, out: Path) -> list[Path]:
    """Convert ``gguf`` into a transformers model in ``out``; returns the files written."""
    try:
        import gguf as _gguf  # noqa: F401  (transformers needs it; say so plainly)
    except ImportError:
        raise ParamError(
            "params.convert: converting GGUF needs the Python package 'gguf' (pip install gguf)"
        ) from None
    import torch

    transformers: Any = importlib.import_module("transformers")
    AutoModelForCausalLM = transformers.AutoModelForCausalLM
    AutoTokenizer = transformers.AutoTokenizer

    _quiet()
    directory, name = str(gguf.parent), gguf.name
    print(f"model-loader: converting {name} to safetensors ...", file=sys.stderr, flush=True)
    try:
        with _parse_once():
            tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
            loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name)
    except (ValueError, KeyError, NotImplementedError) as e:
        raise ConversionError(
            f"cannot convert {name}: transformers cannot read it ({type(e).__name__}: {e})"
        ) from e
    except OSError as e:
        raise ConversionError(f"cannot read {name}: {e}") from e

    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    dtype = next(iter(loaded.parameters())).dtype
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = loaded.state_dict()
    missing, unexpected = fresh.load_state_dict(state, strict=False, assign=True)
    del loaded, state
    if getattr(config, "tie_word_embeddings", False) or getattr(
        config.get_text_config(), "tie_word_embeddings", False
    ):
        fresh.tie_weights()
        missing = [k for k in missing if "lm_head" not in k]
    if missing or unexpected:
        raise ConversionError(
            f"cannot convert {name}: the GGUF tensors do not fit the model "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    meta = [n for n, p in fresh.named_parameters() if p.is_meta]
    if meta:
        raise ConversionError(f"cannot convert {name}: no weights for {meta[:5]}")
    out.mkdir(parents=True, exist_ok=True)
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    written = sorted(p for p in out.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in written)
    print(
        f"model-loader: converted {name} -> {len(written)} files, {size / 1e6:.1f} MB",
        file=sys.stderr,
        flush=True,
    )
    return written


__all__ = ["ConversionError", "convert_gguf"]
