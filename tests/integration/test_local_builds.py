"""Images built from git and from uploads, run by the local runtime (no container engine)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Local
from tests.integration.build_fixtures import make_repo

pytestmark = pytest.mark.integration

RUN_SH = "#!/bin/sh\necho built-from-source > artifacts/out.txt\nls > artifacts/listing.txt\n"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    make_repo(tmp_path / "repo", {"trainer/run.sh": RUN_SH})
    return tmp_path / "repo"


def test_model_built_from_git_runs_its_sources(local: Local, repo: Path) -> None:
    spec = {
        "image": {"git": {"url": repo.as_uri(), "branch": "main", "path": "trainer"}},
        "command": ["sh", "run.sh"],
    }
    local.apply("Model", "m", spec)
    obj = local.wait("Model", "m", timeout=60)
    assert obj["status"]["image"].startswith("dir:")
    out = Path(obj["status"]["url"].removeprefix("file://"))
    assert (out / "out.txt").read_text() == "built-from-source\n"
    assert "run.sh" in (out / "listing.txt").read_text()
    built = next(c for c in obj["status"]["conditions"] if c["type"] == "ImageBuilt")
    assert built["status"] == "True"


def test_git_url_that_cannot_be_cloned_is_a_build_failure(local: Local, tmp_path: Path) -> None:
    spec = {"image": {"git": {"url": (tmp_path / "missing").as_uri()}}, "command": ["true"]}
    local.apply("Model", "m", spec)
    obj = local.wait_reason("Model", "m", "BuildFailed", timeout=60)
    message = obj["status"]["conditions"][0]["message"]
    assert "image.git.url" in message


def sub(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "substratus.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_upload_builds_the_local_directory_honouring_dockerignore(
    local: Local, tmp_path: Path
) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "run.sh").write_text(RUN_SH)
    (ctx / "secret.txt").write_text("do not ship")
    (ctx / ".dockerignore").write_text("secret.txt\n")
    (ctx / "model.yaml").write_text(
        "apiVersion: substratus.ai/v1\nkind: Model\nmetadata: {name: up}\n"
        "spec: {image: {upload: {}}, command: [sh, run.sh]}\n"
    )
    r = sub("apply", "-f", str(ctx / "model.yaml"), "--wait", "--timeout", "60s")
    assert r.returncode == 0, r.stderr
    obj = local.get("Model", "up")
    upload = obj["spec"]["image"]["upload"]
    assert len(upload["md5"]) == 32 and upload["requestId"]
    out = Path(obj["status"]["url"].removeprefix("file://"))
    listing = (out / "listing.txt").read_text().split()
    assert "run.sh" in listing and "secret.txt" not in listing
    # Re-applying the same directory changes nothing and uploads nothing.
    r = sub("apply", "-f", str(ctx / "model.yaml"))
    assert r.stdout.strip() == "model/up unchanged"


def test_upload_dir_that_does_not_exist_is_rejected(local: Local, tmp_path: Path) -> None:
    manifest = tmp_path / "nb.yaml"
    manifest.write_text(
        "apiVersion: substratus.ai/v1\nkind: Notebook\nmetadata: {name: nb}\n"
        "spec: {image: {upload: {}}}\n"
    )
    r = sub("apply", "-f", str(manifest), "--upload-dir", str(tmp_path / "nope"))
    assert r.returncode == 4
    assert "spec.image.upload" in r.stderr and "nope" in r.stderr
    assert local.client.list_objects("Notebook", None) == []


def test_upload_is_sent_while_the_base_model_is_still_pending(local: Local, tmp_path: Path) -> None:
    (tmp_path / "run.sh").write_text("cat model/w > artifacts/copy\n")
    (tmp_path / "ft.yaml").write_text(
        "apiVersion: substratus.ai/v1\nkind: Model\nmetadata: {name: ft}\n"
        "spec: {image: {upload: {}}, command: [sh, run.sh], baseModel: {name: later}}\n"
    )
    r = sub("apply", "-f", str(tmp_path / "ft.yaml"))
    assert r.returncode == 0, r.stderr
    local.wait_reason("Model", "ft", "BaseModelNotFound")
    local.apply(
        "Model",
        "later",
        {"image": {"name": "substratusai/base"}, "command": ["sh", "-c", "echo w > artifacts/w"]},
    )
    obj = local.wait("Model", "ft")
    assert (Path(obj["status"]["url"].removeprefix("file://")) / "copy").read_text() == "w\n"
