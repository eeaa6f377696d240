"""The container contract holds for local processes: /content, /model/saved, read-only mounts,
whether the supervisor runs as root or through a user namespace; and build sources the
workload may change without touching the build cache, or that do not match their md5."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from substratus.runtimes.local import sandbox as sandbox_mod
from substratus.runtimes.local.sandbox import SAVED_MODEL, Sandbox
from tests.conftest import Local

pytestmark = pytest.mark.integration

BASE = {"name": "substratusai/base"}
# What a program written to the contract does, with absolute paths only.
CONTRACT = (
    'test "$(pwd)" = /content || { echo "cwd $(pwd)"; exit 3; }; '
    "cat /content/model/w > /content/artifacts/model.txt || exit 4; "
    "cp /content/params.json /content/artifacts/ || exit 5; "
    "if touch /content/model/x 2>/dev/null; then exit 6; fi; "
    "if test -e /model/saved; then exit 7; fi; "  # only a Server has /model/saved
    "id -u > /content/artifacts/uid"
)


@pytest.fixture
def host_paths_absent() -> Iterator[None]:
    """The host has no /content or /model before, and none appears: nothing leaks out."""
    if Path("/content").exists() or Path("/model").exists():
        pytest.skip("this host has its own /content or /model")
    yield
    assert not Path("/content").exists() and not Path("/model").exists()


def needs_namespaces() -> None:
    box = sandbox_mod._probe("auto")
    if box.mode is None:
        pytest.skip(f"no private mount namespace here: {box.reason}")


def out_dir(obj: dict[str, object]) -> Path:
    status = obj["status"]
    assert isinstance(status, dict)
    return Path(str(status["url"]).removeprefix("file://"))


@pytest.mark.parametrize("mode", ["auto", "user"])
def test_process_job_gets_the_container_paths(
    local: Local, mode: str, monkeypatch: pytest.MonkeyPatch, host_paths_absent: None
) -> None:
    needs_namespaces()
    if sandbox_mod._probe(mode).mode is None:
        pytest.skip(f"no {mode} namespace here: {sandbox_mod._probe(mode).reason}")
    monkeypatch.setenv("SUBSTRATUS_MOUNT_NAMESPACE", mode)
    local.apply("Model", "base", {"image": BASE, "command": ["sh", "-c", "echo w > artifacts/w"]})
    spec = {"image": BASE, "command": ["sh", "-c", CONTRACT], "baseModel": {"name": "base"}}
    local.apply("Model", "ft", {**spec, "params": {"epochs": 2}})
    obj = local.wait("Model", "ft", timeout=60)
    out = out_dir(obj)
    assert (out / "model.txt").read_text() == "w\n"
    assert '"epochs": 2' in (out / "params.json").read_text()
    assert (out / "uid").read_text().strip() == str(os.getuid())


def test_run_and_artifact_directories_behind_symlinks(
    local: Local, tmp_path: Path, host_paths_absent: None
) -> None:
    # A home whose runs/ and artifacts/ live on another disk, reached through symlinks.
    needs_namespaces()
    for name in ("runs", "artifacts"):
        (tmp_path / "elsewhere" / name).mkdir(parents=True)
        local.paths.home.mkdir(parents=True, exist_ok=True)
        (local.paths.home / name).symlink_to(tmp_path / "elsewhere" / name)
    local.apply("Model", "base", {"image": BASE, "command": ["sh", "-c", "echo w > artifacts/w"]})
    spec = {"image": BASE, "command": ["sh", "-c", CONTRACT], "baseModel": {"name": "base"}}
    local.apply("Model", "ft", spec)
    out = out_dir(local.wait("Model", "ft", timeout=60))
    assert (out / "model.txt").read_text() == "w\n"


def test_server_finds_its_model_at_model_saved(local: Local, host_paths_absent: None) -> None:
    needs_namespaces()
    local.apply("Model", "m", {"image": BASE, "command": ["sh", "-c", "echo w > artifacts/w"]})
    serve = (
        "cat /model/saved/w > served.txt && ls /content > listing.txt && "
        "if touch /model/saved/x 2>/dev/null; then exit 7; fi; "
        "exec python -m http.server $PORT --bind 127.0.0.1"
    )
    local.apply("Server", "s", {"image": BASE, "command": ["sh", "-c", serve], "model": "m"})
    url = local.wait("Server", "s")["status"]["url"]
    with urllib.request.urlopen(url + "/served.txt", timeout=5) as resp:
        assert resp.read() == b"w\n"
    with urllib.request.urlopen(url + "/listing.txt", timeout=5) as resp:
        names = resp.read().split()
        assert names == [b"artifacts", b"listing.txt", b"model", b"params.json", b"served.txt"]


def test_without_namespaces_the_log_says_so(local: Local, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUBSTRATUS_MOUNT_NAMESPACE", "none")
    local.apply("Model", "m", {"image": BASE, "command": ["sh", "-c", "pwd > artifacts/cwd"]})
    obj = local.wait("Model", "m")
    assert (out_dir(obj) / "cwd").read_text().strip() != "/content"
    log = b"".join(local.client.logs("Model", "default", "m")).decode()
    assert "note: no private mount namespace (SUBSTRATUS_MOUNT_NAMESPACE=none)" in log


def test_unprivileged_user_gets_the_paths_through_a_user_namespace() -> None:
    """The real script as a non-root user (nobody): the path a laptop user takes."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root to become another user (setpriv)")
    nobody = 65534
    top = Path(tempfile.mkdtemp(prefix="substratus-userns-"))
    try:
        top.chmod(0o755)
        (top / "run").mkdir()
        (top / "model").mkdir()
        (top / "model" / "w").write_text("w\n")
        for p in (top / "run", top / "model", top / "model" / "w"):
            os.chown(p, nobody, nobody)
        drop = ["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups"]
        probe = subprocess.run(
            [*drop, "unshare", "--user", "--map-root-user", "true"], capture_output=True
        )
        if probe.returncode != 0:
            pytest.skip(f"user namespaces are not allowed here: {probe.stderr.decode().strip()}")
        script = (
            'test "$(pwd)" = /content && cat /model/saved/w /content/model/w && id -u && '
            "! (: > /model/saved/x) 2>/dev/null && echo made > /content/artifact"
        )
        box = Sandbox("user", unshare=shutil.which("unshare") or "unshare")
        binds = sandbox_mod.binds("Server", top / "model", None)
        argv = box.argv(["sh", "-c", script], top / "run", binds)
        # Sandbox.argv maps back to the caller's ids: here the caller must be nobody.
        argv[argv.index(f"{os.getuid()}:{os.getgid()}")] = f"{nobody}:{nobody}"
        done = subprocess.run([*drop, *argv], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["w", "w", str(nobody)]
        assert (top / "run" / "artifact").read_text() == "made\n"
        assert SAVED_MODEL == "/model/saved"
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_notebook_edits_never_reach_the_build_cache(local: Local, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "notes.txt").write_text("original\n")
    (ctx / "nb.yaml").write_text(
        "apiVersion: substratus.ai/v1\nkind: Notebook\nmetadata: {name: nb}\n"
        "spec:\n  image: {upload: {}}\n  command: [sh, -c, 'echo saved > notes.txt; "
        "echo ok > api; exec python -m http.server $PORT --bind 127.0.0.1']\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "substratus.cli.main", "apply", "-f", str(ctx / "nb.yaml")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    url = local.wait("Notebook", "nb", timeout=60)["status"]["url"]
    with urllib.request.urlopen(url + "/notes.txt", timeout=5) as resp:
        assert resp.read() == b"saved\n"  # the notebook changed its own copy...
    cached = list(local.paths.cache.rglob("notes.txt"))
    assert cached, "the upload is in the build cache"
    assert {p.read_text() for p in cached} == {"original\n"}  # ...and not the cache


def test_upload_that_does_not_match_its_md5_is_refused(local: Local, tmp_path: Path) -> None:
    from substratus.storage import pack_context, upload_to_signed_url

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "run.sh").write_text("echo hi\n")
    tarball = tmp_path / "ctx.tar.gz"
    md5 = pack_context(ctx, tarball)
    wrong = "0" * 32 if md5 != "0" * 32 else "1" * 32
    image = {"upload": {"md5": wrong, "requestId": "r1"}}
    local.apply("Model", "up", {"image": image, "command": ["sh", "run.sh"]})
    obj = local.wait("Model", "up", lambda o: bool(o["status"].get("uploadUrl")))
    upload_to_signed_url(obj["status"]["uploadUrl"], tarball)
    failed = local.wait_reason("Model", "up", "BuildFailed", timeout=60)
    message = failed["status"]["conditions"][0]["message"]
    assert "spec.image.upload.md5" in message and md5 in message and wrong in message
    assert not failed["status"].get("ready")
