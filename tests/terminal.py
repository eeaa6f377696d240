"""Running `sub` on a pseudo-terminal, as a person at a terminal runs it (bars, live lines)."""

from __future__ import annotations

import os
import pty
import re
import select
import sys
import time
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colours and cursor moves


def sub_on_terminal(*args: str, timeout: float = 120, columns: int = 100) -> tuple[int, str]:
    """`sub ARGS` on a pty until it exits (or ``timeout``, then killed): its exit code and
    everything it drew, raw (with escape sequences; ``ANSI.sub("", ...)`` strips them)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: sub, as a terminal's shell would start it
        sub_path = str(Path(sys.executable).parent / "sub")
        os.execve(sub_path, [sub_path, *args], dict(os.environ, COLUMNS=str(columns)))
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal: it has exited
                break
            if not chunk:
                break
            seen += chunk
        else:
            os.kill(pid, 9)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), seen.decode(errors="replace")
