"""An image's ENTRYPOINT and CMD, read from its registry (the OCI distribution API), for a
workload that gives no ``spec.command``: in a pod the command runs under the contract's shell,
so the operator must spell out what the image would have run, as the local runtime does.

Anonymous pulls (or with the login of a docker config.json for the build registry), with the
bearer-token dance registries such as Docker Hub ask for; an index
(multi-platform image) is resolved to ``linux/amd64`` (configurable). Registries named in
``SUBSTRATUS_INSECURE_REGISTRIES`` are spoken to over plain HTTP. Answers are cached for a
while: a tag may move, but not every reconcile should cost a registry round trip.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
DOCKER_HUB = "registry-1.docker.io"
CACHE_SECONDS = 600.0
MISS_SECONDS = 5.0  # a tag found missing is not asked for again sooner
MAX_DOCUMENT = 4 << 20  # a manifest or config larger than this is not an image's
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")


def registry_logins(config_json: str) -> dict[str, tuple[str, str]]:
    """Registry host -> (user, password) from a docker ``config.json``'s ``auths``."""
    if not config_json:
        return {}
    logins = {}
    for host, entry in (json.loads(config_json).get("auths") or {}).items():
        if not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        else:
            user, password = entry.get("username", ""), entry.get("password", "")
        host = host.removeprefix("https://").removeprefix("http://").split("/", 1)[0]
        if user:
            logins[host] = (str(user), str(password))
    return logins


class ImageConfigError(Exception):
    """The image's configuration could not be read; the message says why."""


@dataclass(frozen=True)
class Reference:
    registry: str  # host[:port]
    repository: str
    reference: str  # tag or digest

    @classmethod
    def parse(cls, image: str) -> Reference:
        """``[registry/]repository[:tag][@digest]``, with Docker's defaults (docker.io,
        ``library/``, ``latest``)."""
        name, _, digest = image.partition("@")
        tag = ""
        slash = name.rfind("/")
        colon = name.rfind(":")
        if colon > slash:
            name, tag = name[:colon], name[colon + 1 :]
        first, _, rest = name.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost"):
            registry, repository = first, rest
        else:
            registry, repository = "docker.io", name
        if registry == "docker.io":
            registry = DOCKER_HUB
            if "/" not in repository:
                repository = f"library/{repository}"
        if not REPOSITORY.fullmatch(repository):
            raise ImageConfigError(f"{image!r} is not an image reference")
        return cls(registry, repository, digest or tag or "latest")


class ImageConfigs:
    """Reads and caches images' ENTRYPOINT + CMD."""

    def __init__(
        self,
        insecure: tuple[str, ...] = (),
        platform: str = "linux/amd64",
        timeout: float = 10.0,
        auths: dict[str, tuple[str, str]] | None = None,
    ) -> None:
        self.insecure = set(insecure)
        self.auths = dict(auths or {})  # registry host -> (user, password)
        self._digests: dict[str, str] = {}
        self._misses: dict[str, float] = {}  # tags not there when last asked
        self.os, _, self.arch = platform.partition("/")
        self.timeout = timeout
        self._cache: dict[str, tuple[float, list[str] | ImageConfigError]] = {}
        self._lock = threading.Lock()

    def command(self, image: str) -> list[str]:
        """What the image runs: ENTRYPOINT followed by CMD. Raises ImageConfigError."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(image)
        if hit is not None and now - hit[0] < CACHE_SECONDS:
            if isinstance(hit[1], ImageConfigError):
                raise hit[1]
            return list(hit[1])
        try:
            result: list[str] | ImageConfigError = self._read(image)
        except ImageConfigError as e:
            result = e
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
            result = ImageConfigError(f"{type(e).__name__}: {e}")
        with self._lock:
            self._cache[image] = (now, result)
        if isinstance(result, ImageConfigError):
            raise result
        return list(result)

    def digest(self, image: str, fresh: bool = False) -> str | None:
        """The digest ``image`` (a tag) points at, or None when the registry has no such tag.
        Found digests are kept: the tags looked up here name their input (a build's); a
        missing tag is remembered for a few seconds, unless ``fresh`` (a build just pushed)."""
        now = time.monotonic()
        with self._lock:
            if image in self._digests:
                return self._digests[image]
            if not fresh and now - self._misses.get(image, -MISS_SECONDS) < MISS_SECONDS:
                return None
        ref = Reference.parse(image)
        try:
            with httpx.Client(timeout=self.timeout, follow_redirects=True) as http:
                session = _Session(http, ref.repository, self.auths.get(ref.registry))
                found = session.head_digest(
                    f"{self._base(ref)}/manifests/{ref.reference}", (*INDEX_TYPES, *MANIFEST_TYPES)
                )
        except httpx.HTTPError as e:
            raise ImageConfigError(f"{type(e).__name__}: {e}") from None
        with self._lock:
            if found is not None:
                self._digests[image] = found
            else:
                self._misses[image] = now
        return found

    def _base(self, ref: Reference) -> str:
        scheme = "http" if ref.registry in self.insecure else "https"
        return f"{scheme}://{ref.registry}/v2/{ref.repository}"

    def _read(self, image: str) -> list[str]:
        ref = Reference.parse(image)
        base = self._base(ref)
        with httpx.Client(timeout=self.timeout, follow_redirects=True) as http:
            session = _Session(http, ref.repository, self.auths.get(ref.registry))
            doc, media = session.get_json(
                f"{base}/manifests/{ref.reference}", (*INDEX_TYPES, *MANIFEST_TYPES)
            )
            if media in INDEX_TYPES or "manifests" in doc:
                digest = self._platform_manifest(doc, image)
                doc, media = session.get_json(f"{base}/manifests/{digest}", MANIFEST_TYPES)
            config_digest = doc["config"]["digest"]
            config, _ = session.get_json(f"{base}/blobs/{config_digest}", ("*/*",))
        settings = config.get("config") or {}
        argv = [*(settings.get("Entrypoint") or []), *(settings.get("Cmd") or [])]
        if not argv or not all(isinstance(a, str) for a in argv):
            raise ImageConfigError("the image has no ENTRYPOINT or CMD")
        return argv

    def _platform_manifest(self, index: dict[str, Any], image: str) -> str:
        for m in index.get("manifests") or []:
            p = m.get("platform") or {}
            if p.get("os") == self.os and p.get("architecture") == self.arch:
                return str(m["digest"])
        raise ImageConfigError(f"{image} has no {self.os}/{self.arch} image")


class _Session:
    """GETs against one repository, answering a registry's bearer challenge once."""

    def __init__(
        self, http: httpx.Client, repository: str, login: tuple[str, str] | None = None
    ) -> None:
        self.http = http
        self.repository = repository
        self.login = login
        self.authorization: str | None = None

    def _send(self, method: str, url: str, accept: tuple[str, ...]) -> httpx.Response:
        headers = {"Accept": ", ".join(accept)}
        if self.authorization:
            headers["Authorization"] = self.authorization
        r = self.http.request(method, url, headers=headers)
        if r.status_code == 401 and self.authorization is None:
            self.authorization = self._authorize(r.headers.get("WWW-Authenticate", ""))
            return self._send(method, url, accept)
        if r.status_code == 401:
            raise ImageConfigError("the registry wants credentials (a private image)")
        return r

    def head_digest(self, url: str, accept: tuple[str, ...]) -> str | None:
        r = self._send("HEAD", url, accept)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        digest = r.headers.get("Docker-Content-Digest")
        if not digest:
            raise ImageConfigError(f"{url}: the registry gave no Docker-Content-Digest")
        return str(digest)

    def get_json(self, url: str, accept: tuple[str, ...]) -> tuple[dict[str, Any], str]:
        r = self._send("GET", url, accept)
        if r.status_code == 404:
            raise ImageConfigError("not found in its registry")
        r.raise_for_status()
        if len(r.content) > MAX_DOCUMENT:
            raise ImageConfigError(f"{url}: a document of {len(r.content)} bytes")
        media = r.headers.get("Content-Type", "").split(";")[0].strip()
        doc = json.loads(r.content)
        if not isinstance(doc, dict):
            raise ImageConfigError(f"{url}: not a JSON object")
        return doc, media

    def _authorize(self, challenge: str) -> str:
        """The Authorization header a challenge asks for: Basic with the configured login, or
        a pull token from the realm a ``Bearer`` challenge names (with the login, if any)."""
        scheme, _, params = challenge.partition(" ")
        if scheme.lower() == "basic" and self.login is not None:
            return "Basic " + base64.b64encode(":".join(self.login).encode()).decode()
        if scheme.lower() != "bearer":
            raise ImageConfigError("the registry wants credentials (a private image)")
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        if "realm" not in fields:
            raise ImageConfigError(f"a bearer challenge without a realm: {challenge!r}")
        query = {"service": fields.get("service", "")}
        query["scope"] = fields.get("scope") or f"repository:{self.repository}:pull"
        r = self.http.get(fields["realm"], params=query, auth=self.login)
        if r.status_code != 200:
            raise ImageConfigError(f"no pull token ({r.status_code})")
        body = r.json()
        token = body.get("token") or body.get("access_token")
        if not token:
            raise ImageConfigError("the token service gave no token")
        return f"Bearer {token}"
