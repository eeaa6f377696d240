"""When a runtime signs a new upload URL, and when it keeps the one in the status.

A URL is published once per request and kept while it stays valid, so a status does not
change on every reconcile (each signature differs) and a client that read it can use it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit

from substratus.api.common import UploadSource
from substratus.api.kinds import CommonStatus, Resource, UploadParts
from substratus.core.naming import upload_file_name
from substratus.core.observed import UploadState

URL_SECONDS = 3600
"""How long a signed upload URL works."""

RENEW_SECONDS = 300
"""A URL with less than this left is signed anew: a client must have time to upload."""


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def published_url(
    status: CommonStatus, upload: UploadSource, object_name: str, now: float
) -> tuple[str, float] | None:
    """The URL and expiry already in ``status`` if it is for this request and this object
    (named by the md5, so a new md5 is a new URL) with time left; else None: sign anew."""
    granted = status.build_upload
    url = status.upload_url
    if not url or granted is None or granted.signed_url != url:
        return None
    if granted.request_id != upload.request_id:
        return None
    # Every signed URL (S3 path or virtual-host style, GCS, an Azure SAS, the operator's
    # endpoint, file://) ends its path with the object's name.
    path = urlsplit(url).path
    if not (path.endswith("/" + object_name) or path.endswith("/" + quote(object_name))):
        return None
    expires = parse_iso(status.upload_url_expiration)
    if expires is None or expires - now < RENEW_SECONDS:
        return None
    return url, expires


def context_url(
    artifact_url: str, namespace: str, plural: str, name: str, upload: UploadSource
) -> str:
    """Where an object's uploaded build context is stored, beside its artifacts (never among
    them: ``.uploads`` is not a namespace name)."""
    base = artifact_url.rstrip("/")
    return f"{base}/.uploads/{namespace}/{plural}/{name}/{upload_file_name(upload)}"


PARTS_ABOVE = 256 << 20
"""A context larger than this goes up in parts where the store takes parts (S3)."""

SignParts = Callable[[str, int, int], UploadParts]
"""``sign_parts(url, seconds, size)``: a multipart upload for a context of ``size`` bytes;
given by a runtime only where its store takes parts."""


def _parts_fit(parts: UploadParts | None, size: int | None) -> bool:
    """Whether the published parts (or their absence) suit a context of ``size`` bytes."""
    if not size or size <= PARTS_ABOVE:
        return parts is None
    if parts is None:
        return False
    return (len(parts.urls) - 1) * parts.part_size < size <= len(parts.urls) * parts.part_size


def observe_upload(
    obj: Resource,
    artifact_url: str,
    exists: Callable[[str], bool],
    sign: Callable[[str, int, str | None], str] | None,
    now: float,
    sign_parts: SignParts | None = None,
) -> UploadState:
    """What a runtime observes of ``obj``'s upload: where the client uploads the context (the
    URL in the status while it is good, else one from ``sign(url, seconds, md5)``; with no
    ``sign``, a local store's URL as is; for a large one, ``sign_parts``' parts) and whether
    it has arrived."""
    upload = obj.spec.image.upload
    if upload is None:
        return UploadState()
    meta = obj.metadata
    url = context_url(artifact_url, meta.namespace, obj.PLURAL, meta.name, upload)
    received = bool(upload.request_id) and exists(url)
    if sign is None:
        return UploadState(url=url, received=received)
    granted = published_url(obj.status, upload, upload_file_name(upload), now)
    parts = obj.status.upload_parts
    if granted is not None and (received or sign_parts is None or _parts_fit(parts, upload.size)):
        return UploadState(url=granted[0], expires_at=granted[1], received=received, parts=parts)
    signed = sign(url, URL_SECONDS, upload.md5)
    parts = None
    if not received and sign_parts is not None and upload.size and upload.size > PARTS_ABOVE:
        parts = sign_parts(url, URL_SECONDS, upload.size)
    return UploadState(url=signed, expires_at=now + URL_SECONDS, received=received, parts=parts)
