"""The original project's status fields (status.artifacts.url, status.buildUpload), published
by decide() from the same facts as status.url and status.uploadUrl."""

from __future__ import annotations

from typing import Any

import pytest

from substratus.api import parse_object
from substratus.core.observed import (
    Artifacts,
    BuildState,
    JobState,
    Observed,
    Phase,
    ServiceState,
    UploadState,
)
from substratus.core.reconcile import decide
from tests.unit.test_reconcile import EMPTY_MD5, make

MD5 = "0123456789abcdef0123456789abcdef"
UPLOAD = {"image": {"upload": {"requestId": "r1", "md5": MD5}}, "command": ["true"]}
SOURCE = f"upload:r1:{MD5}"
BUILT = BuildState(SOURCE, Phase.SUCCEEDED, image="dir:abc")


def done_job(url: str) -> JobState:
    return JobState(1, Phase.SUCCEEDED, artifacts=Artifacts(url, ("a.bin",), 10))


@pytest.mark.parametrize("kind", ["Model", "Dataset"])
def test_artifacts_url_is_status_url(kind: str) -> None:
    obj = make(kind, {"image": {"name": "substratusai/base"}, "command": ["true"]})
    d = decide(obj, Observed(now=0, job=done_job("file:///store/x/g1")))
    dumped = d.status.model_dump(by_alias=True, exclude_none=True)
    assert dumped["url"] == "file:///store/x/g1"
    assert dumped["artifacts"] == {"url": "file:///store/x/g1"}


def test_no_artifacts_before_the_first_success() -> None:
    obj = make("Model", {"image": {"name": "substratusai/base"}, "command": ["true"]})
    d = decide(obj, Observed(now=0))
    assert "artifacts" not in d.status.model_dump(by_alias=True, exclude_none=True)


def test_artifacts_follow_a_new_version() -> None:
    old = {"url": "file:///v1", "artifacts": {"url": "file:///v1"}}
    obj = make("Model", {"image": {"name": "substratusai/base"}, "command": ["x"]}, 2, old)
    job = JobState(2, Phase.SUCCEEDED, artifacts=Artifacts("file:///v2", (), 0))
    d = decide(obj, Observed(now=0, job=job))
    assert d.status.model_dump(by_alias=True)["artifacts"] == {"url": "file:///v2"}


@pytest.mark.parametrize("kind", ["Model", "Dataset", "Notebook", "Server"])
def test_build_upload_while_awaiting_the_upload(kind: str) -> None:
    spec: dict[str, Any] = dict(UPLOAD)
    if kind == "Server":
        spec["model"] = {"name": "m"}
    d = decide(make(kind, spec), Observed(now=0, upload=UploadState(url="https://signed?x=1")))
    dumped = d.status.model_dump(by_alias=True, exclude_none=True)
    assert dumped["uploadUrl"] == "https://signed?x=1"
    # The original's names: signedURL and the requestID it was made for; nothing stored yet.
    assert dumped["buildUpload"] == {"signedURL": "https://signed?x=1", "requestID": "r1"}


def test_stored_md5_once_the_build_verified_the_upload() -> None:
    obj = make("Dataset", UPLOAD)
    received = UploadState(url="u", received=True)
    building = decide(obj, Observed(now=0, upload=received))
    assert building.status.build_upload is not None
    assert building.status.build_upload.stored_md5_checksum is None  # not checked yet
    failed = decide(obj, Observed(now=0, upload=received, build=BuildState(SOURCE, Phase.FAILED)))
    assert failed.status.build_upload is not None
    assert failed.status.build_upload.stored_md5_checksum is None
    built = decide(obj, Observed(now=0, upload=received, build=BUILT))
    assert built.status.model_dump(by_alias=True)["buildUpload"] == {
        "signedURL": "u",
        "requestID": "r1",
        "expiration": None,  # a local path never expires
        "storedMD5Checksum": MD5,
    }


def test_stored_md5_kept_while_a_notebook_is_suspended() -> None:
    spec = {**UPLOAD, "suspend": False}
    obj = make("Notebook", spec)
    running = decide(obj, Observed(now=0, upload=UploadState(url="u", received=True), build=BUILT))
    assert running.status.build_upload is not None
    suspended = make("Notebook", {**spec, "suspend": True}, 2, running.status.model_dump())
    d = decide(suspended, Observed(now=0))
    assert d.status.build_upload == running.status.build_upload
    # A new upload request while suspended: the published URL, and the request it was made
    # for, stay together until the Notebook runs again and publishes the new one.
    other = {"image": {"upload": {"requestId": "r2", "md5": EMPTY_MD5}}, "suspend": True}
    d = decide(make("Notebook", other, 3, running.status.model_dump()), Observed(now=0))
    assert d.status.build_upload == running.status.build_upload
    resumed = make("Notebook", {**other, "suspend": False}, 4, d.status.model_dump())
    d = decide(resumed, Observed(now=0, upload=UploadState(url="u2")))
    assert d.status.build_upload is not None
    assert (d.status.build_upload.signed_url, d.status.build_upload.request_id) == ("u2", "r2")
    assert d.status.build_upload.stored_md5_checksum is None


def test_no_build_upload_without_an_upload_source() -> None:
    old = {"uploadUrl": "u", "buildUpload": {"signedURL": "u", "requestID": "r1"}}
    server = {"image": {"name": "substratusai/model-server"}, "model": {"name": "m"}}
    obj = make("Server", server, 2, old)
    d = decide(obj, Observed(now=0, service=ServiceState(2, "substratusai/model-server")))
    dumped = d.status.model_dump(by_alias=True, exclude_none=True)
    assert "buildUpload" not in dumped and "uploadUrl" not in dumped


def test_the_fields_round_trip_through_the_api() -> None:
    status = {
        "url": "s3://b/x",
        "artifacts": {"url": "s3://b/x"},
        "uploadUrl": "https://signed",
        "buildUpload": {"signedURL": "https://signed", "requestID": "r1", "storedMD5Checksum": MD5},
    }
    obj = parse_object(
        {
            "apiVersion": "substratus.ai/v1",
            "kind": "Model",
            "metadata": {"name": "x"},
            "spec": UPLOAD,
            "status": status,
        }
    )
    assert obj.dump()["status"] == {"ready": False, "conditions": [], **status, "files": []}
