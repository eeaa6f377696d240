"""The one interface every `sub` verb uses; the local supervisor and Kubernetes implement it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple, Protocol


class ClientError(Exception):
    """A request the control plane refused or could not serve."""


class NotFoundError(ClientError):
    pass


class InvalidError(ClientError):
    def __init__(self, message: str, problems: list[tuple[str, str]]):
        super().__init__(message)
        self.problems = problems


class UnavailableError(ClientError):
    """The control plane cannot be reached."""


class ApplyResult(NamedTuple):
    action: str  # created | configured | unchanged
    object: dict[str, Any]


class DeleteResult(NamedTuple):
    object: dict[str, Any]
    # Objects whose running workloads still mount the deleted object's artifacts; those
    # artifacts are deleted once they stop.
    in_use_by: list[str]


class Client(Protocol):
    def apply(
        self, doc: dict[str, Any], source: str = "<request>", dry_run: bool = False
    ) -> ApplyResult:
        """Create or update; ``dry_run``: the runtime's every check (the API server's admission,
        the supervisor's), and the object as it would be, with nothing stored."""
        ...

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]: ...

    def list_objects(self, kind: str | None, namespace: str | None) -> list[dict[str, Any]]: ...

    def delete(
        self, kind: str, namespace: str, name: str, retain: bool = False
    ) -> DeleteResult: ...

    def watch(
        self,
        kind: str | None,
        namespace: str | None,
        name: str | None = None,
        resource_version: str | None = None,
        timeout: float = 3600,
    ) -> Iterator[dict[str, Any]]:
        """Events {type: ADDED|MODIFIED|DELETED|BOOKMARK, object}; current objects first.
        ``resource_version`` is opaque (as Kubernetes says): pass back one the runtime gave."""
        ...

    def logs(
        self, kind: str, namespace: str, name: str, follow: bool = False, tail: int | None = None
    ) -> Iterator[bytes]: ...

    def secrets(self, namespace: str | None) -> list[dict[str, Any]]: ...

    def delete_secret(self, namespace: str, name: str) -> None: ...

    def events(
        self, namespace: str | None, kind: str | None = None, name: str | None = None
    ) -> list[dict[str, Any]]:
        """What happened (core/events.py rows), oldest first: in a namespace (None: all), or
        to one object."""
        ...

    def server_version(self) -> str:
        """What answers: the local supervisor and its version, or the cluster's Kubernetes."""
        ...
