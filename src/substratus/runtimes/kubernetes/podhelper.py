"""The contract's helper inside a workload pod (the operator's image runs it; see pods.py).

    python -m substratus.runtimes.kubernetes.podhelper init --bin DIR --workdir DIR \\
        [--fetch URL=DIR ...]
    python -m substratus.runtimes.kubernetes.podhelper commit --exit-file F --artifacts DIR \\
        --to OBJECT_URL --version VERSION
    python -m substratus.runtimes.kubernetes.podhelper context --dest DIR \\
        (--upload URL [--md5 MD5] | --git URL [--ref REF] [--commit SHA])

``init`` (an init container) copies a static shell into ``--bin`` (the workload's command runs
under it, so any image works), makes ``artifacts/`` in the working directory, and downloads
each committed version into its directory, checked against its manifest. ``commit`` (beside
the workload) waits for the workload's exit code; on 0 it commits ``artifacts/`` as
``VERSION`` of the object (files first, the manifest last) and exits 0; otherwise it exits with
the workload's code without storing anything. ``context`` (a build Job's init container) puts a
build context in ``--dest``: an uploaded tarball, checked against its md5 before anything is
unpacked, or a clone of a repository at the commit the operator resolved.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

from substratus.core.progress import MAX_PROGRESS_BYTES, PROGRESS_FILE
from substratus.core.redaction import redact_userinfo
from substratus.storage import ArtifactStore, StorageError, file_md5, unpack_context

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static


def init(bin_dir: Path, workdir: Path, fetches: list[str]) -> int:
    if not BUSYBOX.is_file():
        print(f"substratus-init: no static shell at {BUSYBOX} in this image", file=sys.stderr)
        return 2
    # artifacts/ is there from the start, as locally, writable whatever user the image runs as.
    (workdir / "artifacts").mkdir(parents=True, exist_ok=True)
    (workdir / "artifacts").chmod(0o777)
    bin_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, bin_dir / "busybox")
    (bin_dir / "sh").unlink(missing_ok=True)
    (bin_dir / "sh").symlink_to("busybox")
    for spec in fetches:
        url, _, dest = spec.rpartition("=")
        started = time.monotonic()
        got = ArtifactStore(url).fetch(url, Path(dest))
        if got != Path(dest):  # a file:// store hands back its own directory
            shutil.copytree(got, dest, dirs_exist_ok=True)
        took = time.monotonic() - started
        print(f"substratus-init: fetched {url} into {dest} in {took:.1f}s", flush=True)
    return 0


def read_exit_code(path: Path) -> int | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    # The shell writes "N\n": until the newline is there, the write is not finished.
    return int(text) if text.endswith("\n") and text.strip().isdigit() else None


def serve_progress(workdir: Path, port: int) -> None:
    """``GET /progress``: the job's progress.json as it is now (204 before the first report),
    for the operator, which reads it through the API server (pods/proxy)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/progress":
                self.send_error(404)
                return
            try:
                with open(workdir / PROGRESS_FILE, "rb") as f:
                    body = f.read(MAX_PROGRESS_BYTES + 1)
            except OSError:
                body = b""
            self.send_response(200 if body else 204)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, name="progress", daemon=True).start()


def commit(
    exit_file: Path, artifacts: Path, object_url: str, version: str, progress_port: int = 0
) -> int:
    if progress_port:
        serve_progress(artifacts.parent, progress_port)
    while (code := read_exit_code(exit_file)) is None:
        time.sleep(0.5)
    if code != 0:
        print(f"substratus-commit: the command exited {code}; nothing stored", flush=True)
        return code
    artifacts.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    committed = ArtifactStore(object_url).commit(artifacts, object_url, version)
    files = len(committed.manifest.files)
    took = time.monotonic() - started
    print(f"substratus-commit: {files} files to {committed.url} in {took:.1f}s", flush=True)
    return 0


def _fail(message: str) -> int:
    print(f"substratus-context: {message}", file=sys.stderr, flush=True)
    return 3


def fetch_upload(url: str, md5: str | None, dest: Path) -> int:
    tarball = dest.parent / "context.tar.gz"
    try:
        ArtifactStore(url).get_file(url, tarball)
    except StorageError as e:
        return _fail(f"spec.image.upload: the uploaded context cannot be read: {e}")
    actual = file_md5(tarball)
    if md5 and actual != md5:
        return _fail(
            f"spec.image.upload.md5: the uploaded context has md5 {actual}, expected {md5}"
        )
    dest.mkdir(parents=True, exist_ok=True)
    try:
        unpack_context(tarball, dest)
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        return _fail(f"spec.image.upload: not a valid build context tarball: {e}")
    finally:
        tarball.unlink(missing_ok=True)
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"substratus-context: unpacked {url} ({actual}, {size} bytes)", flush=True)
    return 0


def clone(url: str, ref: str | None, commit: str | None, dest: Path) -> int:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    argv = ["git", "clone", "--quiet", "--single-branch"]
    argv += (["--branch", ref] if ref else []) + ["--", url, str(dest)]
    steps = [argv]
    if commit:
        steps.append(["git", "-C", str(dest), "checkout", "--quiet", "--detach", commit])
    for step in steps:
        done = subprocess.run(step, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            error = redact_userinfo(done.stderr.strip())
            return _fail(f"spec.image.git: {' '.join(step[:2])} failed: {error}")
    head = subprocess.run(
        ["git", "-C", str(dest), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    shutil.rmtree(dest / ".git", ignore_errors=True)  # not part of the context
    print(f"substratus-context: cloned {redact_userinfo(url)} at {head}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="podhelper")
    sub = ap.add_subparsers(dest="command", required=True)
    p_init = sub.add_parser("init")
    p_init.add_argument("--bin", type=Path, required=True)
    p_init.add_argument("--workdir", type=Path, required=True)
    p_init.add_argument("--fetch", action="append", default=[], metavar="URL=DIR")
    p_commit = sub.add_parser("commit")
    p_commit.add_argument("--exit-file", type=Path, required=True)
    p_commit.add_argument("--artifacts", type=Path, required=True)
    p_commit.add_argument("--to", required=True, metavar="OBJECT_URL")
    p_commit.add_argument("--version", required=True)
    p_commit.add_argument("--progress-port", type=int, default=0)
    p_context = sub.add_parser("context")
    p_context.add_argument("--dest", type=Path, required=True)
    source = p_context.add_mutually_exclusive_group(required=True)
    source.add_argument("--upload", metavar="URL")
    source.add_argument("--git", metavar="URL")
    p_context.add_argument("--md5")
    p_context.add_argument("--ref")
    p_context.add_argument("--commit")
    a = ap.parse_args(argv)
    os.umask(0o022)  # the builder runs as another user: it must read what is written here
    if a.command == "init":
        return init(a.bin, a.workdir, a.fetch)
    if a.command == "context":
        toml = os.environ.get("SUBSTRATUS_BUILDKITD_TOML")
        if toml:  # BuildKit's daemon settings, from the operator's (builds.buildkitd_toml)
            a.dest.parent.mkdir(parents=True, exist_ok=True)
            (a.dest.parent / "buildkitd.toml").write_text(toml)
        if a.upload:
            return fetch_upload(a.upload, a.md5, a.dest)
        return clone(a.git, a.ref, a.commit, a.dest)
    return commit(a.exit_file, a.artifacts, a.to, a.version, a.progress_port)


if __name__ == "__main__":
    sys.exit(main())
