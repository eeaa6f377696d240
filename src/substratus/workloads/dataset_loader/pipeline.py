"""The run: every source's rows, in batches, into one output file, then ``dataset.json``."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Iterator
from http.client import HTTPException
from pathlib import Path

from substratus.workloads.contract import ParamError, Params, Progress, artifacts_dir, fail
from substratus.workloads.dataset_loader.common import BATCH_ROWS, LoaderError, Row, scratch_dir
from substratus.workloads.dataset_loader.hub import hub_rows
from substratus.workloads.dataset_loader.params import Request
from substratus.workloads.dataset_loader.readers import rows_of
from substratus.workloads.dataset_loader.sources import openers
from substratus.workloads.dataset_loader.writers import (
    Columns,
    JsonlWriter,
    ParquetWriter,
    Result,
    write_manifest,
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
                    for open_source in openers(url):
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
    write_manifest(out, result)
    return result


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
