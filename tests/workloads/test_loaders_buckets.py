"""Both loaders reading `s3://` URLs from a real S3-compatible server (SeaweedFS)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from substratus.storage.backends import parse_url
from tests.workloads import test_dataset_loader as datasets
from tests.workloads import test_model_loader as models

pytestmark = pytest.mark.integration


@pytest.fixture
def bucket(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(name)
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return name


def put(url: str, data: bytes) -> None:
    from substratus.storage.backends import backend_for

    fs = backend_for(parse_url(url)).filesystem()
    with fs.open(parse_url(url).path, "wb") as f:
        f.write(data)


def test_model_loader_reads_a_bucket_directory(bucket: str, tmp_path: Path) -> None:
    weights = os.urandom(300_000)
    put(f"s3://{bucket}/models/m/config.json", b"{}")
    put(f"s3://{bucket}/models/m/model.safetensors", weights)
    put(f"s3://{bucket}/models/m/pytorch_model.bin", b"old")
    run = tmp_path / "run"
    models.ok(models.load(run, {"url": f"s3://{bucket}/models/m/"}))
    assert models.tree(run / "artifacts") == ["config.json", "model.safetensors"]
    assert (run / "artifacts" / "model.safetensors").read_bytes() == weights


def test_dataset_loader_reads_bucket_files(bucket: str, tmp_path: Path) -> None:
    put(f"s3://{bucket}/d/a.jsonl", b'{"text": "one"}\n{"text": "two"}\n')
    put(f"s3://{bucket}/d/b.csv", b"text\nthree\n")
    run = tmp_path / "run"
    urls = f"s3://{bucket}/d/a.jsonl s3://{bucket}/d/b.csv"
    datasets.ok(datasets.load(run, {"urls": urls}))
    rows = [
        json.loads(line) for line in (run / "artifacts" / "data.jsonl").read_text().splitlines()
    ]
    assert [r["text"] for r in rows] == ["one", "two", "three"]
    info = json.loads((run / "artifacts" / "dataset.json").read_text())
    assert info["rows"] == 3
