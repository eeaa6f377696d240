"""What every part of the dataset loader shares: its error, the row type, scratch space."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from substratus.workloads.contract import scratch_dir as contract_scratch_dir

Row = dict[str, Any]
BATCH_ROWS = 10_000


class LoaderError(RuntimeError):
    """A source could not be read; the message names it (and the line, where one is at fault)."""


def scratch_dir(what: str) -> contextlib.AbstractContextManager[Path]:
    """A scratch directory beside artifacts/, removed afterwards."""
    return contract_scratch_dir("dataset-loader", what)
