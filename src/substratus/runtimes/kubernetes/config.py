"""The operator's configuration: one documented source, checked before anything starts.

Read from ``SUBSTRATUS_*`` environment variables, over a YAML file (a mounted ConfigMap) named by
``SUBSTRATUS_OPERATOR_CONFIG`` whose keys are the same names in lower case without the prefix
(``artifact_url``, ``helper_image``, ...). The environment wins.

Job retries follow ``SUBSTRATUS_JOB_ATTEMPTS``, ``SUBSTRATUS_BACKOFF_SECONDS`` and
``SUBSTRATUS_BACKOFF_MAX_SECONDS``, as locally (``core/retry.py``).

Bucket credentials are never in this configuration: the operator's own environment holds them
(``AWS_*``, ``GOOGLE_*``, ``AZURE_*``, ``STORAGE_EMULATOR_HOST``), and it copies them into a
Secret in each namespace it runs workloads in, for the containers that fetch and commit
artifacts; with workload identity there is nothing to copy.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from substratus.core.images import BUILTIN_IMAGES, ORIGINAL_IMAGES, image_repository
from substratus.runtimes.kubernetes.logs import FORMATS

CLOUDS = ("generic", "gke", "eks", "aks")
DEFAULT_BUILD_IMAGE = "docker.io/moby/buildkit:v0.34.2-rootless"
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
CREDENTIAL_PREFIXES = ("AWS_", "AZURE_", "GOOGLE_", "GCSFS_")
CREDENTIAL_NAMES = ("STORAGE_EMULATOR_HOST",)


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names it."""


@dataclass(frozen=True)
class OperatorConfig:
    artifact_url: str  # where artifacts are committed: s3://, gs://, az:// (file:// in tests)
    helper_image: str  # runs the contract's helper (fetch, commit) in every workload pod
    image_tag: str = "latest"
    # Built-in image name (core/images.py) -> the image a pod runs.
    images: Mapping[str, str] = field(default_factory=dict)
    image_pull_policy: str = "IfNotPresent"
    cloud: str = "generic"
    # The generic and AKS profiles: a node label whose value is the GPU type (e.g. nvidia-l4);
    # unset, a GPU workload goes to any GPU node there.
    gpu_type_label: str = ""
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    lease_namespace: str = "substratus-system"  # where replicas elect a leader (a Lease)
    workers: int = 8  # objects reconciled at once (each one by one worker at a time)
    # Registries read over plain HTTP (host:port) when an image's command is looked up.
    insecure_registries: tuple[str, ...] = ()
    # A Notebook's home volume: its claim's storage class (empty: the cluster's default) and
    # size when the Notebook gives no resources.disk.
    notebook_storage_class: str = ""
    notebook_home_size: str = "10Gi"
    # Copied into each workload namespace's credentials Secret (see the module docstring).
    credentials: Mapping[str, str] = field(default_factory=dict)
    # Image builds (image.git, image.upload): where built images are pushed (host[:port][/path];
    # empty: builds fail, saying so), the rootless BuildKit image a build Job runs, how long a
    # build may take, and a docker config.json with the registry's credentials (copied into
    # each namespace that builds as the Secret builds push with and pods pull with).
    registry: str = ""
    build_image: str = DEFAULT_BUILD_IMAGE
    # Where build Jobs run: one namespace that allows their pods (seccomp and AppArmor
    # unconfined), so the namespaces of workloads can enforce a restricted Pod Security
    # Standard; empty: each object's own namespace.
    build_namespace: str = ""
    build_timeout_seconds: int = 3600
    registry_auth: str = ""  # the config.json's text
    # Registries builds pull FROM images through another (host -> mirror host[:port]): a dev
    # cluster serves the images it loaded (substratus.local/...) from its local registry.
    registry_mirrors: Mapping[str, str] = field(default_factory=dict)
    # The operator's own upload endpoint (uploadserver.py), for buckets that cannot sign URLs
    # for clients: the URL clients reach it at (empty: off), where it listens, and its
    # signing key (SUBSTRATUS_UPLOAD_KEY, from a Secret; required with the endpoint).
    upload_endpoint: str = ""
    upload_listen: str = "0.0.0.0:8080"
    upload_key: str = field(default="", repr=False)
    # Workload identity (GKE Workload Identity, EKS IRSA, Azure Workload Identity): the
    # ServiceAccount workload pods run as, applied in each namespace they run in with these
    # annotations (the cloud identity's), and labels their pods carry (AKS:
    # azure.workload.identity/use). Empty: the namespace's default ServiceAccount.
    workload_service_account: str = ""
    workload_service_account_annotations: Mapping[str, str] = field(default_factory=dict)
    workload_pod_labels: Mapping[str, str] = field(default_factory=dict)
    # Prometheus metrics and the probes (/metrics, /healthz, /readyz: metrics.py) listen here;
    # empty: not served. Log lines as text or JSON (logs.py).
    metrics_listen: str = "0.0.0.0:8081"
    log_format: str = "text"

    @property
    def registry_host(self) -> str:
        return self.registry.split("/", 1)[0]

    @property
    def registry_insecure(self) -> bool:
        """Plain HTTP to the registry (a test's or a dev cluster's)."""
        return self.registry_host in self.insecure_registries

    def image(self, name: str) -> str:
        """The image a pod runs for ``spec.image.name``: built-in names map to the configured
        images; anything else is used as written."""
        repo = image_repository(name)
        original = ORIGINAL_IMAGES.get(repo)
        catalog = original.catalog if original is not None else repo
        if catalog in BUILTIN_IMAGES:
            return self.images.get(catalog) or f"docker.io/{catalog}:{self.image_tag}"
        return name


def _setting(env: Mapping[str, str], file: Mapping[str, Any], name: str) -> Any:
    value = env.get(f"SUBSTRATUS_{name.upper()}")
    return value if value not in (None, "") else file.get(name)


def _words(value: Any) -> tuple[str, ...]:
    """A list from the file, or a comma- or space-separated string."""
    if isinstance(value, str):
        return tuple(w for w in value.replace(",", " ").split() if w)
    return tuple(str(w) for w in value or ())


def _positive(env: Mapping[str, str], file: Mapping[str, Any], name: str, default: int) -> int:
    value = _setting(env, file, name)
    try:
        n = int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ConfigError(f"SUBSTRATUS_{name.upper()}: {value!r} is not a positive number")
    return n


def _quantity(env: Mapping[str, str], file: Mapping[str, Any], name: str, default: str) -> str:
    value = str(_setting(env, file, name) or default)
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?", value):
        raise ConfigError(f"SUBSTRATUS_{name.upper()}: {value!r} is not a quantity such as 10Gi")
    return value


def _mapping(env: Mapping[str, str], file: Mapping[str, Any], name: str) -> dict[str, str]:
    """A mapping from the file, or JSON in the environment variable."""
    value = _setting(env, file, name) or {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise ConfigError(f"SUBSTRATUS_{name.upper()}: not JSON: {e}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"SUBSTRATUS_{name.upper()}: a mapping")
    return {str(k): str(v) for k, v in value.items()}


def _host_port(name: str, value: str) -> None:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"SUBSTRATUS_{name.upper()}: {value!r} is not host:port")


def load_config(env: Mapping[str, str] | None = None) -> OperatorConfig:
    """The configuration from ``env`` (default: the process's), or ConfigError naming what is
    missing or wrong."""
    env = os.environ if env is None else env
    file: dict[str, Any] = {}
    path = env.get("SUBSTRATUS_OPERATOR_CONFIG")
    if path:
        try:
            file = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"SUBSTRATUS_OPERATOR_CONFIG: cannot read {path}: {e}") from None
        if not isinstance(file, dict):
            raise ConfigError(f"SUBSTRATUS_OPERATOR_CONFIG: {path} is not a mapping")
    missing = [
        f"SUBSTRATUS_{n.upper()} (or {n} in the config file)"
        for n in ("artifact_url", "helper_image")
        if not _setting(env, file, n)
    ]
    if missing:
        raise ConfigError("the operator needs " + " and ".join(missing))
    artifact_url = str(_setting(env, file, "artifact_url"))
    if "://" not in artifact_url:
        raise ConfigError(f"SUBSTRATUS_ARTIFACT_URL: {artifact_url!r} is not a bucket URL")
    images = _mapping(env, file, "images")
    unknown = sorted(set(images) - set(BUILTIN_IMAGES))
    if unknown:
        raise ConfigError(f"SUBSTRATUS_IMAGES: not built-in images: {', '.join(unknown)}")
    cloud = str(_setting(env, file, "cloud") or "generic")
    if cloud not in CLOUDS:
        raise ConfigError(f"SUBSTRATUS_CLOUD: {cloud!r} is not one of {', '.join(CLOUDS)}")
    policy = str(_setting(env, file, "image_pull_policy") or "IfNotPresent")
    if policy not in PULL_POLICIES:
        raise ConfigError(
            f"SUBSTRATUS_IMAGE_PULL_POLICY: {policy!r} is not one of {', '.join(PULL_POLICIES)}"
        )
    namespaces = _words(_setting(env, file, "namespaces"))
    registry = str(_setting(env, file, "registry") or "").strip().rstrip("/")
    if registry and (registry.startswith(("http://", "https://")) or registry != registry.lower()):
        raise ConfigError(
            f"SUBSTRATUS_REGISTRY: {registry!r}: write host[:port][/path], in lower case, "
            "without a scheme (plain HTTP registries go in SUBSTRATUS_INSECURE_REGISTRIES)"
        )
    auth_path = str(_setting(env, file, "registry_auth_file") or "")
    registry_auth = ""
    if auth_path:
        try:
            registry_auth = Path(auth_path).read_text()
            json.loads(registry_auth)
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"SUBSTRATUS_REGISTRY_AUTH_FILE: {auth_path}: not a readable docker "
                f"config.json ({e})"
            ) from None
    upload_endpoint = str(_setting(env, file, "upload_endpoint") or "").rstrip("/")
    upload_listen = str(_setting(env, file, "upload_listen") or "0.0.0.0:8080")
    upload_key = env.get("SUBSTRATUS_UPLOAD_KEY", "")
    if upload_endpoint:
        if not upload_endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"SUBSTRATUS_UPLOAD_ENDPOINT: {upload_endpoint!r} is not a URL")
        if len(upload_key) < 16:
            raise ConfigError(
                "SUBSTRATUS_UPLOAD_KEY: the upload endpoint signs URLs with it: give at least "
                "16 random characters (from a Secret)"
            )
        _host_port("upload_listen", upload_listen)
    metrics_listen = str(_setting(env, file, "metrics_listen") or "")
    if metrics_listen == "" and _setting(env, file, "metrics_listen") is None:
        metrics_listen = "0.0.0.0:8081"
    if metrics_listen:
        _host_port("metrics_listen", metrics_listen)
    log_format = str(_setting(env, file, "log_format") or "text")
    if log_format not in FORMATS:
        raise ConfigError(f"SUBSTRATUS_LOG_FORMAT: {log_format!r} is not one of text, json")
    return OperatorConfig(
        artifact_url=artifact_url.rstrip("/"),
        helper_image=str(_setting(env, file, "helper_image")),
        image_tag=str(_setting(env, file, "image_tag") or "latest"),
        images=images,
        image_pull_policy=policy,
        cloud=cloud,
        gpu_type_label=str(_setting(env, file, "gpu_type_label") or ""),
        namespaces=namespaces,
        insecure_registries=_words(_setting(env, file, "insecure_registries")),
        workers=_positive(env, file, "workers", 8),
        lease_namespace=str(_setting(env, file, "lease_namespace") or "substratus-system"),
        notebook_storage_class=str(_setting(env, file, "notebook_storage_class") or ""),
        notebook_home_size=_quantity(env, file, "notebook_home_size", "10Gi"),
        registry=registry,
        build_image=str(_setting(env, file, "build_image") or DEFAULT_BUILD_IMAGE),
        build_namespace=str(_setting(env, file, "build_namespace") or ""),
        build_timeout_seconds=_positive(env, file, "build_timeout_seconds", 3600),
        registry_auth=registry_auth,
        registry_mirrors=_mapping(env, file, "registry_mirrors"),
        upload_endpoint=upload_endpoint,
        upload_listen=upload_listen,
        upload_key=upload_key,
        metrics_listen=metrics_listen,
        log_format=log_format,
        workload_service_account=str(_setting(env, file, "workload_service_account") or ""),
        workload_service_account_annotations=_mapping(
            env, file, "workload_service_account_annotations"
        ),
        workload_pod_labels=_mapping(env, file, "workload_pod_labels"),
        credentials={
            k: v
            for k, v in env.items()
            if k.startswith(CREDENTIAL_PREFIXES) or k in CREDENTIAL_NAMES
        },
    )
