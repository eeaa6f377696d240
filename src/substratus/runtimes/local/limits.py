"""``resources.memory`` and ``resources.cpu`` enforced on local processes through cgroups.

Each run that asks for a limit gets its own cgroup under a ``substratus`` parent: in cgroup v1
under the supervisor's own cgroup of each controller (so the runs stay inside whatever limits
the supervisor has), in cgroup v2 beside it (a v2 cgroup that holds processes cannot give
controllers to children). The workload's wrapper joins the cgroup before it starts the program,
so no child escapes it; when the run ends, the cgroup (and the parent, once empty) is removed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PARENT = "substratus"
PERIOD_US = 100_000
_lock = threading.Lock()  # creating a run's cgroup never races the removal of an empty parent


class CgroupError(Exception):
    """The limits cannot be enforced here; the message says why."""


@dataclass(frozen=True)
class Hierarchy:
    version: int  # 1 or 2
    mountpoint: Path
    own: Path  # the supervisor's cgroup directory in this hierarchy
    controllers: frozenset[str]


def hierarchies(mountinfo: str, proc_cgroup: str, root: Path = Path("/")) -> list[Hierarchy]:
    """The cgroup hierarchies carrying memory or cpu, from /proc/self/mountinfo and
    /proc/self/cgroup (``root`` prefixes the paths read, for tests)."""
    own: dict[str, str] = {}  # "memory", "cpu,cpuacct" or "" (v2) -> path
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            own[parts[1]] = parts[2]
    found = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        mount_root, mountpoint = fields[3], root / fields[4].lstrip("/")
        if tail[0] == "cgroup2":
            version, key = 2, ""
            try:
                names = (mountpoint / "cgroup.controllers").read_text().split()
            except OSError:
                continue
        else:
            version = 1
            names = tail[2].split(",")
        wanted = frozenset(names) & {"memory", "cpu"}
        if version == 1:  # each v1 controller is in one hierarchy: its line in /proc/self/cgroup
            key = next((k for k in own if wanted & set(k.split(","))), "-")
        if not wanted or key not in own:
            continue
        path = own[key]
        rel = path[len(mount_root) :] if path.startswith(mount_root) else ""
        found.append(Hierarchy(version, mountpoint, mountpoint / rel.lstrip("/"), wanted))
    # v1 first: on hybrid systems the v2 mount usually has no controllers, but if both
    # offer one, the v1 hierarchy is where the kernel accounts it.
    return sorted(found, key=lambda h: h.version)


def system_hierarchies() -> list[Hierarchy]:
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
        cgroup = Path("/proc/self/cgroup").read_text()
    except OSError:
        return []
    return hierarchies(mountinfo, cgroup)


def run_name(workdir: Path, readable: str) -> str:
    """A cgroup name for one run: readable, unique per run directory (so per
    SUBSTRATUS_HOME too), short enough for the kernel."""
    digest = hashlib.sha256(f"{workdir}\0{readable}".encode()).hexdigest()[:10]
    return f"{readable[:180]}-{digest}"


def create(
    name: str,
    memory_gb: float | None,
    cpu: float | None,
    found: Iterable[Hierarchy] | None = None,
) -> list[Path]:
    """Make the run's cgroup(s) with the limits; return their directories (join each by
    writing a PID to its cgroup.procs). Raises CgroupError, having removed what it made."""
    wanted = {c for c, v in (("memory", memory_gb), ("cpu", cpu)) if v is not None}
    if not wanted:
        return []
    chosen: dict[Hierarchy, set[str]] = {}
    for h in system_hierarchies() if found is None else found:
        take = (wanted - {c for cs in chosen.values() for c in cs}) & h.controllers
        if take:
            chosen[h] = take
    missing = wanted - {c for cs in chosen.values() for c in cs}
    if missing:
        raise CgroupError(
            f"no cgroup hierarchy offers the {' and '.join(sorted(missing))} controller"
        )
    made: list[Path] = []
    try:
        for h, controllers in chosen.items():
            path = _make(h, controllers, name)
            made.append(path)
            _limit(
                h.version,
                path,
                memory_gb if "memory" in controllers else None,
                cpu if "cpu" in controllers else None,
            )
    except OSError as exc:
        remove(made)
        raise CgroupError(f"cannot set up a cgroup: {exc}") from exc
    return made


def _parent(h: Hierarchy) -> Path:
    if h.version == 1 or h.own == h.mountpoint:
        return h.own / PARENT
    return h.own.parent / PARENT


def _make(h: Hierarchy, controllers: set[str], name: str) -> Path:
    parent = _parent(h)
    path = parent / name
    if path.exists():
        remove([path], keep_parent=True)  # left by a run whose supervisor died
    with _lock:
        parent.mkdir(exist_ok=True)
        if h.version == 2:
            enable = " ".join(f"+{c}" for c in sorted(controllers))
            for control in (
                parent.parent / "cgroup.subtree_control",
                parent / "cgroup.subtree_control",
            ):
                if not controllers <= set(control.read_text().split()):
                    control.write_text(enable)
        path.mkdir()
    return path


def _limit(version: int, path: Path, memory_gb: float | None, cpu: float | None) -> None:
    if memory_gb is not None:
        limit = str(max(1 << 20, int(memory_gb * 1e9)))
        if version == 1:
            (path / "memory.limit_in_bytes").write_text(limit)
            # Without this, a workload over its limit swaps instead of being stopped.
            _try_write(path / "memory.memsw.limit_in_bytes", limit)
        else:
            (path / "memory.max").write_text(limit)
            _try_write(path / "memory.swap.max", "0")
    if cpu is not None:
        quota = max(1000, int(cpu * PERIOD_US))
        if version == 1:
            (path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (path / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (path / "cpu.max").write_text(f"{quota} {PERIOD_US}")


def _try_write(path: Path, value: str) -> None:
    with contextlib.suppress(OSError):
        if path.exists():
            path.write_text(value)


def remove(paths: Iterable[Path | str], keep_parent: bool = False, wait: float = 5.0) -> None:
    """Kill what is left in each cgroup, remove it, then its parent if that is empty."""
    for path in map(Path, paths):
        deadline = time.monotonic() + wait
        while True:
            _kill_all(path)
            try:
                path.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        if not keep_parent:
            with _lock, contextlib.suppress(OSError):
                path.parent.rmdir()  # fails while other runs are in it


def _kill_all(path: Path) -> None:
    kill = path / "cgroup.kill"  # v2, Linux 5.14+
    if kill.exists():
        with contextlib.suppress(OSError):
            kill.write_text("1")
            return
    try:
        pids = (path / "cgroup.procs").read_text().split()
    except OSError:
        return
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def procs_files(paths: Iterable[Path]) -> list[Path]:
    return [Path(p) / "cgroup.procs" for p in paths]
