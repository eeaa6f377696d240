"""The per-format row readers: JSON Lines, JSON, CSV/TSV, Parquet, text.

``rows_of`` picks the reader for an opened source and streams its rows, gunzipping and
counting the bytes read on the way.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
from collections.abc import Iterator
from typing import IO, Any

from substratus.workloads.contract import Progress
from substratus.workloads.dataset_loader.common import (
    BATCH_ROWS,
    LoaderError,
    Row,
    scratch_dir,
)
from substratus.workloads.dataset_loader.formats import detect_format
from substratus.workloads.dataset_loader.sources import Opened

# A JSON value in an array may not outgrow this while we look for its end.
MAX_JSON_VALUE = 256 << 20


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
