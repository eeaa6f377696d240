"""Builds on a cluster, up to the build Job: the design's upload flow through ``sub apply`` and
the operator, against the real control plane and each real bucket server (SeaweedFS for S3,
fake-gcs-server, Azurite), and a real registry.

``sub apply`` packs the directory, the operator publishes a URL signed for the context's md5
(renewed by a new requestId), ``sub`` uploads to it, and the operator starts a build Job whose
context is the stored tarball; a second request for the same contents uploads nothing, and a
tampered URL or a body that is not the declared md5 is refused by the bucket. An image already
in the registry for the same input is used without a build. No node runs pods here: the build
itself runs in tests/kube/test_real_builds.py.
"""

from __future__ import annotations

import calendar
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.kube.cluster import ControlPlane, Proc, free_port
from tests.kube.operatorproc import start_operator, stop_operator
from tests.kube.registry import LocalRegistry

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SERVERS = {"s3": "s3_server", "gs": "gcs_server", "az": "azurite_server", "endpoint": ""}
DOCKERFILE = "FROM substratus.local/toolbox:latest\nCOPY train.sh /train.sh\n"


class OwnEndpoint:
    """No bucket that signs: a file store, and the operator's own upload endpoint."""

    def __init__(self, port: int) -> None:
        self.endpoint = f"http://127.0.0.1:{port}"
        self.env: dict[str, str] = {}
        self.settings = {
            "SUBSTRATUS_UPLOAD_ENDPOINT": self.endpoint,
            "SUBSTRATUS_UPLOAD_LISTEN": f"127.0.0.1:{port}",
            "SUBSTRATUS_UPLOAD_KEY": os.urandom(16).hex(),
        }


@pytest.fixture(params=list(SERVERS))
def bucket(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Any]:
    if request.param == "endpoint":
        return f"file://{tmp_path}/bucket", OwnEndpoint(free_port())
    server = request.getfixturevalue(SERVERS[request.param])
    name = f"b{os.urandom(5).hex()}"
    server.create_bucket(name)
    return f"{request.param}://{name}", server


@contextmanager
def build_operator(
    plane: ControlPlane, registry: LocalRegistry, url: str, server: Any, workdir: Path
) -> Iterator[Proc]:
    settings = {
        **server.env,
        **getattr(server, "settings", {}),
        "SUBSTRATUS_ARTIFACT_URL": url,
        "SUBSTRATUS_HELPER_IMAGE": "docker.io/substratusai/operator:latest",
        "SUBSTRATUS_REGISTRY": f"{registry.address}/builds",
        "SUBSTRATUS_INSECURE_REGISTRIES": registry.address,
    }
    workdir.mkdir()
    proc = start_operator(plane, workdir, settings)
    try:
        yield proc
    finally:
        stop_operator(proc)


@pytest.fixture
def operator(
    kube_control_plane: ControlPlane,
    substratus_crds: list[str],
    local_registry: LocalRegistry,
    bucket: tuple[str, Any],
    tmp_path: Path,
) -> Iterator[Proc]:
    url, server = bucket
    with build_operator(kube_control_plane, local_registry, url, server, tmp_path / "op") as op:
        yield op


def sub(plane: ControlPlane, ns: str, *args: str, env: dict[str, str]) -> str:
    cluster = ["--kubeconfig", str(plane.kubeconfig), "--context", "substratus-test", "-n", ns]
    done = subprocess.run(
        [str(Path(sys.executable).parent / "sub"), *args, *cluster],
        capture_output=True,
        text=True,
        timeout=120,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("SUBSTRATUS_")}, **env},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def context_dir(tmp_path: Path, script: str) -> Path:
    d = tmp_path / "ctx"
    d.mkdir(exist_ok=True)
    (d / "Dockerfile").write_text(DOCKERFILE)
    (d / "train.sh").write_text(script)
    (d / ".dockerignore").write_text("notes.txt\n")
    (d / "notes.txt").write_text("left out")
    (d / "model.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "substratus.ai/v1",
                "kind": "Model",
                "metadata": {"name": "built"},
                "spec": {"image": {"upload": {}}, "command": ["sh", "/train.sh"]},
            }
        )
    )
    return d


def get(plane: ControlPlane, ns: str, kind: str, name: str) -> dict[str, Any]:
    out = plane.kubectl("get", "-n", ns, kind, name, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def until(what: str, check: Any, operator: Proc, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout}s\n{operator.tail(40)}")


def granted(plane: ControlPlane, ns: str, request_id: str, reason: str = "") -> Any:
    """The Model once its status has a URL for ``request_id`` (and Ready has ``reason``)."""
    m = get(plane, ns, "model", "built")
    upload = (m.get("status") or {}).get("buildUpload") or {}
    if upload.get("requestID") != request_id or (reason and ready_reason(m) != reason):
        return None
    return m


def ready_reason(obj: dict[str, Any]) -> str:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c["reason"] for c in conditions if c["type"] == "Ready"), "")


def build_jobs(plane: ControlPlane, ns: str) -> list[dict[str, Any]]:
    out = plane.kubectl("get", "jobs", "-n", ns, "-l", "substratus.ai/role=build", "-o", "json")
    return list(json.loads(out.stdout)["items"])


def test_upload_through_signed_urls_then_a_build_job(
    operator: Proc,
    kube_control_plane: ControlPlane,
    kube_namespace: str,
    bucket: tuple[str, Any],
    local_registry: LocalRegistry,
    tmp_path: Path,
) -> None:
    plane, ns = kube_control_plane, kube_namespace
    url, server = bucket
    scheme = url.split("://")[0]
    env = dict(server.env)  # the client's upload goes to the bucket's host
    ctx = context_dir(tmp_path, "echo one > artifacts/out.txt\n")
    # No node runs the build here: do not wait for it.
    apply = ["apply", "--no-follow-build", "-f", str(ctx / "model.yaml")]
    out = sub(plane, ns, *apply, env=env)
    assert "uploaded build context" in out

    model = until(
        "a build Job",
        lambda: get(plane, ns, "model", "built") if build_jobs(plane, ns) else None,
        operator,
    )
    spec_upload = model["spec"]["image"]["upload"]
    md5, request_id = spec_upload["md5"], spec_upload["requestId"]
    status = model["status"]
    signed = status["uploadUrl"]
    assert signed.startswith("http://127.0.0.1:")
    assert status["buildUpload"] == {
        "signedURL": signed,
        "requestID": request_id,
        "expiration": status["uploadUrlExpiration"],
    }
    expires = calendar.timegm(time.strptime(status["uploadUrlExpiration"], "%Y-%m-%dT%H:%M:%SZ"))
    assert abs(expires - time.time() - 3600) < 300
    if scheme == "s3":
        assert "content-md5" in signed.lower()  # signed into the URL
    if scheme == "file":
        assert signed.startswith(f"{server.endpoint}/uploads/.uploads/")
    assert ready_reason(model) == "Building"

    (job,) = build_jobs(plane, ns)
    pod = job["spec"]["template"]["spec"]
    stored = f"{url}/.uploads/{ns}/models/built/{md5}.tar.gz"
    assert pod["initContainers"][0]["args"] == [
        "context", "--dest", "/workspace/context", "--upload", stored, "--md5", md5,
    ]  # fmt: skip
    image = f"{local_registry.address}/builds/{ns}/images:md5-{md5}"
    assert (
        f"type=image,name={image},push=true,registry.insecure=true" in pod["containers"][0]["args"]
    )
    assert job["metadata"]["ownerReferences"][0]["name"] == "built"

    # A new request for the same contents: a fresh URL, nothing to upload (stored by md5).
    plane.kubectl(
        "patch", "-n", ns, "model", "built", "--type=merge",
        "-p", json.dumps({"spec": {"image": {"upload": {"requestId": "again"}}}}),
    )  # fmt: skip
    renewed = until("a URL for the new request", lambda: granted(plane, ns, "again"), operator)
    assert renewed["status"]["uploadUrl"] != signed
    assert ready_reason(renewed) == "Building"
    out = sub(plane, ns, *apply, env=env)
    assert "uploaded" not in out  # the same md5 is stored: nothing sent

    # New contents: AwaitingUpload, and only the declared md5's bytes, through the URL as
    # signed, are accepted.
    (ctx / "train.sh").write_text("echo two > artifacts/out.txt\n")
    other = (ctx / "train.sh").read_bytes()
    plane.kubectl(
        "patch", "-n", ns, "model", "built", "--type=merge",
        "-p", json.dumps({"spec": {"image": {"upload": {"md5": "f" * 32, "requestId": "r3"}}}}),
    )  # fmt: skip
    waiting = until("AwaitingUpload", lambda: granted(plane, ns, "r3", "AwaitingUpload"), operator)
    fresh = waiting["status"]["uploadUrl"]
    headers = {"Content-MD5": "/////////////////////w==", "x-ms-blob-type": "BlockBlob"}
    if scheme != "gs":  # fake-gcs-server checks neither md5 nor signatures; GCS does both
        wrong_body = httpx.put(fresh, content=other, headers=headers)
        assert wrong_body.status_code in (400, 403), wrong_body.text
        marker = {"s3": "X-Amz-Signature=", "az": "sig=", "file": "sig="}[scheme]
        at = fresh.index(marker) + len(marker)
        tampered = fresh[:at] + ("A" if fresh[at] != "A" else "B") + fresh[at + 1 :]
        refused = httpx.put(tampered, content=b"", headers=headers)
        assert refused.status_code == 403, refused.text
        assert ready_reason(get(plane, ns, "model", "built")) == "AwaitingUpload"


def test_an_image_in_the_registry_for_the_same_input_is_not_built_again(
    kube_control_plane: ControlPlane,
    substratus_crds: list[str],
    kube_namespace: str,
    s3_server: Any,
    local_registry: LocalRegistry,
    tmp_path: Path,
) -> None:
    plane, ns = kube_control_plane, kube_namespace
    s3_server.create_bucket(name := f"b{os.urandom(5).hex()}")
    with build_operator(plane, local_registry, f"s3://{name}", s3_server, tmp_path / "op") as op:
        _registry_hit(plane, ns, s3_server, local_registry, tmp_path, op)


def _registry_hit(
    plane: ControlPlane,
    ns: str,
    server: Any,
    local_registry: LocalRegistry,
    tmp_path: Path,
    operator: Proc,
) -> None:
    ctx = context_dir(tmp_path, "echo cached > artifacts/out.txt\n")
    from substratus.storage import pack_context

    md5 = pack_context(ctx, tmp_path / "probe.tar.gz")
    digest = local_registry.push(
        f"builds/{ns}/images", f"md5-{md5}", {"train.sh": b"true\n"}, ["sh"]
    )
    sub(plane, ns, "apply", "-f", str(ctx / "model.yaml"), env=dict(server.env))
    pinned = f"{local_registry.address}/builds/{ns}/images@{digest}"

    def built() -> Any:
        m = get(plane, ns, "model", "built")
        return m if (m.get("status") or {}).get("image") == pinned else None

    model = until("status.image from the registry", built, operator)
    assert not build_jobs(plane, ns)
    conditions = {c["type"]: c for c in model["status"]["conditions"]}
    assert conditions["ImageBuilt"]["status"] == "True"
    run = until(
        "the run's Job",
        lambda: json.loads(
            plane.kubectl(
                "get", "jobs", "-n", ns, "-l", "substratus.ai/role=job", "-o", "json"
            ).stdout
        )["items"],
        operator,
    )
    main = run[0]["spec"]["template"]["spec"]["containers"][0]
    assert (main["image"], main["imagePullPolicy"]) == (pinned, "IfNotPresent")


def test_builds_run_in_the_builds_namespace_and_go_with_their_object(
    kube_control_plane: ControlPlane,
    substratus_crds: list[str],
    kube_namespace: str,
    local_registry: LocalRegistry,
    tmp_path: Path,
) -> None:
    plane, ns = kube_control_plane, kube_namespace
    builds_ns = f"{ns}-builds"
    plane.kubectl("create", "namespace", builds_ns)
    own = OwnEndpoint(free_port())
    own.settings["SUBSTRATUS_BUILD_NAMESPACE"] = builds_ns
    try:
        url = f"file://{tmp_path}/bucket"
        with build_operator(plane, local_registry, url, own, tmp_path / "op") as operator:
            ctx = context_dir(tmp_path, "true\n")
            sub(plane, ns, "apply", "--no-follow-build", "-f", str(ctx / "model.yaml"), env={})
            (job,) = until("a build Job", lambda: build_jobs(plane, builds_ns), operator)
            notes = job["metadata"]["annotations"]
            assert notes["substratus.ai/object-namespace"] == ns
            assert notes["substratus.ai/object-name"] == "built"
            assert not build_jobs(plane, ns)
            account = plane.kubectl("get", "serviceaccount", "-n", builds_ns, "substratus-build")
            assert account.returncode == 0
            plane.kubectl("delete", "-n", ns, "model", "built", "--wait=true", "--timeout=60s")
            until("the build Job deleted", lambda: not build_jobs(plane, builds_ns), operator)
    finally:
        plane.kubectl("delete", "namespace", builds_ns, "--wait=false", check=False)


def test_a_git_build_job_clones_the_resolved_commit(
    kube_control_plane: ControlPlane,
    substratus_crds: list[str],
    kube_namespace: str,
    local_registry: LocalRegistry,
    tmp_path: Path,
) -> None:
    plane, ns = kube_control_plane, kube_namespace
    repo = tmp_path / "repo"
    (repo / "ml").mkdir(parents=True)
    (repo / "ml" / "Dockerfile").write_text(DOCKERFILE)

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    git("init", "-q", "-b", "main")
    git("-c", "user.email=t@example.com", "-c", "user.name=t", "add", ".")
    git("-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "one")
    sha = git("rev-parse", "HEAD")
    own = OwnEndpoint(free_port())
    with build_operator(plane, local_registry, f"file://{tmp_path}/b", own, tmp_path / "op") as op:
        git_source = {"url": f"file://{repo}", "branch": "main", "path": "ml"}
        manifest = {
            "apiVersion": "substratus.ai/v1",
            "kind": "Model",
            "metadata": {"name": "from-git"},
            "spec": {"image": {"git": git_source}, "command": ["true"]},
        }
        plane.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest))
        (job,) = until("a build Job", lambda: build_jobs(plane, ns), op)
    pod = job["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["args"] == [
        "context", "--dest", "/workspace/context",
        "--git", f"file://{repo}", "--ref", "main", "--commit", sha,
    ]  # fmt: skip
    args = pod["containers"][0]["args"]
    assert "context=/workspace/context/ml" in args
    output = next(a for a in args if a.startswith("type=image,name="))
    image = output.removeprefix("type=image,name=").split(",")[0]
    assert image.startswith(f"{local_registry.address}/builds/{ns}/images:git-{sha}-")
    assert ready_reason(get(plane, ns, "model", "from-git")) == "Building"
