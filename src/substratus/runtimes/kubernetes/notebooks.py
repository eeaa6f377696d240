"""What a Notebook adds to the Server path (services.py: a Deployment behind a Service).

- A persistent home: ``/content`` is a PersistentVolumeClaim the Notebook owns, so suspending
  (the Deployment goes, the claim stays) and resuming, or a pod restarting, opens on the same
  files; deleting the Notebook deletes the claim with it. One replica, replaced with the
  ``Recreate`` strategy, since a ReadWriteOnce volume is attached to one node at a time.
- The token: a Secret the Notebook owns holds it, the pod reads ``NOTEBOOK_TOKEN`` from it, and
  ``.status.token`` is its value. The Secret is the token's one home: it is created once (a
  second create finds it) and read back before each decision, so a token minted by a decision
  whose status write was lost is not minted again.
"""

from __future__ import annotations

import base64
from typing import Any

from substratus.api.kinds import Notebook
from substratus.runtimes.kubernetes import names
from substratus.runtimes.kubernetes.config import OperatorConfig

PORT = 8888
PROBE_PATH = "/api"  # Jupyter Server answers it without a token once it serves
TOKEN_KEY = "token"
TOKEN_VAR = "NOTEBOOK_TOKEN"
# The notebook images' user (images/notebook): the home volume is made writable for its group.
NOTEBOOK_GID = 10001


def token_secret_name(obj: Notebook) -> str:
    return names.child_name(obj, "token", limit=253)


def home_claim_name(obj: Notebook) -> str:
    return names.child_name(obj, "home", limit=253)


def token_secret(obj: Notebook, token: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": token_secret_name(obj),
            "namespace": obj.metadata.namespace,
            "labels": names.labels(obj, role="token"),
            "ownerReferences": [names.owner_reference(obj)],
        },
        "type": "Opaque",
        "stringData": {TOKEN_KEY: token},
    }


def secret_token(data: dict[str, Any] | None) -> str | None:
    """The token in a token Secret's ``data`` (base64, as the API returns it)."""
    value = (data or {}).get(TOKEN_KEY)
    return base64.b64decode(value).decode() if value else None


def home_claim(obj: Notebook, cfg: OperatorConfig) -> dict[str, Any]:
    """The home volume's claim: ``resources.disk`` GiB, else the configured default size."""
    disk = obj.spec.resources.disk
    size = f"{disk:g}Gi" if disk is not None else cfg.notebook_home_size
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": size}},
    }
    if cfg.notebook_storage_class:
        spec["storageClassName"] = cfg.notebook_storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": home_claim_name(obj),
            "namespace": obj.metadata.namespace,
            "labels": names.labels(obj, role="home"),
            "ownerReferences": [names.owner_reference(obj)],
        },
        "spec": spec,
    }


def with_home_and_token(obj: Notebook, spec: dict[str, Any], main: dict[str, Any]) -> None:
    """Turn a workload pod spec into a notebook's: ``/content`` on the home claim, the token
    from its Secret, the volume writable by the notebook user's group."""
    for volume in spec["volumes"]:
        if volume["name"] == "content":
            volume.pop("emptyDir", None)
            volume["persistentVolumeClaim"] = {"claimName": home_claim_name(obj)}
    main["env"].append(
        {
            "name": TOKEN_VAR,
            "valueFrom": {
                "secretKeyRef": {"name": token_secret_name(obj), "key": TOKEN_KEY},
            },
        }
    )
    spec["securityContext"] = {
        "fsGroup": NOTEBOOK_GID,
        "fsGroupChangePolicy": "OnRootMismatch",
    }
