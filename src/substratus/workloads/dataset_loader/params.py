"""The dataset loader's params (``urls`` or ``name``/``config``/``split``; ``format``)."""

from __future__ import annotations

from dataclasses import dataclass

from substratus.workloads.contract import ParamError, Params

FORMATS = ("jsonl", "parquet")


def _optional(params: Params, name: str) -> str | None:
    """A text param, stripped; None when unset or blank."""
    return (params.text(name) or "").strip() or None


@dataclass(frozen=True)
class Request:
    urls: list[str]
    name: str | None
    config: str | None
    split: str | None
    format: str

    @classmethod
    def from_params(cls, params: Params) -> Request:
        urls = params.items("urls")
        if not urls and params.text("url"):
            urls = params.items("url")  # the singular, as a courtesy
        name = _optional(params, "name")
        if urls and name:
            raise ParamError("params.urls and params.name: give one of them, not both")
        if not urls and not name:
            raise ParamError(
                "params.urls or params.name: one is required (URLs or paths of data files, or "
                "a Hugging Face dataset name)"
            )
        fmt = (params.text("format") or "jsonl").strip().lower()
        if fmt not in FORMATS:
            raise ParamError(f"params.format: {fmt!r} is not one of {', '.join(FORMATS)}")
        return cls(
            urls=urls,
            name=name,
            config=_optional(params, "config"),
            split=_optional(params, "split"),
            format=fmt,
        )
