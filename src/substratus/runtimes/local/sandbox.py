"""The container contract's paths for local processes: a private mount namespace.

A workload started as a process sees what a container would: its working directory is
``/content`` (the run directory), ``model/`` and ``data/`` are read-only, and a Server finds its
model at ``/model/saved`` too. Nothing is created on the host for this: inside the namespace a
small tmpfs is mounted over the run directory and becomes the new root; every top-level entry of
the real root is bind-mounted (recursively) into it, the run directory (still reachable through
an open descriptor) is bind-mounted on ``/content`` and on its own host path, and the workload is
chrooted there. The tmpfs is then made read-only, so ``/content`` and ``/model`` cannot be
shadowed by accident. When the last process of the namespace exits, all of it disappears.

Root does this directly. Other users do it inside a user namespace (mapped to root for the
set-up, then to their own uid again for the workload, so programs that refuse to run as root,
like Jupyter, still start). Where neither works, the workload runs in the run directory itself
and its log says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from substratus.core.contract import SEED_MODEL_PATH, WORKDIR

MODE_ENV = "SUBSTRATUS_MOUNT_NAMESPACE"  # auto (default) | root | user | none
CONTENT = WORKDIR
SAVED_MODEL = SEED_MODEL_PATH

# $1 the run directory, $2 "uid:gid" to map the workload back to (user mode) or "", then
# "source target" pairs to bind read-only (targets relative to the new root) up to "--", then
# the workload's argv. Tools come from a fixed PATH: the workload's PATH starts with the
# build's own directory, which must not provide a "mount".
_SCRIPT = r"""
die() { echo "substratus-sandbox: $*" >&2; exit 125; }
wpath=$PATH; PATH=/usr/sbin:/usr/bin:/sbin:/bin
u=$(command -v unshare) || die "unshare not found"
w=$1; ids=$2; shift 2
exec 3<"$w" || die "cannot open $w"
mount -t tmpfs -o mode=755,size=1m substratus-root "$w" || die "cannot mount a tmpfs on $w"
cd "$w" || die "cannot enter $w"
for e in /* /.[!.]*; do
  [ -e "$e" ] || [ -L "$e" ] || continue
  n=${e#/}
  case $n in content|model) continue ;; esac
  if [ -L "$e" ]; then ln -s "$(readlink "$e")" "$n" || die "cannot link $e"
  elif [ -d "$e" ]; then { mkdir "$n" && mount --rbind "$e" "$n"; } || die "cannot bind $e"
  else { : >"$n" && mount --bind "$e" "$n"; } || die "cannot bind $e"
  fi
done
# -c: mount must not resolve /proc/self/fd/3 to a path, which now names the tmpfs.
{ mkdir content && mount -c --bind /proc/self/fd/3 content; } || die "cannot bind $w on /content"
if [ -d "./${w#/}" ]; then
  mount -c --bind /proc/self/fd/3 "./${w#/}" || die "cannot bind $w"
fi
exec 3<&-
while [ "$1" != "--" ]; do
  { mkdir -p "$2" && mount --bind -o ro "$1" "$2"; } || die "cannot mount $1 on /$2"
  shift 2
done
shift
mount -o remount,bind,ro "$w" || die "cannot make the new root read-only"
PATH=$wpath; PWD=/content; export PWD
if [ -n "$ids" ]; then
  exec "$u" --user --map-user="${ids%:*}" --map-group="${ids#*:}" --root="$w" --wd=/content -- "$@"
fi
exec "$u" --root="$w" --wd=/content -- "$@"
"""


@dataclass(frozen=True)
class Sandbox:
    """How this machine gives processes the contract's paths: ``mode`` root or user, or
    None with ``reason`` saying why not."""

    mode: str | None
    reason: str = ""
    unshare: str = "unshare"

    def argv(self, argv: list[str], workdir: Path, binds: list[tuple[Path, str]]) -> list[str]:
        """``argv`` run in the sandbox; ``binds`` are (host path, absolute path inside)."""
        # Real paths: inside the new root, a symlink (say a home on another disk) would lead
        # back out of it, and the run directory would be mounted over the root itself.
        workdir = workdir.resolve()
        pairs = [p for src, dst in binds for p in (str(src.resolve()), dst.lstrip("/"))]
        ids = ""
        head = [self.unshare, "--mount", "--propagation", "private"]
        if self.mode == "user":
            ids = f"{os.getuid()}:{os.getgid()}"
            head = [
                self.unshare,
                "--user",
                "--map-root-user",
                "--mount",
                "--propagation",
                "private",
            ]
        return [
            *head, "/bin/sh", "-c", _SCRIPT, "substratus-sandbox",
            str(workdir), ids, *pairs, "--", *argv,
        ]  # fmt: skip


def binds(kind: str, model: Path | None, data: Path | None) -> list[tuple[Path, str]]:
    """The read-only mounts of a workload of ``kind``, as in its pod."""
    out: list[tuple[Path, str]] = []
    if model is not None:
        out.append((model, f"{CONTENT}/model"))
        if kind == "Server":
            out.append((model, SAVED_MODEL))
    if data is not None:
        out.append((data, f"{CONTENT}/data"))
    return out


def sandbox() -> Sandbox:
    """The sandbox this supervisor uses, probed once per process (and per setting)."""
    return _probe(os.environ.get(MODE_ENV, "auto").strip().lower() or "auto")


@cache
def _probe(choice: str) -> Sandbox:
    if choice == "none":
        return Sandbox(None, f"{MODE_ENV}=none")
    if choice not in ("auto", "root", "user"):
        return Sandbox(None, f"{MODE_ENV}={choice!r} is not auto, root, user or none")
    unshare = shutil.which("unshare")
    if unshare is None:
        return Sandbox(None, "unshare (util-linux) is not installed")
    modes = [choice] if choice != "auto" else (["root", "user"] if os.geteuid() == 0 else ["user"])
    reasons = []
    for mode in modes:
        candidate = Sandbox(mode, unshare=unshare)
        problem = _try(candidate)
        if problem is None:
            return candidate
        reasons.append(f"{mode}: {problem}")
    return Sandbox(None, "; ".join(reasons))


def _try(candidate: Sandbox) -> str | None:
    """Run a check through the real script: /content is the cwd, /model/saved is read-only."""
    tmp = Path(tempfile.mkdtemp(prefix="substratus-probe-"))
    try:
        (tmp / "work").mkdir()
        (tmp / "model").mkdir()
        check = (
            'test "$(pwd)" = /content && test -d /model/saved && ! (: >/model/saved/x) 2>/dev/null'
        )
        argv = candidate.argv(
            ["/bin/sh", "-c", check], tmp / "work", [(tmp / "model", SAVED_MODEL)]
        )
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        if done.returncode == 0:
            return None
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else f"the check exited {done.returncode}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
