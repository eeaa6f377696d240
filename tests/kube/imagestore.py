"""The real node's containerd root (its content store, image records and unpacked snapshots),
kept between test sessions under the node cache (``<node cache>/containerd-root``), so that an
image archive imported once is not imported again: a 6.5 GB torch image takes about 95 s to
import, and every session would pay it.

Only images survive a session: at start, before the kubelet runs, every container record (a
pod's sandbox, a container, left by a killed session) is removed, and containerd's garbage
collector frees their snapshots. Which archive made which image is recorded beside the store,
one file per archive file (its name, size and modification time: ``hack/images.sh`` and
``hack/node.sh`` name archives by a key of their content and never rewrite one), with the digest
each name pointed to: an archive is skipped only while every one of its names still points
there. An image whose name a newer archive took is unreferenced, and
collected. One node per machine runs at a time (the node lock), so one containerd uses it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

Ctr = Callable[..., CompletedProcess[str]]  # RealNode.ctr: ctr -n k8s.io ARGS...


def markers(root: Path) -> Path:
    return root.parent / "containerd-imported"


def _marker(root: Path, archive: Path) -> Path:
    st = archive.stat()
    return markers(root) / f"{archive.name}-{st.st_size}-{st.st_mtime_ns}.json"


def digests(ctr: Ctr) -> dict[str, str]:
    """Every image name in the store and the digest it points to."""
    found: dict[str, str] = {}
    for line in ctr("images", "list").stdout.splitlines()[1:]:
        words = line.split()
        if len(words) >= 3:
            found[words[0]] = words[2]
    return found


def already_imported(root: Path, archive: Path, ctr: Ctr) -> list[str] | None:
    """The names ``archive`` gave when it was imported, if they all still point where they did."""
    try:
        marker = _marker(root, archive)
        recorded: dict[str, str] = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    now = digests(ctr)
    if recorded and all(now.get(name) == digest for name, digest in recorded.items()):
        return sorted(recorded)
    return None


def record(root: Path, archive: Path, names: list[str], ctr: Ctr) -> None:
    now = digests(ctr)
    marker = _marker(root, archive)
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_name(f".{marker.name}.part")
    tmp.write_text(json.dumps({n: now[n] for n in names if n in now}))
    tmp.replace(marker)


def forget_containers(ctr: Ctr) -> None:
    """Remove the container records a killed session left (their tasks died with it)."""
    left = ctr("containers", "list", "-q").stdout.split()
    if left:
        ctr("containers", "delete", *left, check=False)
