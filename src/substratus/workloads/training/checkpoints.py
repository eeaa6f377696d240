"""Checkpoints under artifacts/checkpoints/: which one a retry resumes from.

The local runtime keeps artifacts/ across retries of one generation (a volume does the same in
a cluster), so a retried job finds the checkpoints of the attempt before it. A checkpoint is
complete once the Trainer has written its trainer_state.json (it is written last); incomplete
ones (a kill during a save) are removed. ``run.json`` records the params the checkpoints were
made with: checkpoints of other params are discarded rather than resumed.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUN_FILE = "run.json"
STATE_FILE = "trainer_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class Resume:
    path: Path
    step: int


def _say(message: str) -> None:
    print(message, flush=True)


def checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, dir) of every checkpoint-N directory, newest first."""
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _CHECKPOINT.match(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry))
    return sorted(found, reverse=True)


def is_complete(path: Path) -> bool:
    return (path / STATE_FILE).is_file() and not (path / "checkpoint-is-incomplete.txt").exists()


def prepare(root: Path, fingerprint: dict[str, Any]) -> Resume | None:
    """Make ``root`` ready for this run; the checkpoint to resume from, if any."""
    run_file = root / RUN_FILE
    fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back (tuples are lists)
    if root.is_dir():
        try:
            recorded = json.loads(run_file.read_text())
        except (OSError, ValueError):
            recorded = None
        if recorded != fingerprint:
            if recorded is None:
                why = f"no readable {RUN_FILE}"
            else:
                changed = sorted(
                    k
                    for k in set(recorded) | set(fingerprint)
                    if not isinstance(recorded, dict) or recorded.get(k) != fingerprint.get(k)
                )
                why = f"made with other values of {', '.join(changed)}"
            if checkpoints(root):
                _say(f"checkpoints: discarding those in {root.name}/ ({why}); starting over")
            shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")
    for step, path in checkpoints(root):
        if is_complete(path):
            return Resume(path, step)
        _say(f"checkpoints: removing incomplete {path.name} (cut short while saving)")
        shutil.rmtree(path, ignore_errors=True)
    return None
