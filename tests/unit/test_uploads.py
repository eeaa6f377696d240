"""The upload URL's lifecycle (core/uploads.py): signed once per request and md5, kept in the
status while it has time left, signed anew on a new requestId, a new md5 or near its expiry;
the stored context is named by its md5, so a context stored once is not uploaded again."""

from __future__ import annotations

from typing import Any

from substratus.api.loading import parse_object
from substratus.core.observed import Observed
from substratus.core.reconcile import decide
from substratus.core.uploads import RENEW_SECONDS, URL_SECONDS, iso, observe_upload, parse_iso

MD5 = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"
BASE = "s3://bucket/substratus"
STORED = f"{BASE}/.uploads/default/models/m/{MD5}.tar.gz"


def model(upload: dict[str, Any], status: dict[str, Any] | None = None) -> Any:
    body = {
        "apiVersion": "substratus.ai/v1",
        "kind": "Model",
        "metadata": {"name": "m", "namespace": "default", "generation": 1},
        "spec": {"image": {"upload": upload}},
        "status": status or {},
    }
    return parse_object(body)


class Signer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str | None]] = []

    def __call__(self, url: str, seconds: int, md5: str | None) -> str:
        self.calls.append((url, seconds, md5))
        key = url.removeprefix("s3://")
        return f"https://s3.example/{key}?X-Amz-Signature={len(self.calls)}"


def published(obj: Any, now: float, signer: Signer, stored: set[str]) -> dict[str, Any]:
    """One reconcile: observe, decide, and the status as it would be written."""
    upload = observe_upload(obj, BASE, stored.__contains__, signer, now)
    status: dict[str, Any] = decide(obj, Observed(now=now, upload=upload)).status.model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    return status


def test_a_url_is_signed_once_for_the_md5_and_kept_while_it_has_time() -> None:
    signer = Signer()
    now = 1_000_000.0
    status = published(model({"md5": MD5, "requestId": "r1"}), now, signer, set())
    assert signer.calls == [(STORED, URL_SECONDS, MD5)]
    assert status["uploadUrl"].startswith("https://s3.example/bucket/substratus/.uploads/")
    assert status["uploadUrlExpiration"] == iso(now + URL_SECONDS)
    assert status["buildUpload"]["expiration"] == status["uploadUrlExpiration"]
    assert status["conditions"][0]["reason"] == "AwaitingUpload"
    # The next reconciles keep it (the status does not change under the client).
    later = now + URL_SECONDS - RENEW_SECONDS - 1
    again = published(model({"md5": MD5, "requestId": "r1"}, status), later, signer, set())
    assert len(signer.calls) == 1
    assert again["uploadUrl"] == status["uploadUrl"]
    # Close to its expiry, a fresh one.
    renewed = published(model({"md5": MD5, "requestId": "r1"}, status), later + 2, signer, set())
    assert len(signer.calls) == 2
    assert renewed["uploadUrl"] != status["uploadUrl"]
    assert parse_iso(renewed["uploadUrlExpiration"]) == later + 2 + URL_SECONDS


def test_a_new_request_or_md5_gets_a_new_url() -> None:
    signer = Signer()
    status = published(model({"md5": MD5, "requestId": "r1"}), 0, signer, set())
    new_request = published(model({"md5": MD5, "requestId": "r2"}, status), 1, signer, set())
    assert len(signer.calls) == 2
    assert new_request["buildUpload"]["requestID"] == "r2"
    # Same requestId, other contents (an edited spec): the old URL is for the old md5.
    published(model({"md5": OTHER, "requestId": "r2"}, new_request), 2, signer, set())
    assert signer.calls[-1][0].endswith(f"/{OTHER}.tar.gz")
    assert signer.calls[-1][2] == OTHER


def test_a_stored_context_with_the_same_md5_is_not_awaited() -> None:
    # Stored under another request: content-addressed, so the new request finds it.
    status = published(model({"md5": MD5, "requestId": "r9"}), 0, Signer(), {STORED})
    reasons = {c["type"]: c["reason"] for c in status["conditions"]}
    assert reasons["Ready"] == "Building"


def test_a_local_store_publishes_its_path_unsigned() -> None:
    obj = model({"md5": MD5, "requestId": "r1"})
    upload = observe_upload(obj, "file:///srv/a", lambda url: False, None, 0)
    assert upload.url == f"file:///srv/a/.uploads/default/models/m/{MD5}.tar.gz"
    assert upload.expires_at is None


def test_parse_iso_refuses_garbage() -> None:
    assert parse_iso("yesterday") is None
    assert parse_iso(None) is None
    assert parse_iso(iso(1234.0)) == 1234.0


def test_a_large_context_gets_parts_where_the_store_takes_them() -> None:
    from substratus.api.kinds import UploadParts
    from substratus.core.uploads import PARTS_ABOVE

    made: list[int] = []

    def sign_parts(url: str, seconds: int, size: int) -> UploadParts:
        made.append(size)
        n = -(-size // (64 << 20))
        urls = [f"https://s3.example/{url}?part={i}" for i in range(1, n + 1)]
        return UploadParts(upload_id="u1", part_size=64 << 20, urls=urls, complete_url="c")

    big = PARTS_ABOVE + 1
    obj = model({"md5": MD5, "requestId": "r1", "size": big})
    upload = observe_upload(obj, BASE, lambda u: False, Signer(), 0, sign_parts)
    assert upload.parts is not None and len(upload.parts.urls) == 5 and made == [big]
    status = decide(obj, Observed(now=0, upload=upload)).status.model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    assert status["uploadParts"]["uploadId"] == "u1"
    # Kept with the URL while they suit the size; a new size signs anew.
    again = observe_upload(model(obj.spec.image.upload.model_dump(by_alias=True), status),
                           BASE, lambda u: False, Signer(), 1, sign_parts)  # fmt: skip
    assert again.parts == upload.parts and made == [big]
    bigger = {"md5": MD5, "requestId": "r1", "size": 10 * big}
    observe_upload(model(bigger, status), BASE, lambda u: False, Signer(), 2, sign_parts)
    assert made == [big, 10 * big]
    # Small contexts, or stores without parts (sign_parts not given): one PUT.
    small = observe_upload(model({"md5": MD5, "requestId": "r1", "size": 10}), BASE,
                           lambda u: False, Signer(), 0, sign_parts)  # fmt: skip
    assert small.parts is None
    no_parts = observe_upload(obj, BASE, lambda u: False, Signer(), 0, None)
    assert no_parts.parts is None
    # Once the context is stored, no parts are published.
    done = observe_upload(obj, BASE, lambda u: True, Signer(), 3, sign_parts)
    assert done.parts is None
