"""What every part of the dataset loader shares: its error, the row type, scratch space."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from substratus.workloads.contract import content_dir

Row = dict[str, Any]
BATCH_ROWS = 10_000


class LoaderError(RuntimeError):
    """A source could not be read; the message names it (and the line, where one is at fault)."""


@contextlib.contextmanager
def scratch_dir(what: str) -> Iterator[Path]:
    """A scratch directory beside artifacts/ (same disk), removed afterwards."""
    try:
        path = Path(tempfile.mkdtemp(prefix=f".dataset-loader-{what}-", dir=content_dir()))
    except OSError:
        path = Path(tempfile.mkdtemp(prefix=f"dataset-loader-{what}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
