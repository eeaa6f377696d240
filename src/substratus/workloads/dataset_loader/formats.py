"""A source's data format: by extension (after an optional ``.gz``), else by Content-Type."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from substratus.workloads.contract import ParamError

if TYPE_CHECKING:
    from substratus.workloads.dataset_loader.sources import Opened

EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "txt",
    ".text": "txt",
}
CONTENT_TYPES = {
    "application/json": "json",
    "text/json": "json",
    "application/x-ndjson": "jsonl",
    "application/ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/x-jsonlines": "jsonl",
    "application/jsonlines": "jsonl",
    "text/csv": "csv",
    "application/csv": "csv",
    "text/tab-separated-values": "tsv",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
    "application/parquet": "parquet",
    "text/plain": "txt",
}
KNOWN = ", ".join(EXTENSIONS)


def _strip_gz(path: str) -> tuple[str, bool]:
    p = path.lower()
    return (path[:-3], True) if p.endswith(".gz") else (path, False)


def format_by_path(path: str) -> str | None:
    base, _ = _strip_gz(path)
    return EXTENSIONS.get(os.path.splitext(base)[1].lower())


def detect_format(opened: Opened) -> str:
    fmt = format_by_path(opened.path)
    if fmt is None and opened.content_type:
        fmt = CONTENT_TYPES.get(opened.content_type)
    if fmt is None:
        raise ParamError(
            f"params.urls: {opened.label}: cannot tell the data format: name the file "
            f"{KNOWN} (optionally .gz), or serve it with a Content-Type such as "
            "application/json, application/x-ndjson, text/csv or text/plain"
            + (f" (got {opened.content_type})" if opened.content_type else "")
        )
    return fmt
