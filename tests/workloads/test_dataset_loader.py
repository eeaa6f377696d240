"""The dataset loader as a process, reading real files over loopback HTTP and from disk."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

MODULE = "substratus.workloads.dataset_loader"


class Files:
    """A loopback HTTP server: ``routes[path] = (body, content_type)``, 404 otherwise."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[bytes, str]] = {}
        files = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                body, ctype = files.routes.get(self.path, (b"not found", ""))
                status = 200 if self.path in files.routes else 404
                self.send_response(status)
                if ctype:
                    self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, path: str, body: bytes | str, ctype: str = "application/octet-stream") -> str:
        self.routes[path] = (body.encode() if isinstance(body, str) else body, ctype)
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"


@pytest.fixture
def files() -> Iterator[Files]:
    f = Files()
    yield f
    f.server.shutdown()
    f.server.server_close()


# Runs the module's main() and reports the process's peak memory (VmHWM, kB) on stderr; not
# ru_maxrss, which on Linux keeps the forking parent's peak across exec.
PEAK = (
    "import sys\n"
    f"from {MODULE} import main\n"
    "rc = main()\n"
    "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
    "print('PEAK_RSS_KB', hwm, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def load(
    run: Path, params: dict[str, Any], timeout: float = 120, peak: bool = False
) -> subprocess.CompletedProcess[str]:
    run.mkdir(parents=True, exist_ok=True)
    (run / "params.json").write_text(json.dumps(params))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARAM_", "HF_TOKEN"))}
    env["HF_HOME"] = str(run.parent / "hf-home")
    env["HF_HUB_OFFLINE"] = "1"
    # datasets imports torch (4 s here) when it is installed, only to share state with torch
    # data loader workers, which the loader never uses.
    env["USE_TORCH"] = "0"
    return subprocess.run(
        [sys.executable, "-c", PEAK] if peak else [sys.executable, "-m", MODULE],
        cwd=run,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_formats_over_http_and_from_disk(tmp_path: Path, files: Files) -> None:
    a = files.add("/a.jsonl", '{"q": "one", "n": 1}\n\n{"q": "two", "n": 2}\n')
    # A pretty-printed array: items span lines.
    b = files.add("/b.json", json.dumps([{"q": "three"}, {"q": "four", "extra": [1, 2]}], indent=2))
    c = files.add("/c.csv", "q,n\nfive,5\nsix,6\n")
    d = files.add("/d.txt.gz", gzip.compress(b"seven\neight\n"))
    # No extension: the Content-Type tells the format.
    e = files.add("/export?id=9", '{"q": "nine"}\n', "application/x-ndjson; charset=utf-8")
    local = tmp_path / "more"
    local.mkdir()
    (local / "f.json").write_text('{"q": "ten"}\n{"q": "eleven"}\n')  # JSON lines named .json
    (local / "notes.md").write_text("not data")  # a directory stands for its data files only
    g = tmp_path / "g.jsonl.gz"
    g.write_bytes(gzip.compress(b'{"q": "twelve"}\n'))

    run = tmp_path / "run"
    done = ok(load(run, {"urls": f"{a}, {b} {c},{d} {e} {local} file://{g}"}))
    rows = jsonl(run / "artifacts" / "data.jsonl")
    assert [r.get("q", r.get("text")) for r in rows] == [
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
    ]
    assert rows[0] == {"q": "one", "n": 1}  # JSON keeps its types
    assert rows[3] == {"q": "four", "extra": [1, 2]}
    assert rows[4] == {"q": "five", "n": 5}  # CSV types are inferred
    assert rows[6] == {"text": "seven"}
    meta = json.loads((run / "artifacts" / "dataset.json").read_text())
    assert meta["rows"] == 12 and meta["format"] == "jsonl" and meta["file"] == "data.jsonl"
    # Mixed columns across sources: the union, in the order first seen.
    assert meta["columns"] == ["q", "n", "extra", "text"]
    assert meta["sources"][:5] == [a, b, c, d, e]
    assert meta["sources"][5].endswith("more/f.json") and len(meta["sources"]) == 7
    assert sorted(p.name for p in (run / "artifacts").iterdir()) == ["data.jsonl", "dataset.json"]
    # No scratch left: the contract's files only (progress.json: the last progress report).
    assert sorted(p.name for p in run.iterdir()) in (
        ["artifacts", "params.json"],
        ["artifacts", "params.json", "progress.json"],
    )  # no scratch
    assert "12 rows, 4 columns from 7 source(s)" in done.stdout


def test_parquet_output_unifies_columns_and_reads_parquet(tmp_path: Path, files: Files) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"q": ["p1", "p2"], "score": [0.5, 1.5]}), src)
    over_http = files.add("/in2.parquet", src.read_bytes())
    rows_file = tmp_path / "rows.jsonl"
    rows_file.write_text('{"q": "j1", "score": 3}\n{"q": "j2", "label": "x"}\n')

    run = tmp_path / "run"
    ok(load(run, {"urls": f"{src} {over_http} {rows_file}", "format": "parquet"}))
    table = pq.read_table(run / "artifacts" / "data.parquet")
    assert table.column_names == ["q", "score", "label"]
    assert table.schema.field("score").type == pa.float64()  # int64 and double: double
    assert table.to_pylist() == [
        {"q": "p1", "score": 0.5, "label": None},
        {"q": "p2", "score": 1.5, "label": None},
        {"q": "p1", "score": 0.5, "label": None},
        {"q": "p2", "score": 1.5, "label": None},
        {"q": "j1", "score": 3.0, "label": None},
        {"q": "j2", "score": None, "label": "x"},
    ]
    meta = json.loads((run / "artifacts" / "dataset.json").read_text())
    assert meta["rows"] == 6 and meta["format"] == "parquet" and meta["file"] == "data.parquet"
    assert meta["columns"] == ["q", "score", "label"]

    # jsonl -> parquet with types that cannot share a column: a clear error, no partial output.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"v": 1}\n{"v": "one"}\n')
    run2 = tmp_path / "run2"
    done = load(run2, {"urls": str(bad), "format": "parquet"})
    assert done.returncode != 0 and "format=jsonl" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not any((run2 / "artifacts").iterdir())


def test_large_input_streams_in_bounded_memory(tmp_path: Path, files: Files) -> None:
    row = {"text": "x" * 900, "i": 0}
    lines = "".join(json.dumps({**row, "i": i}) + "\n" for i in range(80_000))  # ~74 MB
    big = files.add("/big.jsonl", lines)
    array = tmp_path / "big.json"
    array.write_text("[\n" + ",\n".join(lines.splitlines()) + "\n]\n")
    run = tmp_path / "run"
    done = ok(load(run, {"urls": f"{big} {array}"}, peak=True))
    peak_mb = int(done.stderr.split("PEAK_RSS_KB ")[1].split()[0]) / 1024
    out = run / "artifacts" / "data.jsonl"
    assert out.stat().st_size > 2 * len(lines) * 0.99
    meta = json.loads((run / "artifacts" / "dataset.json").read_text())
    assert meta["rows"] == 160_000
    # Each input alone is ~74 MB (and more as Python objects): a loader holding either in
    # memory would pass this bound.
    assert peak_mb < 90, f"peak RSS {peak_mb:.0f} MB"


def test_hugging_face_dataset_by_name_from_a_local_dataset_dir(tmp_path: Path) -> None:
    ds = tmp_path / "my-dataset"
    (ds / "data").mkdir(parents=True)
    (ds / "data" / "train.jsonl").write_text(
        "".join(json.dumps({"q": f"t{i}", "a": i}) + "\n" for i in range(10))
    )
    (ds / "data" / "test.jsonl").write_text('{"q": "e0", "a": 0}\n{"q": "e1", "a": 1}\n')

    run = tmp_path / "run"
    ok(load(run, {"name": str(ds)}))  # default split: train
    assert [r["q"] for r in jsonl(run / "artifacts" / "data.jsonl")] == [f"t{i}" for i in range(10)]
    meta = json.loads((run / "artifacts" / "dataset.json").read_text())
    assert meta["rows"] == 10 and meta["columns"] == ["q", "a"]

    run = tmp_path / "run-test"
    ok(load(run, {"name": str(ds), "split": "test", "format": "parquet"}))
    import pyarrow.parquet as pq

    assert pq.read_table(run / "artifacts" / "data.parquet").column("q").to_pylist() == [
        "e0",
        "e1",
    ]

    run = tmp_path / "run-slice"  # a slice, streamed (skip/take)
    ok(load(run, {"name": str(ds), "split": "train[2:5]"}))
    assert [r["q"] for r in jsonl(run / "artifacts" / "data.jsonl")] == ["t2", "t3", "t4"]

    run = tmp_path / "run-percent"  # a percentage: datasets' own slicing
    ok(load(run, {"name": str(ds), "split": "train[:30%]"}))
    assert [r["q"] for r in jsonl(run / "artifacts" / "data.jsonl")] == ["t0", "t1", "t2"]
    # No scratch left: the contract's files only (progress.json: the last progress report).
    assert sorted(p.name for p in run.iterdir()) in (
        ["artifacts", "params.json"],
        ["artifacts", "params.json", "progress.json"],
    )

    done = load(tmp_path / "run-bad", {"name": str(ds), "split": "validation"})
    assert done.returncode == 2 and "params.split" in done.stderr, done.stderr


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, ["params.urls", "params.name"]),
        ({"urls": "x.jsonl", "name": "a/b"}, ["params.urls", "params.name"]),
        ({"urls": "PLACEHOLDER/a.jsonl", "format": "xml"}, ["params.format", "xml"]),
        ({"urls": "/no/such/file.jsonl"}, ["params.urls", "/no/such/file.jsonl", "does not exist"]),
    ],
)
def test_bad_params(tmp_path: Path, params: dict[str, Any], expected: list[str]) -> None:
    done = load(tmp_path / "run", params)
    assert done.returncode == 2, done.stdout + done.stderr
    for text in expected:
        assert text in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_sources_name_the_url_and_line(tmp_path: Path, files: Files) -> None:
    errors: list[str] = []
    good = files.add("/good.jsonl", '{"q": 1}\n')
    missing = files.url("/missing.jsonl")
    done = load(tmp_path / "r1", {"urls": f"{good} {missing}"})
    errors.append(done.stderr)
    assert done.returncode == 2 and missing in done.stderr and "404" in done.stderr, done.stderr
    assert not (tmp_path / "r1" / "artifacts" / "data.jsonl").exists()

    unreachable = f"http://127.0.0.1:{_refused_port()}/data.jsonl"
    errors.append((done := load(tmp_path / "r2", {"urls": unreachable})).stderr)
    assert done.returncode == 1 and unreachable in done.stderr, done.stderr
    assert "cannot connect" in done.stderr

    bad = files.add("/bad.jsonl", '{"q": 1}\n{"q": 2}\n{"q": 3,}\n')
    errors.append((done := load(tmp_path / "r3", {"urls": bad})).stderr)
    assert done.returncode == 1 and f"{bad} line 3: not valid JSON" in done.stderr, done.stderr

    arr = files.add("/bad.json", '[\n  {"q": 1},\n  {"q": 2}\n  {"q": 3}\n]')
    errors.append((done := load(tmp_path / "r4", {"urls": arr})).stderr)
    assert done.returncode == 1 and f"{arr} line 4" in done.stderr, done.stderr

    not_rows = files.add("/list.jsonl", '{"q": 1}\n[1, 2]\n')
    errors.append((done := load(tmp_path / "r5", {"urls": not_rows})).stderr)
    assert "line 2: an array where a JSON object" in done.stderr, done.stderr

    unknown = files.add("/download?id=3", "a,b\n", "application/octet-stream")
    errors.append((done := load(tmp_path / "r6", {"urls": unknown})).stderr)
    assert done.returncode == 2 and "cannot tell the data format" in done.stderr, done.stderr
    assert len(errors) == 6 and not any("Traceback" in e for e in errors)
