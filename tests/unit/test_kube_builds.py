"""Image builds on a cluster, their pure parts: the build Job (BuildKit's flags, the context from
the bucket or git, the destination and its cache, least privilege), the tag that names the
input, and the build's state read back from its Job, its pod and the registry.

The registry is replaced by a dictionary here (the unit under test is the reading of Jobs and
pods); tests/kube/test_operator_builds.py runs the same against a real registry."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from substratus.api import parse_object
from substratus.core.observed import Phase
from substratus.core.reconcile import build_source
from substratus.runtimes.kubernetes import builds, names
from substratus.runtimes.kubernetes.builder import Builder
from substratus.runtimes.kubernetes.children import Children
from substratus.runtimes.kubernetes.config import ConfigError, OperatorConfig, load_config
from substratus.runtimes.kubernetes.imageconfig import ImageConfigs, registry_logins

MD5 = "0123456789abcdef0123456789abcdef"
SHA = "a" * 40
CFG = OperatorConfig(
    artifact_url="s3://bucket/sub",
    helper_image="helper:1",
    registry="10.0.0.5:5000/builds",
    insecure_registries=("10.0.0.5:5000",),
)


def model(image: dict[str, Any], name: str = "ft") -> Any:
    return parse_object(
        {
            "apiVersion": "substratus.ai/v1",
            "kind": "Model",
            "metadata": {"name": name, "namespace": "team", "uid": "u-1", "generation": 1},
            "spec": {"image": image, "command": ["python", "train.py"]},
        }
    )


UPLOADED = model({"upload": {"md5": MD5, "requestId": "r1"}})
FROM_GIT = model({"git": {"url": "https://git.example/repo.git", "branch": "main", "path": "ml"}})


def job_for(obj: Any, cfg: OperatorConfig = CFG, commit: str | None = SHA) -> dict[str, Any]:
    source = build_source(obj)
    assert source is not None
    image = f"{builds.repository(obj, cfg)}:{builds.image_tag(obj, source, commit)}"
    upload_url = f"s3://bucket/sub/.uploads/team/models/{obj.metadata.name}/{MD5}.tar.gz"
    args = builds.context_args(obj, upload_url if obj.spec.image.upload else None, commit)
    return builds.build_job(obj, cfg, source, image, args)


def test_upload_build_job() -> None:
    job = job_for(UPLOADED)
    meta, spec = job["metadata"], job["spec"]
    assert meta["ownerReferences"][0]["uid"] == "u-1"
    assert meta["labels"][names.LABEL_ROLE] == "build"
    assert meta["annotations"][builds.ANNOTATION_IMAGE] == (
        f"10.0.0.5:5000/builds/team/images:md5-{MD5}"
    )
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] == 3600
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "substratus-build"
    assert pod["automountServiceAccountToken"] is False
    (context,) = pod["initContainers"]
    assert context["image"] == "helper:1"
    assert context["args"] == [
        "context",
        "--dest",
        "/workspace/context",
        "--upload",
        f"s3://bucket/sub/.uploads/team/models/ft/{MD5}.tar.gz",
        "--md5",
        MD5,
    ]
    (build,) = pod["containers"]
    assert build["image"] == "docker.io/moby/buildkit:v0.34.2-rootless"
    assert build["command"] == ["buildctl-daemonless.sh"]
    repo = "10.0.0.5:5000/builds/team/images"
    assert build["args"] == [
        "build",
        "--frontend",
        "dockerfile.v0",
        "--local",
        "context=/workspace/context",
        "--local",
        "dockerfile=/workspace/context",
        "--output",
        f"type=image,name={repo}:md5-{MD5},push=true,registry.insecure=true",
        "--export-cache",
        f"type=registry,ref={repo}:buildcache,registry.insecure=true,mode=max",
        "--import-cache",
        f"type=registry,ref={repo}:buildcache,registry.insecure=true",
    ]
    env = {e["name"]: e["value"] for e in build["env"]}
    assert env == {
        "BUILDKITD_FLAGS": "--oci-worker-no-process-sandbox --config /workspace/buildkitd.toml"
    }
    # The daemon's settings travel to the context step, which writes them beside the context.
    toml = {e["name"]: e["value"] for e in context["env"]}["SUBSTRATUS_BUILDKITD_TOML"]
    assert toml == '[registry."10.0.0.5:5000"]\n  http = true\n  insecure = true\n'
    security = build["securityContext"]
    assert security["runAsUser"] == 1000
    assert security["seccompProfile"] == {"type": "Unconfined"}
    assert security["appArmorProfile"] == {"type": "Unconfined"}
    mounts = {m["mountPath"]: m for m in build["volumeMounts"]}
    assert mounts["/workspace"]["readOnly"] is True
    assert "/home/user/.local/share/buildkit" in mounts


def test_git_build_job_clones_the_resolved_commit_and_builds_its_path() -> None:
    job = job_for(FROM_GIT)
    pod = job["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["args"][3:] == [
        "--git",
        "https://git.example/repo.git",
        "--ref",
        "main",
        "--commit",
        SHA,
    ]
    args = pod["containers"][0]["args"]
    assert "context=/workspace/context/ml" in args
    tag = job["metadata"]["annotations"][builds.ANNOTATION_IMAGE].rsplit(":", 1)[1]
    assert tag.startswith(f"git-{SHA}-") and len(tag) == len(f"git-{SHA}-") + 8


def test_tags_name_the_input() -> None:
    source = build_source(UPLOADED)
    assert source is not None
    assert builds.image_tag(UPLOADED, source, None) == f"md5-{MD5}"
    plain = model({"git": {"url": "https://git.example/r.git"}})
    plain_source = build_source(plain)
    assert plain_source is not None
    assert builds.image_tag(plain, plain_source, SHA) == f"git-{SHA}"
    # Unresolved (the repository could not be asked): the source's hash, never a commit's.
    assert builds.image_tag(plain, plain_source, None).startswith("src-")
    long = model({"upload": {"md5": MD5}}, name="x" * 63)
    assert len(builds.job_name(long, "upload:r1")) <= 63


def test_registry_credentials_are_mounted_for_the_push() -> None:
    auth = '{"auths": {"registry.example": {"auth": "dTpw"}}}'
    cfg = replace(CFG, registry="registry.example/team", registry_auth=auth, insecure_registries=())
    build = job_for(UPLOADED, cfg)["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in build["env"]}
    assert env["DOCKER_CONFIG"] == "/home/user/.docker"
    assert env["BUILDKITD_FLAGS"] == "--oci-worker-no-process-sandbox"  # nothing to configure
    assert not any("insecure" in a for a in build["args"])
    assert registry_logins(auth) == {"registry.example": ("u", "p")}
    secret = builds.registry_secret("team", auth)
    assert secret["type"] == "kubernetes.io/dockerconfigjson"


def test_mirrors_for_from_images() -> None:
    cfg = replace(CFG, registry_mirrors={"substratus.local": "10.0.0.5:5000"})
    assert builds.buildkitd_toml(cfg) == (
        '[registry."10.0.0.5:5000"]\n  http = true\n  insecure = true\n'
        '[registry."substratus.local"]\n  mirrors = ["10.0.0.5:5000"]\n'
    )
    env = {"SUBSTRATUS_ARTIFACT_URL": "s3://b", "SUBSTRATUS_HELPER_IMAGE": "h"}
    loaded = load_config({**env, "SUBSTRATUS_REGISTRY_MIRRORS": '{"substratus.local": "r:5"}'})
    assert loaded.registry_mirrors == {"substratus.local": "r:5"}


def test_registry_settings_are_checked() -> None:
    env = {"SUBSTRATUS_ARTIFACT_URL": "s3://b", "SUBSTRATUS_HELPER_IMAGE": "h"}
    assert load_config(env).registry == ""
    cfg = load_config({**env, "SUBSTRATUS_REGISTRY": "reg.example:5000/builds/"})
    assert cfg.registry == "reg.example:5000/builds" and cfg.registry_host == "reg.example:5000"
    for bad in ("https://reg.example", "Reg.Example"):
        try:
            load_config({**env, "SUBSTRATUS_REGISTRY": bad})
        except ConfigError as e:
            assert "SUBSTRATUS_REGISTRY" in str(e)
        else:
            raise AssertionError(f"{bad!r} accepted")
    try:
        load_config({**env, "SUBSTRATUS_REGISTRY_AUTH_FILE": "/no/such/config.json"})
    except ConfigError as e:
        assert "SUBSTRATUS_REGISTRY_AUTH_FILE" in str(e)
    else:
        raise AssertionError("a missing auth file accepted")


class Registry(ImageConfigs):
    """Tags the registry has, as a dictionary (see the module docstring)."""

    def __init__(self, tags: dict[str, str]) -> None:
        super().__init__()
        self.tags = tags

    def digest(self, image: str, fresh: bool = False) -> str | None:
        return self.tags.get(image)


def builder(tags: dict[str, str], *children: tuple[str, dict[str, Any]]) -> Builder:
    cache = Children()
    for kind, body in children:
        cache.event(kind, "ADDED", body)
    mismatch = "spec.image.upload.md5: the uploaded context has md5 ffff, expected 0123"
    tails = {"substratus-context": f"substratus-context: {mismatch}\n", "build": "#5 ERROR\n"}
    return Builder(None, CFG, cache, Registry(tags), lambda pod, c: tails[c])  # type: ignore[arg-type]


def pod_for(job: dict[str, Any], statuses: dict[str, Any]) -> dict[str, Any]:
    meta = job["metadata"]
    return {
        "metadata": {
            "name": meta["name"] + "-x",
            "namespace": meta["namespace"],
            "labels": {**meta["labels"], "job-name": meta["name"]},
            "ownerReferences": [{"kind": "Job", "name": meta["name"], "controller": True}],
            "annotations": {names.ANNOTATION_OWNER: "ft"},
        },
        "status": statuses,
    }


def test_state_without_a_registry_names_the_setting() -> None:
    b = Builder(None, replace(CFG, registry=""), Children(), Registry({}), lambda p, c: "")  # type: ignore[arg-type]
    state = b.state(UPLOADED)
    assert state.phase == Phase.FAILED and "SUBSTRATUS_REGISTRY" in state.message


def test_state_from_the_registry_when_there_is_no_job() -> None:
    image = f"10.0.0.5:5000/builds/team/images:md5-{MD5}"
    assert builder({}).state(UPLOADED).phase == Phase.NONE
    found = builder({image: "sha256:abc"}).state(UPLOADED)
    assert found.phase == Phase.SUCCEEDED
    assert found.image == "10.0.0.5:5000/builds/team/images@sha256:abc"
    assert found.source == build_source(UPLOADED)


def test_state_from_the_job() -> None:
    job = job_for(UPLOADED)
    image = job["metadata"]["annotations"][builds.ANNOTATION_IMAGE]
    assert builder({}, ("Job", job)).state(UPLOADED).phase == Phase.RUNNING
    complete = {**job, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    done = builder({image: "sha256:d1"}, ("Job", complete)).state(UPLOADED)
    assert (done.phase, done.image) == (Phase.SUCCEEDED, image.rsplit(":", 1)[0] + "@sha256:d1")
    lost = builder({}, ("Job", complete)).state(UPLOADED)
    assert lost.phase == Phase.FAILED and "registry has no" in lost.message


def test_failed_context_names_the_field_and_a_failed_build_gives_its_log() -> None:
    job = job_for(UPLOADED)
    failed_job = {**job, "status": {"conditions": [{"type": "Failed", "status": "True"}]}}
    ended = {"terminated": {"exitCode": 3, "reason": "Error"}}
    init_failed = pod_for(
        job, {"initContainerStatuses": [{"name": "substratus-context", "state": ended}]}
    )
    state = builder({}, ("Job", failed_job), ("Pod", init_failed)).state(UPLOADED)
    assert state.phase == Phase.FAILED
    assert state.message.startswith("spec.image.upload.md5: the uploaded context has md5 ffff")
    build_failed = pod_for(
        job,
        {
            "initContainerStatuses": [
                {"name": "substratus-context", "state": {"terminated": {"exitCode": 0}}}
            ],
            "containerStatuses": [{"name": "build", "state": ended}],
        },
    )
    state = builder({}, ("Job", job), ("Pod", build_failed)).state(UPLOADED)
    assert state.phase == Phase.FAILED
    assert state.message.startswith("BuildKit failed (exit code 3)")
    assert "#5 ERROR" in state.message
    deadline = {
        **job,
        "status": {
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "DeadlineExceeded",
                    "message": "Job was active longer than specified deadline",
                }
            ]
        },
    }
    state = builder({}, ("Job", deadline)).state(UPLOADED)
    assert state.message.startswith("DeadlineExceeded: Job was active longer")


def test_run_jobs_and_build_jobs_are_told_apart() -> None:
    build = job_for(UPLOADED)
    b = builder({}, ("Job", build))
    assert [j["metadata"]["name"] for j in b.jobs(UPLOADED.key)] == [build["metadata"]["name"]]


def test_builds_in_their_own_namespace() -> None:
    cfg = replace(CFG, build_namespace="substratus-builds")
    job = job_for(UPLOADED, cfg)
    meta = job["metadata"]
    assert meta["namespace"] == "substratus-builds"
    assert "ownerReferences" not in meta  # none across namespaces: the finalizer deletes it
    owner = {names.ANNOTATION_OWNER: "ft", names.ANNOTATION_OWNER_NAMESPACE: "team"}
    assert owner.items() <= meta["annotations"].items()
    assert job["spec"]["template"]["metadata"]["annotations"] == owner
    # Objects of the same name in two namespaces build side by side there.
    other = parse_object({**UPLOADED.dump(), "metadata": {"name": "ft", "namespace": "other"}})
    source = build_source(UPLOADED)
    assert source is not None
    assert builds.job_name(UPLOADED, source, cfg) != builds.job_name(other, source, cfg)
    # The operator's cache files the Job and its pod under their owner, in its namespace.
    b = Builder(None, cfg, Children(), Registry({}), lambda p, c: "")  # type: ignore[arg-type]
    b.children.event("Job", "ADDED", job)
    assert [j["metadata"]["name"] for j in b.jobs(UPLOADED.key)] == [meta["name"]]
    assert b.state(UPLOADED).phase == Phase.RUNNING


def test_a_build_that_cannot_start_says_why_and_waits() -> None:
    job = job_for(UPLOADED)
    waiting = {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}
    pod = pod_for(
        job, {"containerStatuses": [{"name": "build", "image": "bk:1", "state": waiting}]}
    )
    state = builder({}, ("Job", job), ("Pod", pod)).state(UPLOADED)
    assert state.phase == Phase.RUNNING
    assert state.message == "bk:1: ImagePullBackOff: not found"
    from substratus.core.observed import Observed, UploadState
    from substratus.core.reconcile import decide

    received = UploadState(url="u", received=True)
    status = decide(UPLOADED, Observed(now=0, upload=received, build=state)).status
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert (ready.reason, ready.message) == (
        "Building",
        "building the image (waiting: bk:1: ImagePullBackOff: not found)",
    )
