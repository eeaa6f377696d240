"""Fields shared by every kind: metadata, image, resources, env, conditions."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from substratus.api.limits import (
    MAX_ANNOTATIONS_BYTES,
    MAX_CPU,
    MAX_DISK_GB,
    MAX_GPUS,
    MAX_MEMORY_GB,
)
from substratus.api.names import ENV_NAME_RE as ENV_NAME_RE  # re-exported
from substratus.api.names import NAME_RE as NAME_RE  # re-exported
from substratus.api.names import (
    dns_label_problem,
    env_name_problem,
    label_value_problem,
    qualified_name_problem,
)

# Upload identifiers become file and directory names: a safe token, and an MD5 hex digest.
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
MD5_RE = re.compile(r"^[0-9a-f]{32}$")


class Strict(BaseModel):
    """Base for spec types: unknown fields are errors, JSON names are camelCase."""

    model_config = ConfigDict(defer_build=True, extra="forbid", populate_by_name=True, frozen=False)


class ObjectMeta(Strict):
    # Server-managed fields (uid, generation...) are accepted so that `get -o yaml | apply` works.
    model_config = ConfigDict(defer_build=True, extra="ignore", populate_by_name=True)

    name: str = Field(description="Name of the object, unique per kind in its namespace.")
    namespace: str = Field("default", description="Namespace of the object.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations.")
    uid: str | None = Field(None, description="Set by the system.")
    generation: int | None = Field(None, description="Set by the system; grows on spec changes.")
    resource_version: str | None = Field(None, alias="resourceVersion")
    creation_timestamp: str | None = Field(None, alias="creationTimestamp")
    deletion_timestamp: str | None = Field(None, alias="deletionTimestamp")

    @field_validator("name", "namespace")
    @classmethod
    def _dns_label(cls, v: str) -> str:
        problem = dns_label_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            problem = qualified_name_problem(key) or label_value_problem(value)
            if problem:
                raise ValueError(problem)
        return v

    @field_validator("annotations")
    @classmethod
    def _annotations(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            problem = qualified_name_problem(key)
            if problem:
                raise ValueError(problem)
        size = sum(len(k.encode()) + len(x.encode()) for k, x in v.items())
        if size > MAX_ANNOTATIONS_BYTES:
            raise ValueError(
                f"annotations total {size} bytes, more than the limit of {MAX_ANNOTATIONS_BYTES}"
            )
        return v


class GitSource(Strict):
    url: str = Field(description="Repository URL: https://, ssh, file:// or a local path.")
    branch: str | None = Field(None, description="Branch to check out.")
    tag: str | None = Field(None, description="Tag to check out.")
    path: str | None = Field(None, description="Sub-directory of the repository to build.")

    @field_validator("url")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @model_validator(mode="after")
    def _branch_or_tag(self) -> GitSource:
        if self.branch and self.tag:
            raise ValueError("set branch or tag, not both")
        if self.path and (self.path.startswith("/") or ".." in self.path.split("/")):
            raise ValueError("path must be relative and stay inside the repository")
        return self


class UploadSource(Strict):
    md5: str | None = Field(
        None,
        description="MD5 of the uploaded tarball, set by the client.",
        json_schema_extra={"pattern": MD5_RE.pattern},
    )
    request_id: str | None = Field(
        None,
        alias="requestId",
        description="Identifies one upload request: a new one gets a fresh uploadUrl and "
        "retries a failed build (an image built from the same md5 is reused).",
        json_schema_extra={"pattern": REQUEST_ID_RE.pattern},
    )

    size: int | None = Field(
        None,
        ge=0,
        description="Bytes of the tarball, set by the client: a large context may be uploaded "
        "in parts (status.uploadParts).",
    )

    # Validators rather than Field(pattern=...) for messages a user can act on; the schema
    # carries the same patterns for the CRDs.
    @field_validator("md5")
    @classmethod
    def _md5(cls, v: str | None) -> str | None:
        if v is not None and not MD5_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not an MD5 digest: use 32 lowercase hex digits")
        return v

    @field_validator("request_id")
    @classmethod
    def _request_id(cls, v: str | None) -> str | None:
        if v is not None and not REQUEST_ID_RE.fullmatch(v):
            raise ValueError(
                f"{v!r} is not a valid request id: use 1 to 63 letters, digits, '.', '_' "
                "or '-', starting with a letter or digit"
            )
        return v


class Image(Strict):
    name: str | None = Field(
        None, description="Image reference. Set by the system in status.image after a build."
    )
    git: GitSource | None = Field(None, description="Build the image from a git repository.")
    upload: UploadSource | None = Field(
        None, description="Build the image from a directory uploaded by the client."
    )

    @model_validator(mode="after")
    def _one_source(self) -> Image:
        if self.git is not None and self.upload is not None:
            raise ValueError("set at most one of git and upload")
        if self.name is None and self.git is None and self.upload is None:
            raise ValueError("set one of name, git or upload")
        return self

    @property
    def has_build(self) -> bool:
        return self.git is not None or self.upload is not None


class GPU(Strict):
    type: str = Field(
        "nvidia-l4", description="GPU type, e.g. nvidia-l4, nvidia-a100, nvidia-h100."
    )
    count: int = Field(0, ge=0, le=MAX_GPUS, description="Number of GPUs.")


class Resources(Strict):
    # Unset means "no request": the workload gets what the machine or node has.
    cpu: Annotated[float, Field(gt=0, le=MAX_CPU, allow_inf_nan=False)] | None = Field(
        None, description="CPU cores."
    )
    memory: Annotated[float, Field(gt=0, le=MAX_MEMORY_GB, allow_inf_nan=False)] | None = Field(
        None, description="Memory in gigabytes."
    )
    disk: Annotated[float, Field(gt=0, le=MAX_DISK_GB, allow_inf_nan=False)] | None = Field(
        None, description="Scratch disk in gigabytes."
    )
    gpu: GPU | None = Field(None, description="GPUs to attach.")

    @property
    def gpu_count(self) -> int:
        return self.gpu.count if self.gpu else 0


class SecretKeyRef(Strict):
    name: str = Field(description="Name of the Secret.")
    key: str = Field(description="Key within the Secret.")


class EnvFrom(Strict):
    secret_key_ref: SecretKeyRef = Field(alias="secretKeyRef")


EnvValue = str | EnvFrom


class ObjectRef(Strict):
    name: str = Field(description="Name of the referenced object.")
    namespace: str | None = Field(None, description="Namespace; defaults to the object's own.")


Params = dict[str, str | int | float | bool]


class Condition(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="ignore", populate_by_name=True)

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = Field(None, alias="lastTransitionTime")
    observed_generation: int | None = Field(None, alias="observedGeneration")


def check_env_names(values: dict[Any, object], what: str) -> None:
    for key in values:
        problem = env_name_problem(key) if isinstance(key, str) else f"key {key!r} is not text"
        if problem:
            raise ValueError(f"{what} {problem}")
