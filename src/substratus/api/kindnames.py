"""The kinds' names as a command line spells them (kind, plural, short names), without the
models: commands that only name objects (``sub get``, ``delete``, completion) start without
importing pydantic. ``kinds.py`` takes its class attributes from here."""

from __future__ import annotations

from typing import NamedTuple

GROUP = "substratus.ai"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"


class KindNames(NamedTuple):
    kind: str
    plural: str
    short_names: tuple[str, ...]
    has_artifacts: bool  # its runs produce artifacts in a bucket (status.url is a bucket URL)
    is_job: bool  # it runs to completion, rather than as a service


KIND_NAMES: dict[str, KindNames] = {
    k.kind: k
    for k in (
        KindNames("Model", "models", ("ml",), has_artifacts=True, is_job=True),
        KindNames("Dataset", "datasets", ("ds",), has_artifacts=True, is_job=True),
        KindNames("Notebook", "notebooks", ("nb",), has_artifacts=False, is_job=False),
        KindNames("Server", "servers", ("srv",), has_artifacts=False, is_job=False),
    )
}


def kind_names(name: str) -> KindNames:
    """A kind from its name, plural or short name, case-insensitively (like kubectl), with or
    without the group (``models.substratus.ai``)."""
    wanted = name.lower().split(".", 1)[0]
    for names in KIND_NAMES.values():
        if wanted in (names.kind.lower(), names.plural, *names.short_names):
            return names
    known = ", ".join(sorted(KIND_NAMES))
    raise ValueError(f"unknown kind {name!r}: expected one of {known}")
