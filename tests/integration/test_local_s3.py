"""The local runtime with its artifacts in a real S3-compatible server (SeaweedFS)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from substratus.storage import ArtifactStore
from tests.conftest import Local
from tests.terminal import ANSI, sub_on_terminal

pytestmark = pytest.mark.integration

BASE = {"name": "substratusai/base"}


@pytest.fixture
def s3_local(local: Local, s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Local, str]:
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(bucket)
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    base = f"s3://{bucket}/substratus"
    monkeypatch.setenv("SUBSTRATUS_ARTIFACTS", base)
    return local, base


def test_models_commit_to_s3_and_fine_tunes_mount_from_it(s3_local: tuple[Local, str]) -> None:
    local, base = s3_local
    local.apply(
        "Model", "base", {"image": BASE, "command": ["sh", "-c", "echo W > artifacts/w.bin"]}
    )
    local.apply(
        "Model",
        "ft",
        {
            "image": BASE,
            "baseModel": {"name": "base"},
            "command": ["sh", "-c", "cat model/w.bin model/w.bin > artifacts/x"],
        },
    )
    base_obj = local.wait("Model", "base", timeout=60)
    ft = local.wait("Model", "ft", timeout=60)
    assert base_obj["status"]["url"].startswith(f"{base}/default/models/base/")
    store = ArtifactStore(base)
    manifest = store.read_manifest(ft["status"]["url"])
    assert manifest is not None and [f.path for f in manifest.files] == ["x"]
    assert manifest.files[0].size == 4

    local.client.delete("Model", "default", "ft")
    assert store.versions(store.object_url("default", "models", "ft")) == []
    assert store.versions(store.object_url("default", "models", "base")) != []


def test_upload_goes_through_a_presigned_s3_url(
    s3_local: tuple[Local, str], tmp_path: Path
) -> None:
    local, base = s3_local
    (tmp_path / "run.sh").write_text("echo from-upload > artifacts/o\n")
    (tmp_path / "m.yaml").write_text(
        "apiVersion: substratus.ai/v1\nkind: Model\nmetadata: {name: up}\n"
        "spec: {image: {upload: {}}, command: [sh, run.sh]}\n"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "substratus.cli.main",
            "apply",
            "-f",
            str(tmp_path / "m.yaml"),
            "--wait",
            "--timeout",
            "60s",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    obj = local.get("Model", "up")
    assert obj["status"]["uploadUrl"].startswith("http://127.0.0.1:")
    assert "X-Amz-Signature" in obj["status"]["uploadUrl"]
    store = ArtifactStore(base)
    out = tmp_path / "fetched"
    store.fetch(obj["status"]["url"], out)
    assert (out / "o").read_text() == "from-upload\n"
    # The tarball downloaded from the bucket for the build is not kept: the build cache holds
    # what it unpacked.
    assert not any((local.paths.cache / "uploads").glob("*"))


def test_a_large_upload_shows_a_bar_and_goes_up_in_parts(
    s3_local: tuple[Local, str], tmp_path: Path
) -> None:
    """`sub apply` of a context above the multipart threshold (256 MiB), on a terminal: a bar
    while it goes up in the parts the supervisor signed (S3's multipart upload, completed by
    the client), and the build runs from what arrived."""
    local, base = s3_local
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    # Incompressible, just above the threshold: four parts of 64 MiB and a short fifth.
    (ctx / "weights.bin").write_bytes(os.urandom((256 << 20) + (1 << 20)))
    (ctx / "run.sh").write_text("wc -c < weights.bin > artifacts/size\n")
    (ctx / "m.yaml").write_text(
        "apiVersion: substratus.ai/v1\nkind: Model\nmetadata: {name: big}\n"
        "spec: {image: {upload: {}}, command: [sh, run.sh]}\n"
    )
    code, screen = sub_on_terminal("apply", "-f", str(ctx / "m.yaml"))
    screen = ANSI.sub("", screen)
    assert code == 0, screen
    assert "uploading build context" in screen and "━" in screen, screen
    assert "MB in 5 parts)" in screen, screen
    obj = local.wait("Model", "big", timeout=180)
    parts = obj["status"]["uploadParts"]
    assert parts["uploadId"] and len(parts["urls"]) == 5 and parts["partSize"] == 64 << 20
    out = tmp_path / "fetched"
    ArtifactStore(base).fetch(obj["status"]["url"], out)
    assert (out / "size").read_text().strip() == str((256 << 20) + (1 << 20))
