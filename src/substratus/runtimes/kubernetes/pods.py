"""The container contract in a pod, as locally: a pure function from an object to a pod spec.

The workload runs in ``/content`` (an emptyDir shared with the helper containers), with:
- ``model/`` and ``data/``: the referenced objects' committed artifacts, fetched by the
  ``substratus-init`` container (the operator's helper image) into emptyDirs mounted read-only
  (a Server's model also at ``/model/saved``);
- ``params.json`` from the pod's own annotation (a downward API volume) and ``PARAM_*``
  variables; ``env`` with real secret
  references; the identity and thread variables of :func:`substratus.core.contract.contract_env`;
- for a Job, ``artifacts/``, committed by the ``substratus-commit`` container once the command
  has exited 0: files first, the manifest last, to the run's version URL. The command runs
  under a static shell that the init container copies in (any image works, even one with no
  shell), which records its exit code for the committer; the pod succeeds only when both
  succeed, so a Job that is Complete has committed artifacts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from substratus.api.common import EnvFrom
from substratus.api.kinds import Notebook, Resource, Server
from substratus.core.contract import SEED_MODEL_PATH, WORKDIR, contract_env
from substratus.core.images import BASE_IMAGE, NOTEBOOK_IMAGE, builtin_module, image_repository
from substratus.core.params import params_json
from substratus.core.world import MountSources
from substratus.runtimes.kubernetes.config import OperatorConfig
from substratus.runtimes.kubernetes.scheduling import placement, resource_requirements

MAIN = "main"
INIT = "substratus-init"
COMMIT = "substratus-commit"
CREDENTIALS_SECRET = "substratus-artifact-credentials"
REGISTRY_SECRET = "substratus-registry"  # the build registry's docker config (builds.py)
HELPER_DIR = "/substratus"  # the static shell, the exit code
EXIT_FILE = f"{HELPER_DIR}/exit-code"
HELPER_MODULE = "substratus.runtimes.kubernetes.podhelper"

# Runs the command in /content and records its exit code where the committer waits for it.
_WRAPPER = f'cd {WORKDIR} && "$@"; code=$?; echo "$code" > {EXIT_FILE}; exit "$code"'


PARAMS_ANNOTATION = "substratus.ai/params.json"
# Annotations may hold 256 KiB in all; params also travel as PARAM_* variables in the spec.
MAX_PARAMS_BYTES = 64 * 1024


def params_annotation(obj: Resource) -> dict[str, str]:
    """``params.json`` as the pod's annotation, which a downward API volume makes the file (no
    ConfigMap to create per run). CannotRun when it would not fit."""
    text = params_json(obj.spec.params)
    size = len(text.encode())
    if size > MAX_PARAMS_BYTES:
        raise CannotRun(
            f"spec.params: {size} bytes as params.json; at most {MAX_PARAMS_BYTES} on a cluster "
            "(they travel in the pod's annotations and environment)"
        )
    return {PARAMS_ANNOTATION: text}


def fetched_urls(pod_spec: dict[str, Any]) -> list[str]:
    """The committed versions a pod's init container fetches (its ``--fetch URL=DIR``)."""
    for c in pod_spec.get("initContainers") or []:
        if c.get("name") == INIT:
            args = list(c.get("args") or [])
            return [
                args[i + 1].rpartition("=")[0] for i, a in enumerate(args[:-1]) if a == "--fetch"
            ]
    return []


class CannotRun(ValueError):
    """The object's spec cannot become a pod; the message names the field."""


def needs_entrypoint(obj: Resource, image_name: str) -> bool:
    """Whether the command is the image's own (ENTRYPOINT + CMD, read from its registry):
    no ``spec.command`` and not a built-in image whose module is known."""
    if obj.spec.command:
        return False
    if builtin_module(image_name) is None:
        return True
    # substratusai/base runs the user's command; as a Notebook it runs JupyterLab.
    return image_repository(image_name) == BASE_IMAGE and not isinstance(obj, Notebook)


def workload_argv(
    obj: Resource, image_name: str, entrypoint: Sequence[str] | None = None
) -> list[str]:
    """What the main container runs under the contract's shell: ``spec.command``, a built-in
    image's module, else the image's ``entrypoint`` (ENTRYPOINT + CMD, from its registry)."""
    if obj.spec.command:
        return list(obj.spec.command)
    module = builtin_module(image_name)
    if module is not None and image_repository(image_name) != BASE_IMAGE:
        return ["python", "-m", module]
    if module is not None and isinstance(obj, Notebook):
        return ["python", "-m", str(builtin_module(NOTEBOOK_IMAGE))]
    if entrypoint:
        return list(entrypoint)
    raise CannotRun(
        f"spec.command: required for image {image_name!r}: in a pod the command runs under "
        "the contract's shell, which needs it spelled out"
    )


def workload_pod_spec(
    obj: Resource,
    image_name: str,
    cfg: OperatorConfig,
    mounts: MountSources,
    commit_to: tuple[str, str] | None = None,
    entrypoint: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The pod spec of one run of ``obj`` with the image ``decide`` chose (a built-in name is
    mapped by the configuration); ``commit_to`` is a Job's (object URL, artifact version);
    ``entrypoint`` the image's own command, where that is what runs (``needs_entrypoint``).
    Raises CannotRun when there is no command to run."""
    image, argv = cfg.image(image_name), workload_argv(obj, image_name, entrypoint)
    # A built image is pinned by digest and lives in the build registry only: pulled once,
    # whatever the policy for the images a cluster imports.
    pull = "IfNotPresent" if obj.spec.image.has_build else cfg.image_pull_policy
    volumes: list[dict[str, Any]] = [
        {"name": "content", "emptyDir": {}},
        {"name": "helper", "emptyDir": {}},
        {
            "name": "params",
            "downwardAPI": {
                "items": [
                    {
                        "path": "params.json",
                        "fieldRef": {"fieldPath": f"metadata.annotations['{PARAMS_ANNOTATION}']"},
                    }
                ]
            },
        },
    ]
    main_mounts: list[dict[str, Any]] = [
        {"name": "content", "mountPath": WORKDIR},
        {"name": "helper", "mountPath": HELPER_DIR},
        {"name": "params", "mountPath": f"{WORKDIR}/params.json", "subPath": "params.json"},
    ]
    init_mounts: list[dict[str, Any]] = [
        {"name": "helper", "mountPath": HELPER_DIR},
        {"name": "content", "mountPath": WORKDIR},
    ]
    init_args = ["init", "--bin", f"{HELPER_DIR}/bin", "--workdir", WORKDIR]
    for sub, dep in (("model", mounts.model), ("data", mounts.data)):
        if dep is None or dep.url is None:
            continue
        volumes.append({"name": sub, "emptyDir": {}})
        init_mounts.append({"name": sub, "mountPath": f"/fetch/{sub}"})
        init_args += ["--fetch", f"{dep.url}={'/fetch/' + sub}"]
        main_mounts.append({"name": sub, "mountPath": f"{WORKDIR}/{sub}", "readOnly": True})
        if sub == "model" and isinstance(obj, Server):
            main_mounts.append({"name": sub, "mountPath": SEED_MODEL_PATH, "readOnly": True})
    helper_env = [{"secretRef": {"name": CREDENTIALS_SECRET, "optional": True}}]
    small = {"requests": {"cpu": "50m", "memory": "64Mi"}}
    containers = [
        {
            "name": MAIN,
            "image": image,
            "imagePullPolicy": pull,
            "command": [f"{HELPER_DIR}/bin/sh", "-c", _WRAPPER, "substratus", *argv],
            "workingDir": WORKDIR,
            "env": workload_env(obj),
            "volumeMounts": main_mounts,
            "resources": resource_requirements(obj.spec.resources),
        }
    ]
    if commit_to is not None:
        containers.append(
            {
                "name": COMMIT,
                "image": cfg.helper_image,
                "imagePullPolicy": cfg.image_pull_policy,
                "command": ["python", "-m", HELPER_MODULE],
                "args": [
                    "commit",
                    "--exit-file",
                    EXIT_FILE,
                    "--artifacts",
                    f"{WORKDIR}/artifacts",
                    "--to",
                    commit_to[0],
                    "--version",
                    commit_to[1],
                    "--progress-port",
                    str(PROGRESS_PORT),
                ],
                # The job's progress.json, for the operator (through the API server's proxy).
                "ports": [{"name": "progress", "containerPort": PROGRESS_PORT}],
                "envFrom": helper_env,
                "volumeMounts": [
                    {"name": "content", "mountPath": WORKDIR},
                    {"name": "helper", "mountPath": HELPER_DIR},
                ],
                "resources": small,
            }
        )
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 30,
        "initContainers": [
            {
                "name": INIT,
                "image": cfg.helper_image,
                "imagePullPolicy": cfg.image_pull_policy,
                "command": ["python", "-m", HELPER_MODULE],
                "args": init_args,
                "envFrom": helper_env,
                "volumeMounts": init_mounts,
                "resources": small,
            }
        ],
        "containers": containers,
        "volumes": volumes,
        **placement(obj.spec.resources, cfg.cloud, cfg.gpu_type_label),
    }
    if cfg.registry_auth:  # built images come from the build registry
        spec["imagePullSecrets"] = [{"name": REGISTRY_SECRET}]
    if cfg.workload_service_account:  # the cloud identity that reads and writes the bucket
        spec["serviceAccountName"] = cfg.workload_service_account
    return spec


def workload_service_account(namespace: str, cfg: OperatorConfig) -> dict[str, Any]:
    """The ServiceAccount workload pods run as in ``namespace``, with the identity's
    annotations (``workload_service_account``)."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": cfg.workload_service_account,
            "namespace": namespace,
            "annotations": dict(cfg.workload_service_account_annotations),
        },
    }


PROGRESS_PORT = 8090  # the commit helper serves the job's progress.json here


def workload_env(obj: Resource) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in contract_env(obj).items()]
    for name, value in obj.spec.env.items():
        if isinstance(value, EnvFrom):
            ref = value.secret_key_ref
            env.append(
                {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
            )
        else:
            env.append({"name": name, "value": value})
    return env
