"""The outputs: ``data.jsonl`` or ``data.parquet`` (written as rows arrive), ``dataset.json``."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from substratus.workloads.dataset_loader.common import LoaderError, Row


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

        keys = Columns()
        for r in rows:
            keys.add(r)
        try:
            # Not from_pylist: it takes the columns of the first row only.
            table = pa.table({k: [r.get(k) for r in rows] for k in keys.names})
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


def write_manifest(out: Path, result: Result) -> None:
    """``dataset.json``: what the run wrote, and from where."""
    (out / "dataset.json").write_text(json.dumps(result.manifest(), indent=2) + "\n")
