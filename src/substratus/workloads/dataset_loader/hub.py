"""Rows of a Hugging Face dataset (``name``/``config``/``split``), through ``datasets``."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from substratus.workloads.contract import ParamError
from substratus.workloads.dataset_loader.common import LoaderError, Row
from substratus.workloads.dataset_loader.params import Request

_SLICE = re.compile(r"^(?P<base>[^\[\]]+)\[(?P<a>\d*):(?P<b>\d*)\]$")


def hub_rows(req: Request, cache: Path) -> tuple[Iterator[Row], str]:
    """Rows of ``name``/``config``/``split`` via ``datasets``; streamed where it can be."""
    assert req.name is not None
    import datasets

    datasets.disable_progress_bars()
    with contextlib.suppress(Exception):
        datasets.logging.set_verbosity_error()
    split = req.split
    skip, take = 0, None
    streaming = True
    if split and "[" in split:
        m = _SLICE.match(split.replace(" ", ""))
        if m:
            split = m.group("base")
            skip = int(m.group("a") or 0)
            take = int(m.group("b")) - skip if m.group("b") else None
        else:  # percentages, negative indices, ...: datasets' own slicing, not streamed
            streaming = False
    label = req.name + (f" ({req.config})" if req.config else "")
    try:
        if streaming:
            loaded = datasets.load_dataset(req.name, req.config, split=split, streaming=True)
        else:
            loaded = datasets.load_dataset(req.name, req.config, split=split, cache_dir=str(cache))
        if isinstance(loaded, dict):
            names = list(loaded)
            if "train" in loaded:
                split = "train"
            elif len(names) == 1:
                split = names[0]
            else:
                raise ParamError(
                    f"params.split: {label} has the splits {', '.join(names)}: choose one"
                )
            loaded = loaded[split]
    except ParamError:
        raise
    except ValueError as e:
        text = str(e)
        if "split" in text.lower():
            raise ParamError(f"params.split: {req.split!r}: {text}") from None
        if "config" in text.lower():
            raise ParamError(f"params.config: {req.config!r}: {text}") from None
        raise LoaderError(f"params.name: {label}: {text}") from None
    except FileNotFoundError as e:
        raise ParamError(f"params.name: dataset {req.name!r} was not found ({e})") from None
    except Exception as e:
        kind = type(e).__name__
        if "NotFound" in kind:
            hint = (
                "" if os.environ.get("HF_TOKEN") else " (if it is private or gated, set HF_TOKEN)"
            )
            raise ParamError(
                f"params.name: dataset {req.name!r} was not found{hint}: {e}"
            ) from None
        raise LoaderError(f"params.name: loading {label} failed: {kind}: {e}") from None
    if streaming and (skip or take is not None):
        if skip:
            loaded = loaded.skip(skip)
        if take is not None:
            loaded = loaded.take(max(take, 0))
    source = f"{req.name}" + (f":{req.config}" if req.config else "") + f" [{req.split or split}]"

    def rows() -> Iterator[Row]:
        try:
            for r in loaded:
                yield dict(r)
        except Exception as e:
            raise LoaderError(
                f"params.name: reading {label} failed: {type(e).__name__}: {e}"
            ) from e

    return rows(), source
