"""Fields shared by every kind: metadata, image, resources, env, conditions."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# RFC 1123 DNS label, as Kubernetes requires for object names we turn into Jobs and Services.
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Strict(BaseModel):
    """Base for spec types: unknown fields are errors, JSON names are camelCase."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=False)


class ObjectMeta(Strict):
    # Server-managed fields (uid, generation...) are accepted so that `get -o yaml | apply` works.
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

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
        if len(v) > 63 or not NAME_RE.match(v):
            raise ValueError(
                f"{v!r} is not a valid name: use at most 63 lowercase letters, digits and '-', "
                "starting and ending with a letter or digit"
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
    md5: str | None = Field(None, description="MD5 of the uploaded tarball, set by the client.")
    request_id: str | None = Field(
        None, alias="requestId", description="Identifies one upload; a new one triggers a rebuild."
    )


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
    count: int = Field(0, ge=0, description="Number of GPUs.")


class Resources(Strict):
    # Unset means "no request": the workload gets what the machine or node has.
    cpu: Annotated[float, Field(gt=0)] | None = Field(None, description="CPU cores.")
    memory: Annotated[float, Field(gt=0)] | None = Field(None, description="Memory in gigabytes.")
    disk: Annotated[float, Field(gt=0)] | None = Field(
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
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = Field(None, alias="lastTransitionTime")
    observed_generation: int | None = Field(None, alias="observedGeneration")


def check_env_names(values: dict[str, object], what: str) -> None:
    for key in values:
        if not ENV_NAME_RE.match(key):
            raise ValueError(
                f"{what} key {key!r} cannot become an environment variable: "
                "use letters, digits and '_', not starting with a digit"
            )
