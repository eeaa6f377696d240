"""Where the local runtime keeps its state: SUBSTRATUS_HOME, else the XDG data directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple


class LocalPaths(NamedTuple):
    home: Path

    @classmethod
    def from_env(cls) -> LocalPaths:
        explicit = os.environ.get("SUBSTRATUS_HOME")
        if explicit:
            return cls(Path(explicit).expanduser().resolve())
        xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return cls((Path(xdg).expanduser() / "substratus").resolve())

    @property
    def socket(self) -> Path:
        return self.home / "supervisor.sock"

    @property
    def db(self) -> Path:
        return self.home / "state.db"

    @property
    def pidfile(self) -> Path:
        return self.home / "supervisor.pid"

    @property
    def lockfile(self) -> Path:
        return self.home / "supervisor.lock"

    @property
    def supervisor_log(self) -> Path:
        return self.home / "supervisor.log"

    @property
    def artifacts(self) -> Path:
        return self.home / "artifacts"

    @property
    def runs(self) -> Path:
        return self.home / "runs"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def cache(self) -> Path:
        return self.home / "cache"

    @property
    def build_cache(self) -> Path:
        return self.cache / "builds"

    def ensure(self) -> None:
        for d in (self.home, self.runs, self.logs, self.cache):
            d.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o700)  # the socket and secrets are the user's alone

    def artifact_store_url(self) -> str:
        return os.environ.get("SUBSTRATUS_ARTIFACTS") or self.artifacts.as_uri()
