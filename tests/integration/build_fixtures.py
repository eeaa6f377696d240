"""Helpers for the build tests: real git repositories and a local base image for containers."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import tarfile
from pathlib import Path

from substratus.runtimes.local.engines import Engine

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}

# Made by hack/container-engine.sh, or by ensure_base_image() below.
BASE_IMAGE = "localhost/substratus-busybox:latest"
BUSYBOX_APPLETS = ("sh", "cat", "cp", "echo", "env", "httpd", "id", "ls", "mkdir", "sleep")


def make_repo(path: Path, files: dict[str, str], *, branch: str = "main") -> str:
    """A git repository at `path` with one commit holding `files`; returns the commit sha."""
    env = {**os.environ, **GIT_ENV}

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(path), *args], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()

    path.mkdir(parents=True)
    git("init", "-q", "-b", branch)
    for name, content in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(content)
    git("add", "-A")
    git("commit", "-q", "-m", "initial")
    return git("rev-parse", "HEAD")


def static_busybox() -> Path | None:
    """Debian's busybox-static binary, which runs in an otherwise empty root filesystem."""
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        path = Path(candidate)
        if path.is_file():
            out = subprocess.run(["file", "-L", str(path)], capture_output=True, text=True)
            if "statically linked" in out.stdout or shutil.which("file") is None:
                return path
    return None


def ensure_base_image(engine: Engine) -> str | None:
    """BASE_IMAGE, imported from a busybox rootfs if it is not there; None if it cannot be."""
    if engine.image_exists(BASE_IMAGE):
        return BASE_IMAGE
    busybox = static_busybox()
    if busybox is None:
        return None
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for directory in ("bin", "tmp", "etc", "content"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if directory == "tmp" else 0o755
            archive.addfile(info)
        archive.add(str(busybox), arcname="bin/busybox")
        for applet in BUSYBOX_APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            archive.addfile(info)
        for name, text in (
            ("etc/passwd", "root:x:0:0:root:/:/bin/sh\n"),
            ("etc/group", "root:x:0:\n"),
        ):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    subprocess.run(
        [engine.binary, "import", "--change", 'CMD ["/bin/sh"]', "--change", "ENV PATH=/bin",
         "-", BASE_IMAGE],
        input=buffer.getvalue(),
        capture_output=True,
        check=True,
    )  # fmt: skip
    return BASE_IMAGE


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
