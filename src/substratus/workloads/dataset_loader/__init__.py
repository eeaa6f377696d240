"""The dataset loader (image ``substratusai/dataset-loader``).

Loads rows from URLs or from a Hugging Face dataset into ``artifacts/``::

    python -m substratus.workloads.dataset_loader

Params (``params.json`` or ``PARAM_*``):

- ``urls``: one or more sources, comma/space separated: ``http(s)://`` URLs, ``file://`` URLs,
  local paths, bucket URLs (``s3://``, ``gs://``, ``az://``, read through fsspec). A directory
  (or bucket prefix) stands for the data files in it, in name order.
- ``name``: instead of ``urls``, a Hugging Face dataset (``org/dataset``, or anything
  ``datasets.load_dataset`` accepts, such as a local dataset directory), with ``config`` (the
  dataset's configuration) and ``split`` (default ``train``; slices such as ``train[:2000]`` or
  ``train[:10%]`` work). ``HF_TOKEN`` from the environment authenticates.
- ``format``: the output, ``jsonl`` (default; ``artifacts/data.jsonl``) or ``parquet``
  (``artifacts/data.parquet``).

Input formats, by extension (after an optional ``.gz``) or else by ``Content-Type``: ``.jsonl``
(``.ndjson``; one JSON object per line), ``.json`` (an array of objects, or one object per
line), ``.csv``/``.tsv`` (a header row; types inferred by pyarrow), ``.parquet``, ``.txt`` (one
row per line, as ``{"text": line}``). Gzipped input is recognised by its magic bytes too.

Rows stream from source to output: memory does not grow with the input (a parquet input read
over HTTP is spooled to a scratch file first, since parquet needs random access).

Sources whose columns differ are allowed: ``dataset.json`` lists the union of the columns, in
the order first seen. In ``data.jsonl`` each row keeps its own keys; in ``data.parquet`` a row
lacking a column holds null there, and a column's types are widened across sources (int64 and
double give double); types that cannot be merged (a number here, a string there) are an error.

``artifacts/dataset.json`` records ``{rows, columns, sources, format, file, bytes}``.

Layout: ``params`` (the params), ``formats`` (telling a source's format), ``sources``
(resolving and opening URLs, paths, buckets), ``readers`` (rows of each input format),
``hub`` (Hugging Face datasets), ``writers`` (``data.jsonl``/``data.parquet`` and
``dataset.json``), ``pipeline`` (the run and ``main``), ``common`` (what they all share).
Only the functions that need them import pyarrow and datasets.
"""

from substratus.workloads.contract import redact
from substratus.workloads.dataset_loader.common import (
    BATCH_ROWS,
    LoaderError,
    Row,
    scratch_dir,
)
from substratus.workloads.dataset_loader.formats import detect_format
from substratus.workloads.dataset_loader.hub import hub_rows
from substratus.workloads.dataset_loader.params import FORMATS, Request
from substratus.workloads.dataset_loader.pipeline import main, run
from substratus.workloads.dataset_loader.readers import (
    MAX_JSON_VALUE,
    read_csv,
    read_json,
    read_jsonl,
    read_parquet,
    read_txt,
    rows_of,
)
from substratus.workloads.dataset_loader.sources import Opened, expand
from substratus.workloads.dataset_loader.writers import (
    Columns,
    JsonlWriter,
    ParquetWriter,
    Result,
)

__all__ = [
    "BATCH_ROWS",
    "FORMATS",
    "MAX_JSON_VALUE",
    "Columns",
    "JsonlWriter",
    "LoaderError",
    "Opened",
    "ParquetWriter",
    "Request",
    "Result",
    "Row",
    "detect_format",
    "expand",
    "hub_rows",
    "main",
    "read_csv",
    "read_json",
    "read_jsonl",
    "read_parquet",
    "read_txt",
    "redact",
    "rows_of",
    "run",
    "scratch_dir",
]
