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
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import decimal
import functools
import gzip
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from substratus.workloads.contract import (
    ParamError,
    Params,
    Progress,
    artifacts_dir,
    content_dir,
    fail,
)

FORMATS = ("jsonl", "parquet")
BATCH_ROWS = 10_000
_EXTENSIONS = {
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
_CONTENT_TYPES = {
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
_KNOWN = ", ".join(_EXTENSIONS)
# A JSON value in an array may not outgrow this while we look for its end.
MAX_JSON_VALUE = 256 << 20


class LoaderError(RuntimeError):
    """A source could not be read; the message names it (and the line, where one is at fault)."""


# --- params ------------------------------------------------------------------------------------


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
        name = (params.text("name") or "").strip() or None
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
            config=(params.text("config") or "").strip() or None,
            split=(params.text("split") or "").strip() or None,
            format=fmt,
        )


# --- opening sources ---------------------------------------------------------------------------


def redact(url: str) -> str:
    """A URL without its user:password part (it goes into logs and dataset.json)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


@dataclass
class Opened:
    """A source's byte stream and what is known about it."""

    label: str
    """How errors name it: the URL as given (credentials removed), plus the file in a dir."""
    stream: IO[bytes]
    path: str
    """The path part, whose extension tells the format."""
    content_type: str | None = None
    size: int | None = None
    local_path: str | None = None
    """A local file's path (parquet reads it directly)."""
    closers: list[Any] = field(default_factory=list)

    def close(self) -> None:
        for c in reversed(self.closers):
            with contextlib.suppress(Exception):
                c.close()


def _is_http(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def _open_http(url: str) -> Opened:
    import urllib.error
    import urllib.request

    label = redact(url)
    request = urllib.request.Request(url, headers={"User-Agent": "substratus-dataset-loader"})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as e:
        raise ParamError(f"params.urls: {label}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise LoaderError(f"params.urls: {label}: cannot connect ({e.reason})") from None
    except (OSError, ValueError) as e:
        raise LoaderError(f"params.urls: {label}: cannot fetch ({e})") from None
    length = response.headers.get("Content-Length")
    ctype = response.headers.get("Content-Type")
    return Opened(
        label,
        response,
        urlsplit(url).path,
        content_type=ctype.split(";")[0].strip().lower() if ctype else None,
        size=int(length) if length and length.isdigit() else None,
        closers=[response],
    )


def expand(url: str) -> list[tuple[str, str, Any]]:
    """A non-HTTP source as ``(label, fsspec path, filesystem)`` per file (a dir: its files)."""
    from substratus.storage.backends import MissingDependency, backend_for, parse_url

    label = redact(url)
    try:
        loc = parse_url(url)
        fs = backend_for(loc).filesystem()
    except (ValueError, MissingDependency) as e:
        raise ParamError(f"params.urls: {label}: {e}") from None
    try:
        if fs.isdir(loc.path):
            prefix = loc.path.rstrip("/") + "/"
            found = sorted(
                p
                for p, info in fs.find(loc.path, detail=True).items()
                if info.get("type", "file") == "file" and _format_by_path(p) is not None
            )
            if not found:
                raise ParamError(
                    f"params.urls: {label} is a directory without data files ({_KNOWN})"
                )
            return [(f"{label.rstrip('/')}/{p[len(prefix) :]}", p, fs) for p in found]
        if fs.isfile(loc.path):
            return [(label, loc.path, fs)]
    except ParamError:
        raise
    except Exception as e:
        raise LoaderError(f"params.urls: {label}: cannot read ({type(e).__name__}: {e})") from e
    raise ParamError(f"params.urls: {label} does not exist")


def _open_fs(label: str, path: str, fs: Any) -> Opened:
    from fsspec.implementations.local import LocalFileSystem

    try:
        if isinstance(fs, LocalFileSystem):
            f: IO[bytes] = open(path, "rb")  # noqa: SIM115 (closed by Opened.close)
            size: int | None = os.fstat(f.fileno()).st_size
            return Opened(label, f, path, size=size, local_path=path, closers=[f])
        f = fs.open(path, "rb")
        size = int(fs.size(path) or 0) or None
        return Opened(label, f, path, size=size, closers=[f])
    except OSError as e:
        raise LoaderError(f"params.urls: {label}: cannot open ({e})") from None


# --- formats -----------------------------------------------------------------------------------


def _strip_gz(path: str) -> tuple[str, bool]:
    p = path.lower()
    return (path[:-3], True) if p.endswith(".gz") else (path, False)


def _format_by_path(path: str) -> str | None:
    base, _ = _strip_gz(path)
    return _EXTENSIONS.get(os.path.splitext(base)[1].lower())


def detect_format(opened: Opened) -> str:
    fmt = _format_by_path(opened.path)
    if fmt is None and opened.content_type:
        fmt = _CONTENT_TYPES.get(opened.content_type)
    if fmt is None:
        raise ParamError(
            f"params.urls: {opened.label}: cannot tell the data format: name the file "
            f"{_KNOWN} (optionally .gz), or serve it with a Content-Type such as "
            "application/json, application/x-ndjson, text/csv or text/plain"
            + (f" (got {opened.content_type})" if opened.content_type else "")
        )
    return fmt


class _Counting(io.RawIOBase):
    """Counts the bytes read from a stream (for progress lines)."""

    def __init__(self, raw: IO[bytes], progress: Progress):
        self.raw, self.progress = raw, progress

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        readinto = getattr(self.raw, "readinto", None)
        if readinto is not None:
            n = int(readinto(view) or 0)
        else:
            data = self.raw.read(len(view))
            n = len(data)
            view[:n] = data
        self.progress.add(n)
        return n


def _maybe_gunzip(stream: io.BufferedReader[Any]) -> IO[bytes]:
    if stream.peek(2)[:2] == b"\x1f\x8b":
        return io.BufferedReader(gzip.GzipFile(fileobj=stream, mode="rb"), buffer_size=1 << 20)
    return stream


Row = dict[str, Any]


def _text(stream: IO[bytes]) -> io.TextIOWrapper:
    # utf-8-sig: a byte-order mark is not part of the first row.
    return io.TextIOWrapper(stream, encoding="utf-8-sig", newline=None)


def _describe(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def read_jsonl(text: IO[str], label: str, first_line: int = 1) -> Iterator[Row]:
    for n, line in enumerate(text, first_line):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise LoaderError(
                f"{label} line {n}: not valid JSON ({e.msg} at column {e.colno})"
            ) from None
        if not isinstance(row, dict):
            raise LoaderError(
                f"{label} line {n}: {_describe(row)} where a JSON object (one row) was expected"
            )
        yield row


class _JsonArray:
    """Streams the elements of a top-level JSON array without reading it all."""

    def __init__(self, text: IO[str], label: str, head: str = ""):
        self.text, self.label = text, label
        self.decoder = json.JSONDecoder()
        self.buf, self.pos, self.eof = head, 0, False
        # A cursor for line numbers: line `self.ln` (0-based) starts at or before `self.lp`.
        self.lp, self.ln = 0, 0

    def line(self, i: int) -> int:
        """The 1-based line of ``self.buf[i]``; counts forward from the cursor (no rescans)."""
        if i >= self.lp:
            self.ln += self.buf.count("\n", self.lp, i)
        else:
            self.ln -= self.buf.count("\n", i, self.lp)
        self.lp = i
        return self.ln + 1

    def fill(self, size: int = 1 << 20) -> None:
        chunk = self.text.read(size)
        if not chunk:
            self.eof = True
            return
        self.line(self.pos)
        self.buf = self.buf[self.pos :] + chunk
        self.lp -= self.pos
        self.pos = 0

    def skip_ws(self) -> str:
        """The next non-blank character ('' at the end), not consumed."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if self.eof:
                return ""
            self.fill()

    def error(self, what: str, at: int | None = None) -> LoaderError:
        return LoaderError(f"{self.label} line {self.line(self.pos if at is None else at)}: {what}")

    def value(self) -> Any:
        size = 1 << 20
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                # Input cut short by the buffer's end fails at its end, or in an open string.
                incomplete = e.pos >= len(self.buf) - 16 or e.msg.startswith("Unterminated")
                if self.eof or not incomplete or len(self.buf) - self.pos > MAX_JSON_VALUE:
                    raise self.error(f"not valid JSON ({e.msg})", e.pos) from None
                self.fill(size)
                size *= 2
                continue
            if end >= len(self.buf) and not self.eof:
                self.fill(size)  # a number at the end of the buffer may go on
                continue
            self.pos = end
            return value

    def rows(self) -> Iterator[Row]:
        if self.skip_ws() != "[":
            raise self.error("expected a JSON array")
        self.pos += 1
        if self.skip_ws() == "]":
            self.pos += 1
        else:
            index = 0
            while True:
                if self.skip_ws() == "":
                    raise self.error("not valid JSON (the array is not closed)")
                start_line = self.line(self.pos)
                row = self.value()
                if not isinstance(row, dict):
                    raise LoaderError(
                        f"{self.label} line {start_line}: item {index} is {_describe(row)} "
                        "where a JSON object (one row) was expected"
                    )
                yield row
                index += 1
                c = self.skip_ws()
                if c == ",":
                    self.pos += 1
                    continue
                if c == "]":
                    self.pos += 1
                    break
                raise self.error("not valid JSON (expected ',' or ']' after an item)")
        if self.skip_ws() != "":
            raise self.error("not valid JSON (extra data after the array)")


def read_json(text: IO[str], label: str) -> Iterator[Row]:
    """A ``.json`` file: an array of objects, or (as many datasets ship) one object per line."""
    head = ""
    while True:
        ch = text.read(1)
        if not ch:
            return
        head += ch
        if not ch.isspace():
            break
    if ch == "[":
        array = _JsonArray(text, label, head)
        array.pos = len(head) - 1
        yield from array.rows()
        return
    rest = head + text.readline()
    yield from read_jsonl(io.StringIO(rest), label)
    yield from read_jsonl(text, label, first_line=rest.count("\n") + 1)


def read_txt(text: IO[str]) -> Iterator[Row]:
    for line in text:
        yield {"text": line.rstrip("\r\n")}


def read_csv(stream: IO[bytes], label: str, delimiter: str) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    try:
        reader = pcsv.open_csv(
            stream,
            read_options=pcsv.ReadOptions(block_size=8 << 20),
            parse_options=pcsv.ParseOptions(delimiter=delimiter),
            convert_options=pcsv.ConvertOptions(timestamp_parsers=[]),
        )
        for batch in reader:
            yield from batch.to_pylist()
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise LoaderError(
            f"{label}: not valid CSV, or a column's values change type after the first rows ({e})"
        ) from None


def read_parquet(source: str | IO[bytes], label: str) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(source)
        for batch in pf.iter_batches(batch_size=BATCH_ROWS):
            yield from batch.to_pylist()
    except (pa.ArrowInvalid, OSError) as e:
        raise LoaderError(f"{label}: not a readable parquet file ({e})") from None


@contextlib.contextmanager
def scratch_dir(what: str) -> Iterator[Path]:
    """A scratch directory beside artifacts/ (same disk), removed afterwards."""
    try:
        path = Path(tempfile.mkdtemp(prefix=f".dataset-loader-{what}-", dir=content_dir()))
    except OSError:
        path = Path(tempfile.mkdtemp(prefix=f"dataset-loader-{what}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def rows_of(opened: Opened, progress: Progress) -> Iterator[Row]:
    """The rows of one opened source (the stream is closed by the caller)."""
    fmt = detect_format(opened)
    buffered = io.BufferedReader(_Counting(opened.stream, progress), buffer_size=1 << 20)
    stream = _maybe_gunzip(buffered)
    gz = stream is not buffered
    try:
        if fmt == "parquet":
            if opened.local_path is not None and not gz:
                progress.add(opened.size or 0)
                yield from read_parquet(opened.local_path, opened.label)
                return
            with scratch_dir("parquet") as tmp:
                spooled = tmp / "source.parquet"
                with spooled.open("wb") as out:
                    shutil.copyfileobj(stream, out, 1 << 20)
                yield from read_parquet(str(spooled), opened.label)
            return
        if fmt in ("csv", "tsv"):
            yield from read_csv(stream, opened.label, "," if fmt == "csv" else "\t")
            return
        text = _text(stream)
        if fmt == "jsonl":
            yield from read_jsonl(text, opened.label)
        elif fmt == "json":
            yield from read_json(text, opened.label)
        else:
            yield from read_txt(text)
    except UnicodeDecodeError as e:
        raise LoaderError(f"{opened.label}: not UTF-8 text ({e})") from None
    except (EOFError, gzip.BadGzipFile) as e:
        raise LoaderError(f"{opened.label}: truncated or corrupt gzip data ({e})") from None


# --- outputs -----------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if hasattr(value, "tolist"):  # numpy arrays and scalars (datasets' features)
        return value.tolist()
    return str(value)


class Columns:
    """The union of the columns, in the order first seen."""

    def __init__(self) -> None:
        self.names: dict[str, None] = {}

    def add(self, row: Row) -> None:
        for k in row:
            if k not in self.names:
                self.names[k] = None


class JsonlWriter:
    def __init__(self, path: Path):
        self.path = path
        self.f = path.open("w", encoding="utf-8")

    def write(self, rows: list[Row]) -> None:
        dumps = json.dumps
        self.f.write(
            "".join(dumps(r, ensure_ascii=False, default=_json_default) + "\n" for r in rows)
        )

    def close(self) -> None:
        self.f.close()

    def abort(self) -> None:
        self.f.close()


class ParquetWriter:
    """Batches are spilled as Arrow files, then written with the unified schema."""

    def __init__(self, path: Path, spill: Path):
        self.path, self.spill = path, spill
        self.parts: list[tuple[Path, Any, str]] = []

    def write(self, rows: list[Row], label: str) -> None:
        import pyarrow as pa

        keys: dict[str, None] = {}
        for r in rows:
            for k in r:
                if k not in keys:
                    keys[k] = None
        try:
            # Not from_pylist: it takes the columns of the first row only.
            table = pa.table({k: [r.get(k) for r in rows] for k in keys})
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise LoaderError(
                f"{label}: these rows cannot be stored as parquet ({e}); a column must hold one "
                "type of value (use format=jsonl to keep them as they are)"
            ) from None
        part = self.spill / f"part-{len(self.parts):06d}.arrow"
        with pa.OSFile(str(part), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table)
        self.parts.append((part, table.schema, label))

    def close(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schemas = [s for _, s, _ in self.parts]
        try:
            schema = (
                pa.unify_schemas(schemas, promote_options="permissive")
                if schemas
                else pa.schema([])
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise LoaderError(
                f"the sources' columns have types that cannot be merged for parquet ({e}); "
                "use format=jsonl"
            ) from None
        with pq.ParquetWriter(str(self.path), schema) as writer:
            for part, _, label in self.parts:
                with pa.memory_map(str(part)) as source:
                    table = pa.ipc.open_file(source).read_all()
                columns = []
                for f in schema:
                    if f.name in table.column_names:
                        columns.append(table[f.name])
                    else:
                        columns.append(pa.nulls(table.num_rows, f.type))
                try:
                    unified = pa.Table.from_arrays(columns, schema=schema)
                except (pa.ArrowInvalid, pa.ArrowTypeError):
                    try:
                        unified = pa.Table.from_arrays(
                            [c.cast(f.type) for c, f in zip(columns, schema, strict=True)],
                            schema=schema,
                        )
                    except (pa.ArrowInvalid, pa.ArrowTypeError, NotImplementedError) as e:
                        raise LoaderError(
                            f"{label}: a column's type does not fit the others' ({e}); use "
                            "format=jsonl"
                        ) from None
                writer.write_table(unified)
                part.unlink()

    def abort(self) -> None:
        pass


# --- Hugging Face datasets ---------------------------------------------------------------------

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


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Result:
    rows: int
    columns: list[str]
    sources: list[str]
    format: str
    file: str
    bytes: int
    read: int
    seconds: float

    def manifest(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "columns": self.columns,
            "sources": self.sources,
            "format": self.format,
            "file": self.file,
            "bytes": self.bytes,
        }

    def line(self) -> str:
        rate = self.read / 1e6 / self.seconds if self.seconds > 0 else 0.0
        return (
            f"dataset-loader: {self.rows} rows, {len(self.columns)} columns from "
            f"{len(self.sources)} source(s) -> artifacts/{self.file} ({self.bytes / 1e6:.1f} MB) "
            f"in {self.seconds:.1f} s ({rate:.1f} MB/s read)"
        )


def _batches(rows: Iterable[Row], columns: Columns) -> Iterator[list[Row]]:
    batch: list[Row] = []
    for row in rows:
        columns.add(row)
        batch.append(row)
        if len(batch) >= BATCH_ROWS:
            yield batch
            batch = []
    if batch:
        yield batch


def run(req: Request, out: Path) -> Result:
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    name = f"data.{req.format}"
    final = out / name
    partial = out / f".{name}.partial"
    columns = Columns()
    rows = read = 0
    sources: list[str] = []
    with contextlib.ExitStack() as stack:
        spill = stack.enter_context(scratch_dir("spill"))
        writer: JsonlWriter | ParquetWriter = (
            JsonlWriter(partial) if req.format == "jsonl" else ParquetWriter(partial, spill)
        )
        try:

            def emit(source_rows: Iterable[Row], label: str) -> int:
                n = 0
                for batch in _batches(source_rows, columns):
                    if isinstance(writer, JsonlWriter):
                        writer.write(batch)
                    else:
                        writer.write(batch, label)
                    n += len(batch)
                return n

            if req.name is not None:
                it, source = hub_rows(req, spill)
                progress = Progress(f"loading {source}", None, unit="rows")
                n = emit(_counted(it, progress), source)
                progress.finish()
                rows += n
                sources.append(source)
            else:
                for url in req.urls:
                    for open_source in _sources(url):
                        opened = open_source()
                        try:
                            progress = Progress(f"loading {opened.label}", opened.size)
                            try:
                                n = emit(rows_of(opened, progress), opened.label)
                            except (OSError, HTTPException) as e:
                                raise LoaderError(
                                    f"params.urls: {opened.label}: reading failed "
                                    f"({type(e).__name__}: {e})"
                                ) from None
                            read += progress.done
                            print(
                                f"dataset-loader: {opened.label}: {n} rows, "
                                f"{progress.done / 1e6:.1f} MB read",
                                file=sys.stderr,
                                flush=True,
                            )
                        finally:
                            opened.close()
                        rows += n
                        sources.append(opened.label)
            writer.close()
        except BaseException:
            writer.abort()
            partial.unlink(missing_ok=True)
            raise
    os.replace(partial, final)
    result = Result(
        rows=rows,
        columns=list(columns.names),
        sources=sources,
        format=req.format,
        file=name,
        bytes=final.stat().st_size,
        read=read,
        seconds=time.monotonic() - started,
    )
    (out / "dataset.json").write_text(json.dumps(result.manifest(), indent=2) + "\n")
    return result


def _sources(url: str) -> list[Callable[[], Opened]]:
    """How to open each file a URL stands for (a directory stands for its data files)."""
    if _is_http(url):
        return [lambda: _open_http(url)]
    return [functools.partial(_open_fs, *part) for part in expand(url)]


def _counted(rows: Iterable[Row], progress: Progress) -> Iterator[Row]:
    for row in rows:
        progress.add(1)
        yield row


def main() -> int:
    try:
        req = Request.from_params(Params.load())
        result = run(req, artifacts_dir())
    except ParamError as e:
        return fail(str(e))
    except LoaderError as e:
        return fail(str(e), code=1)
    except KeyboardInterrupt:
        return fail("interrupted", code=130)
    print(result.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
