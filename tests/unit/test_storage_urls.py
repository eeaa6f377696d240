"""URL parsing and the lazy backend adaptors (no servers needed)."""

from __future__ import annotations

import os

import pytest

from substratus.storage.backends import GCSBackend, Location, S3Backend, parse_url


@pytest.mark.parametrize(
    ("url", "location"),
    [
        ("s3://bucket/a/b/", Location("s3", "bucket/a/b")),
        ("gs://bucket", Location("gs", "bucket")),
        ("gcs://bucket/x", Location("gs", "bucket/x")),
        ("az://container/p/", Location("az", "container/p")),
        ("file:///abs/dir/", Location("file", "/abs/dir")),
        ("file://localhost/abs", Location("file", "/abs")),
        ("/abs/plain", Location("file", "/abs/plain")),
    ],
)
def test_parse_url(url: str, location: Location) -> None:
    assert parse_url(url) == location


def test_parse_relative_path_is_absolute() -> None:
    assert parse_url("rel/dir") == Location("file", os.path.abspath("rel/dir"))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://x/y", "scheme must be one of"),
        ("s3://", "no bucket"),
        ("s3://b/../c", "'..'"),
        ("gs://b//c", "empty"),
        ("file://relative/path", "absolute path"),
    ],
)
def test_parse_url_rejects(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_url(url)


def test_location_helpers() -> None:
    loc = parse_url("s3://bucket/p")
    assert loc.child("v1") == Location("s3", "bucket/p/v1")
    assert loc.child("v1").url == "s3://bucket/p/v1"
    assert parse_url("s3://bucket").is_bucket_root
    assert not loc.is_bucket_root
    assert parse_url("file:///").is_bucket_root


def test_s3_endpoint_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    assert S3Backend.endpoint() is None
    assert "s3" not in S3Backend()._config()  # AWS itself: virtual-hosted style
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    assert S3Backend.endpoint() == "http://generic:1"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-specific:2")
    assert S3Backend.endpoint() == "http://s3-specific:2"
    assert S3Backend()._config()["s3"] == {"addressing_style": "path"}
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    url = S3Backend().signed_put_url("bucket/some key", 60)  # signing is offline
    assert url.startswith("http://s3-specific:2/bucket/some%20key?")
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=60" in url


def test_gcs_uses_the_plain_filesystem_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    gcsfs = pytest.importorskip("gcsfs")
    monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "")
    monkeypatch.delenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")  # restored to the original after
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:9")  # nothing is contacted
    fs = GCSBackend().filesystem()
    assert type(fs) is gcsfs.core.GCSFileSystem  # not the 60-s-per-bucket experimental one
    assert os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] == "false"
    assert fs._location == "http://127.0.0.1:9"
