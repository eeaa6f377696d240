"""An image build as a ``batch/v1`` Job running rootless BuildKit, and what is read back.

One Job per build source (``core.reconcile.build_source``), named and labelled by its hash:
a restarted operator finds it, never starts a second one. The pod:

- ``substratus-context`` (the helper image) puts the context in ``/workspace``: the uploaded
  tarball from the bucket, checked against ``spec.image.upload.md5`` before it is unpacked, or
  a clone of ``spec.image.git`` at the commit the operator resolved;
- ``build`` runs ``buildctl-daemonless.sh`` (BuildKit's rootless image: user 1000, its own
  user namespace, hence seccomp and AppArmor unconfined and no process sandbox, as BuildKit's
  own Kubernetes example does), with the Dockerfile frontend (it honours ``.dockerignore``),
  pushing ``<registry>/<namespace>/images:<tag>`` and a registry layer cache beside it.

The tag names the input (``md5-<md5>``, ``git-<commit>``), so an image already pushed for the
same input is found in the registry and not built again.
"""

from __future__ import annotations

import hashlib
from typing import Any

from substratus.api.kinds import Resource
from substratus.runtimes.kubernetes import names
from substratus.runtimes.kubernetes.config import OperatorConfig
from substratus.runtimes.kubernetes.pods import CREDENTIALS_SECRET, HELPER_MODULE, REGISTRY_SECRET

ROLE = "build"
CONTEXT = "substratus-context"
BUILD = "build"
LABEL_SOURCE = f"{names.GROUP}/build-source"
ANNOTATION_IMAGE = f"{names.GROUP}/build-image"  # repository:tag the Job pushes
SERVICE_ACCOUNT = "substratus-build"
WORKSPACE = "/workspace"
BUILDKIT_STATE = "/home/user/.local/share/buildkit"  # an emptyDir: some nodes mount nosuid
DOCKER_CONFIG = "/home/user/.docker"
BUILDER_UID = 1000  # the rootless image's user


def source_hash(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def repository(obj: Resource, cfg: OperatorConfig) -> str:
    """Where ``obj``'s built images go: one repository per namespace, tagged by input, so
    objects built from the same context (a Notebook, then the Model it became) share one
    image and one layer cache."""
    return f"{cfg.registry}/{obj.metadata.namespace}/images"


def image_tag(obj: Resource, source: str, commit: str | None) -> str:
    """The tag of the image built from ``source``: the input itself where it is known (the
    upload's md5, the resolved git commit and sub-directory), else the source's hash."""
    image = obj.spec.image
    if image.upload is not None and image.upload.md5:
        return f"md5-{image.upload.md5}"
    if image.git is not None and commit:
        path = image.git.path or ""
        suffix = f"-{hashlib.sha256(path.encode()).hexdigest()[:8]}" if path else ""
        return f"git-{commit}{suffix}"
    return f"src-{source_hash(source)}"


def build_namespace(obj: Resource, cfg: OperatorConfig) -> str:
    return cfg.build_namespace or obj.metadata.namespace


def job_name(obj: Resource, source: str, cfg: OperatorConfig | None = None) -> str:
    suffix = f"build-{source_hash(source)[:10]}"
    if cfg is not None and build_namespace(obj, cfg) != obj.metadata.namespace:
        # Objects of every namespace build side by side there: the namespace is in the name.
        suffix = f"{hashlib.sha256(obj.metadata.namespace.encode()).hexdigest()[:6]}-{suffix}"
    return names.child_name(obj, suffix)


def _cache_opts(repo: str, cfg: OperatorConfig) -> str:
    insecure = ",registry.insecure=true" if cfg.registry_insecure else ""
    return f"type=registry,ref={repo}:buildcache{insecure}"


def buildkitd_toml(cfg: OperatorConfig) -> str:
    """BuildKit's daemon settings for the registries it talks to: plain HTTP to the insecure
    ones (pushes, the layer cache, ``FROM`` pulls), and the configured mirrors."""
    lines: list[str] = []
    for host in sorted({*cfg.insecure_registries, *cfg.registry_mirrors}):
        lines.append(f'[registry."{host}"]')
        if host in cfg.registry_mirrors:
            lines.append(f'  mirrors = ["{cfg.registry_mirrors[host]}"]')
        if host in cfg.insecure_registries:
            lines += ["  http = true", "  insecure = true"]
    return "\n".join(lines) + "\n" if lines else ""


def buildctl_args(image: str, cfg: OperatorConfig, context_dir: str) -> list[str]:
    """``buildctl build`` for the context in ``context_dir``: push ``image``, reuse and
    refresh the repository's layer cache."""
    repo = image.rsplit(":", 1)[0]
    insecure = ",registry.insecure=true" if cfg.registry_insecure else ""
    return [
        "build",
        "--frontend",
        "dockerfile.v0",
        "--local",
        f"context={context_dir}",
        "--local",
        f"dockerfile={context_dir}",
        "--output",
        f"type=image,name={image},push=true{insecure}",
        "--export-cache",
        f"{_cache_opts(repo, cfg)},mode=max",
        "--import-cache",
        _cache_opts(repo, cfg),
    ]


def build_job(
    obj: Resource,
    cfg: OperatorConfig,
    source: str,
    image: str,
    context_args: list[str],
) -> dict[str, Any]:
    """The Job that builds ``obj``'s image from ``source`` and pushes it as ``image``;
    ``context_args``: the helper's ``context`` arguments (where the context comes from)."""
    labels = names.labels(obj, role=ROLE)
    labels[LABEL_SOURCE] = source_hash(source)
    namespace = build_namespace(obj, cfg)
    owner = {names.ANNOTATION_OWNER: obj.metadata.name}
    if namespace != obj.metadata.namespace:
        # No owner reference across namespaces: the operator deletes these Jobs itself.
        owner[names.ANNOTATION_OWNER_NAMESPACE] = obj.metadata.namespace
    annotations = {**owner, ANNOTATION_IMAGE: image}
    context_dir = f"{WORKSPACE}/context"
    git = obj.spec.image.git
    if git is not None and git.path:
        context_dir = f"{context_dir}/{git.path}"
    volumes: list[dict[str, Any]] = [
        {"name": "workspace", "emptyDir": {}},
        {"name": "buildkit", "emptyDir": {}},
    ]
    build_mounts: list[dict[str, Any]] = [
        {"name": "workspace", "mountPath": WORKSPACE, "readOnly": True},
        {"name": "buildkit", "mountPath": BUILDKIT_STATE},
    ]
    # No PID namespace of its own in a pod (Kubernetes cannot unmask /proc for it).
    flags = "--oci-worker-no-process-sandbox"
    toml = buildkitd_toml(cfg)
    context_env: list[dict[str, Any]] = []
    if toml:  # written by the context step, beside the context
        flags += f" --config {WORKSPACE}/buildkitd.toml"
        context_env.append({"name": "SUBSTRATUS_BUILDKITD_TOML", "value": toml})
    build_env: list[dict[str, Any]] = [{"name": "BUILDKITD_FLAGS", "value": flags}]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": SERVICE_ACCOUNT,
        "automountServiceAccountToken": False,
        "initContainers": [
            {
                "name": CONTEXT,
                "image": cfg.helper_image,
                "imagePullPolicy": cfg.image_pull_policy,
                "command": ["python", "-m", HELPER_MODULE],
                "args": ["context", "--dest", f"{WORKSPACE}/context", *context_args],
                "env": context_env,
                "envFrom": [{"secretRef": {"name": CREDENTIALS_SECRET, "optional": True}}],
                "volumeMounts": [{"name": "workspace", "mountPath": WORKSPACE}],
                "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}},
            }
        ],
        "containers": [
            {
                "name": BUILD,
                "image": cfg.build_image,
                "imagePullPolicy": cfg.image_pull_policy,
                "command": ["buildctl-daemonless.sh"],
                "args": buildctl_args(image, cfg, context_dir),
                "env": build_env,
                "securityContext": {
                    "runAsUser": BUILDER_UID,
                    "runAsGroup": BUILDER_UID,
                    "seccompProfile": {"type": "Unconfined"},
                    "appArmorProfile": {"type": "Unconfined"},
                },
                "volumeMounts": build_mounts,
                "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}},
            }
        ],
        "volumes": volumes,
    }
    if cfg.registry_auth:
        volumes.append(
            {
                "name": "registry-auth",
                "secret": {
                    "secretName": REGISTRY_SECRET,
                    "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
                },
            }
        )
        build_mounts.append({"name": "registry-auth", "mountPath": DOCKER_CONFIG, "readOnly": True})
        build_env.append({"name": "DOCKER_CONFIG", "value": DOCKER_CONFIG})
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(obj, source, cfg),
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
            **(
                {"ownerReferences": [names.owner_reference(obj)]}
                if namespace == obj.metadata.namespace
                else {}
            ),
        },
        "spec": {
            "backoffLimit": 0,  # a failed build is BuildFailed; a new requestId tries again
            "activeDeadlineSeconds": cfg.build_timeout_seconds,
            # The owner's name on the pod too: the operator's cache and `sub logs` find it.
            "template": {
                "metadata": {"labels": {**cfg.workload_pod_labels, **labels}, "annotations": owner},
                "spec": pod_spec,
            },
        },
    }


def context_args(obj: Resource, upload_url: str | None, commit: str | None) -> list[str]:
    """Where the helper finds the context: the stored upload (and its md5), or the
    repository, its ref and the commit to check out."""
    image = obj.spec.image
    if image.upload is not None:
        assert upload_url is not None
        args = ["--upload", upload_url]
        return args + (["--md5", image.upload.md5] if image.upload.md5 else [])
    assert image.git is not None
    args = ["--git", image.git.url]
    ref = image.git.tag or image.git.branch
    if ref:
        args += ["--ref", ref]
    return args + (["--commit", commit] if commit else [])


def service_account(namespace: str, cfg: OperatorConfig) -> dict[str, Any]:
    """The builds' own ServiceAccount: no API access, no token in the pod; with a workload
    identity, its annotations (the context step reads uploads from the bucket)."""
    meta: dict[str, Any] = {"name": SERVICE_ACCOUNT, "namespace": namespace}
    if cfg.workload_service_account_annotations:
        meta["annotations"] = dict(cfg.workload_service_account_annotations)
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta,
        "automountServiceAccountToken": False,
    }


def registry_secret(namespace: str, config_json: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/dockerconfigjson",
        "metadata": {"name": REGISTRY_SECRET, "namespace": namespace},
        "stringData": {".dockerconfigjson": config_json},
    }
