"""Names every runtime gives the same things: artifact versions, uploaded build contexts, and
the annotation that keeps artifacts when an object is deleted."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # `sub` reads the annotation's name without the models
    from substratus.api.common import UploadSource

RETAIN_ANNOTATION = "substratus.ai/retain-artifacts"


def artifact_version(generation: int, attempt: int, run: int | str) -> str:
    """The directory of one job run's committed artifacts: generation, attempt, then the
    runtime's id of the run (unique even when an attempt is started twice)."""
    return f"g{generation}-a{attempt}-{run}"


def upload_file_name(upload: UploadSource) -> str:
    """The uploaded context's object name: its md5 (content-addressed, so a context stored
    once is not uploaded again under a new requestId), else the request's id."""
    if upload.md5:
        return f"{upload.md5}.tar.gz"
    return f"request-{upload.request_id or 'pending'}.tar.gz"


def retains_artifacts(annotations: Mapping[str, str] | None, requested: bool = False) -> bool:
    """Whether deleting the object keeps its artifacts (asked for, or annotated so)."""
    return requested or (annotations or {}).get(RETAIN_ANNOTATION, "").lower() == "true"
