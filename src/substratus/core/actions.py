"""The steps a runtime takes on behalf of the core's decisions."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StartBuild:
    source: str


@dataclass(frozen=True)
class StartJob:
    """Run the workload for ``generation``; any older run of the object is stopped first."""

    generation: int
    attempt: int
    image: str


@dataclass(frozen=True)
class EnsureService:
    """Keep ``replicas`` processes of ``image`` running for ``generation``."""

    generation: int
    image: str
    replicas: int


@dataclass(frozen=True)
class StopWorkload:
    pass


Action = StartBuild | StartJob | EnsureService | StopWorkload
