"""The contract's helper inside a workload pod (the operator's image runs it; see pods.py).

    python -m substratus.runtimes.kubernetes.podhelper init --bin DIR --workdir DIR \\
        [--fetch URL=DIR ...]
    python -m substratus.runtimes.kubernetes.podhelper commit --exit-file F --artifacts DIR \\
        --to OBJECT_URL --version VERSION

``init`` (an init container) copies a static shell into ``--bin`` (the workload's command runs
under it, so any image works), makes ``artifacts/`` in the working directory, and downloads
each committed version into its directory, checked against its manifest. ``commit`` (beside
the workload) waits for the workload's exit code; on 0 it commits ``artifacts/`` as
``VERSION`` of the object (files first, the manifest last) and exits 0; otherwise it exits with
the workload's code without storing anything.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from substratus.storage import ArtifactStore

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


def commit(exit_file: Path, artifacts: Path, object_url: str, version: str) -> int:
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
    a = ap.parse_args(argv)
    os.umask(0o022)
    if a.command == "init":
        return init(a.bin, a.workdir, a.fetch)
    return commit(a.exit_file, a.artifacts, a.to, a.version)


if __name__ == "__main__":
    sys.exit(main())
