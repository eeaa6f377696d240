"""Session-wide real servers for integration tests (see servers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

import pytest

try:
    from tests.integration.servers import Azurite, FakeGCS, SeaweedS3, ServerUnavailable
except ImportError:  # tests/ not importable as a package: conftest's folder is on sys.path
    from servers import Azurite, FakeGCS, SeaweedS3, ServerUnavailable  # type: ignore[no-redef]

S = TypeVar("S", SeaweedS3, FakeGCS, Azurite)


def _serve(server: S) -> Iterator[S]:
    """Start ``server``, skip if it cannot run here, and always stop it."""
    try:
        try:
            server.start()
        except ServerUnavailable as e:
            pytest.skip(str(e))
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedS3]:
    """SeaweedFS with its S3 API on 127.0.0.1; ``.env`` holds the client settings."""
    yield from _serve(SeaweedS3())


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[FakeGCS]:
    """fake-gcs-server on 127.0.0.1; ``.env`` holds STORAGE_EMULATOR_HOST and credentials."""
    yield from _serve(FakeGCS())


@pytest.fixture(scope="session")
def azurite_server() -> Iterator[Azurite]:
    """Azurite's blob service on 127.0.0.1; ``.env`` holds the connection string."""
    yield from _serve(Azurite())
