"""The steps a runtime takes on behalf of the core's decisions."""

from __future__ import annotations

from dataclasses import dataclass

from substratus.api.kinds import Autoscaling


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
    """Keep ``replicas`` processes of ``image`` running for ``generation``; with
    ``autoscaling``, behind a proxy that holds requests while none is ready."""

    generation: int
    image: str
    replicas: int
    autoscaling: Autoscaling | None = None


@dataclass(frozen=True)
class StopWorkload:
    pass


Action = StartBuild | StartJob | EnsureService | StopWorkload
