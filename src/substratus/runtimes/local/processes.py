"""Starting, watching and stopping workload processes.

Each workload runs in its own session (process group) under a tiny ``sh`` wrapper that writes
the exit code to a file, so a supervisor restarted after a crash can adopt processes it did
not start and still learn how they ended.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

# "$1" is the exit file, then the cgroup.procs files to join up to "--", then the workload's
# argv. $0 names the wrapper, so a program that cannot be found is reported as
# "substratus-run: N: PROGRAM: not found". The code is written to a temp name then renamed,
# so a reader never sees a half-written one.
_WRAPPER = """x=$1; shift; rc=0
while [ "$1" != "--" ]; do
  if [ "$rc" = 0 ] && ! (echo $$ >"$1"); then
    echo "substratus-run: cannot join the cgroup $1: the limits would not hold" >&2; rc=125
  fi
  shift
done
shift
if [ "$rc" = 0 ]; then "$@"; rc=$?; fi
echo "$rc" >"$x.tmp" && mv "$x.tmp" "$x"; exit "$rc"
"""


def start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (field 22 of /proc/PID/stat), to detect PID reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; fields after it are space-separated.
    return stat.rsplit(")", 1)[1].split()[19]


def spawn(
    argv: list[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log: Path,
    exit_file: Path,
    cgroups: Iterable[Path] = (),
) -> subprocess.Popen[bytes]:
    """Start ``argv`` under the wrapper, in the given cgroups (their directories). Raises
    OSError or ValueError (e.g. a NUL byte) when it cannot be started."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        exit_file.unlink()
    procs = [str(Path(c) / "cgroup.procs") for c in cgroups]
    with open(log, "ab", buffering=0) as out:
        return subprocess.Popen(
            ["/bin/sh", "-c", _WRAPPER, "substratus-run", str(exit_file), *procs, "--", *argv],
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def alive(pid: int, pid_start: str | None) -> bool:
    current = start_time(pid)
    if current is None:
        return False
    if pid_start is not None and current != pid_start:
        return False  # the PID was reused by another process
    # A zombie has exited; only its parent can reap it.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_foreign(pid: int, pid_start: str | None, stop: float | None = None) -> None:
    """Block until a process that is not our child exits (pidfd where available)."""
    try:
        fd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        fd = -1
    try:
        if fd >= 0 and alive(pid, pid_start):
            select.select([fd], [], [], stop)
            return
        while alive(pid, pid_start):
            time.sleep(0.2)
    finally:
        if fd >= 0:
            os.close(fd)


def read_exit_code(exit_file: Path) -> int | None:
    try:
        return int(exit_file.read_text().strip())
    except (OSError, ValueError):
        return None


def terminate_group(pid: int, pid_start: str | None, grace: float = 5.0) -> None:
    """SIGTERM the workload's process group, then SIGKILL it after ``grace`` seconds."""
    if not alive(pid, pid_start):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not alive(pid, pid_start):
            break
        time.sleep(0.05)
    # Children that ignored SIGTERM, or a group whose leader already went, are killed too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def tail(path: Path, lines: int = 20, max_bytes: int = 64 * 1024) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])
