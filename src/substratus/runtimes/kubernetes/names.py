"""Names and labels of the children the operator makes, within Kubernetes' limits."""

from __future__ import annotations

import hashlib

from substratus.api.kinds import Resource

GROUP = "substratus.ai"
LABEL_KIND = f"{GROUP}/kind"
LABEL_NAME = f"{GROUP}/name"
LABEL_GENERATION = f"{GROUP}/generation"
LABEL_ATTEMPT = f"{GROUP}/attempt"
LABEL_ROLE = f"{GROUP}/role"
ANNOTATION_OWNER = f"{GROUP}/object-name"  # a child's owner, whole (labels may be shortened)
# The owner's namespace, on a child in another namespace (a build Job in the builds namespace).
ANNOTATION_OWNER_NAMESPACE = f"{GROUP}/object-namespace"
FIELD_MANAGER = "substratus-operator"
NAME_LIMIT = 63  # a DNS label: Jobs (their pods carry the name as a label), Services


def child_name(obj: Resource, suffix: str, limit: int = NAME_LIMIT) -> str:
    """``<name>-<kind>-<suffix>``, shortened with a hash of the whole when it would be longer
    than ``limit``, so that two objects never share a child."""
    full = f"{obj.metadata.name}-{obj.KIND.lower()}-{suffix}"
    if len(full) <= limit:
        return full
    digest = hashlib.sha256(f"{obj.metadata.namespace}/{full}".encode()).hexdigest()[:8]
    keep = limit - len(suffix) - len(digest) - 2
    return f"{obj.metadata.name[:keep].rstrip('-.')}-{digest}-{suffix}"


def labels(obj: Resource, **extra: str | int) -> dict[str, str]:
    out = {LABEL_KIND: obj.KIND, LABEL_NAME: _label_value(obj.metadata.name)}
    out.update({f"{GROUP}/{k}": str(v) for k, v in extra.items()})
    return out


def _label_value(value: str) -> str:
    """Object names may be 253 characters long, label values 63."""
    if len(value) <= 63:
        return value
    return value[:54].rstrip("-.") + "-" + hashlib.sha256(value.encode()).hexdigest()[:8]


def owner_reference(obj: Resource) -> dict[str, object]:
    return {
        "apiVersion": obj.api_version,
        "kind": obj.KIND,
        "name": obj.metadata.name,
        "uid": obj.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
