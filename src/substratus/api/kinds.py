"""Model, Dataset, Notebook and Server: spec and status of each kind."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from substratus.api.common import (
    Condition,
    EnvValue,
    Image,
    ObjectMeta,
    ObjectRef,
    Params,
    Resources,
    Strict,
    check_env_names,
)
from substratus.api.compat import env_value, normalise_spec
from substratus.api.kindnames import API_VERSION as API_VERSION  # re-exported
from substratus.api.kindnames import GROUP as GROUP
from substratus.api.kindnames import KIND_NAMES
from substratus.api.kindnames import VERSION as VERSION
from substratus.api.limits import MAX_REPLICAS


class CommonSpec(Strict):
    image: Image = Field(description="Container image to run, or a source to build it from.")
    command: list[str] | None = Field(None, description="Overrides the image's entrypoint.")
    params: Params = Field(
        default_factory=dict,
        description="Parameters: PARAM_{UPPER(key)} env vars and /content/params.json.",
    )
    env: dict[str, EnvValue] = Field(
        default_factory=dict,
        description="Environment variables: a value, or {secretKeyRef: {name, key}}.",
    )
    resources: Resources = Field(default_factory=Resources, description="Compute resources.")

    @model_validator(mode="before")
    @classmethod
    def _original_shape(cls, data: Any) -> Any:
        # The original project's manifests (image: NAME, build, model/dataset on a Model,
        # modelName) mean what the design's fields mean: read them as those, every time.
        return normalise_spec(cls.__name__, data)

    @field_validator("params", mode="before")
    @classmethod
    def _params_env(cls, v: Any) -> Any:
        if isinstance(v, dict):
            check_env_names(v, "params")
            for key, value in v.items():
                if not isinstance(value, str | int | float | bool):
                    raise ValueError(
                        f"params key {key!r}: value must be a string, number or boolean, "
                        f"not {type(value).__name__}"
                    )
                if isinstance(value, float) and not math.isfinite(value):
                    raise ValueError(f"params key {key!r}: value must be a finite number")
        return v

    @field_validator("env", mode="before")
    @classmethod
    def _env_names(cls, v: Any) -> Any:
        if isinstance(v, dict):
            check_env_names(v, "env")
            v = {key: env_value(key, value) for key, value in v.items()}
            for key, value in v.items():
                ref = value.get("secretKeyRef") if isinstance(value, dict) else None
                ok = isinstance(value, str) or (
                    isinstance(value, dict)
                    and set(value) == {"secretKeyRef"}
                    and isinstance(ref, dict)
                    and set(ref) == {"name", "key"}
                    and all(isinstance(x, str) and x for x in ref.values())
                )
                if not ok:
                    raise ValueError(
                        f"env key {key!r}: value must be a string or "
                        "{secretKeyRef: {name: SECRET, key: KEY}}"
                    )
        return v

    @field_validator("command")
    @classmethod
    def _command_nonempty(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("must name a program when set")
        return v


class BuildUploadStatus(BaseModel):
    """The original project's ``status.buildUpload``, published beside ``uploadUrl`` for tools
    written for it."""

    model_config = ConfigDict(defer_build=True, extra="ignore", populate_by_name=True)

    signed_url: str | None = Field(
        None, alias="signedURL", description="Same as status.uploadUrl: where to PUT the tarball."
    )
    request_id: str | None = Field(
        None,
        alias="requestID",
        description="The spec's upload requestId this URL is for; check it before uploading.",
    )
    expiration: str | None = Field(
        None, description="Same as status.uploadUrlExpiration: when the URL stops working."
    )
    stored_md5_checksum: str | None = Field(
        None,
        alias="storedMD5Checksum",
        description="MD5 of the uploaded tarball, once received and verified by the build.",
    )


class UploadParts(BaseModel):
    """A multipart upload of a large context (S3): PUT each ``partSize`` bytes of the tarball
    to its URL in order, then POST the parts' ETags to ``completeUrl``."""

    model_config = ConfigDict(defer_build=True, extra="ignore", populate_by_name=True)

    upload_id: str = Field(alias="uploadId", description="The bucket's id of the upload.")
    part_size: int = Field(alias="partSize", description="Bytes per part (the last: the rest).")
    urls: list[str] = Field(description="One signed PUT URL per part, in order.")
    complete_url: str = Field(
        alias="completeUrl", description="Signed URL the client POSTs the parts' list to."
    )


class ArtifactsStatus(BaseModel):
    """The original project's ``status.artifacts``."""

    model_config = ConfigDict(defer_build=True, extra="ignore", populate_by_name=True)

    url: str | None = Field(None, description="Same as status.url.")


class CommonStatus(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="ignore", populate_by_name=True)

    ready: bool = Field(False, description="True once the object is usable.")
    conditions: list[Condition] = Field(default_factory=list, description="Current conditions.")
    observed_generation: int | None = Field(
        None, alias="observedGeneration", description="Generation the status describes."
    )
    image: str | None = Field(None, description="Image built from spec.image's source.")
    upload_url: str | None = Field(
        None,
        alias="uploadUrl",
        description="Signed URL the client PUTs its build context to, with the spec's md5 as "
        "Content-MD5.",
    )
    upload_url_expiration: str | None = Field(
        None,
        alias="uploadUrlExpiration",
        description="When uploadUrl stops working (RFC 3339); a new spec.image.upload.requestId "
        "asks for a fresh URL sooner.",
    )
    upload_parts: UploadParts | None = Field(
        None,
        alias="uploadParts",
        description="For a large context (spec.image.upload.size) where the bucket takes parts: "
        "URLs for each part and for completing the upload, valid as long as uploadUrl.",
    )
    build_upload: BuildUploadStatus | None = Field(
        None,
        alias="buildUpload",
        description="uploadUrl and its upload's state, as the original project named them.",
    )


class JobProgress(BaseModel):
    """What a running job last reported through the contract's ``progress.json``."""

    model_config = ConfigDict(defer_build=True, extra="ignore", populate_by_name=True)

    percent: float | None = Field(None, description="How much is done, 0-100.")
    step: int | None = Field(None, description="Steps (or bytes) done.")
    total: int | None = Field(None, description="Steps (or bytes) in all.")
    eta_seconds: int | None = Field(
        None, alias="etaSeconds", description="Seconds left, as the job estimates them."
    )
    metrics: dict[str, float] = Field(
        default_factory=dict, description="The latest metrics, e.g. loss, learning_rate."
    )
    message: str | None = Field(None, description="What it is doing, in a few words.")
    history: list[float] = Field(
        default_factory=list,
        max_length=200,
        description="The main metric (a trainer's loss) over the run so far, oldest first.",
    )
    updated: str | None = Field(None, description="When the job wrote it (RFC 3339).")


class ArtifactStatus(CommonStatus):
    url: str | None = Field(None, description="Where the artifacts are stored (bucket URL).")
    files: list[str] = Field(default_factory=list, description="Artifact files, relative paths.")
    disk_size: str | None = Field(
        None, alias="diskSize", description="Total size of the artifacts, e.g. 27Gi."
    )
    artifacts: ArtifactsStatus | None = Field(
        None, description="status.url, as the original project named it (artifacts.url)."
    )
    progress: JobProgress | None = Field(
        None, description="The job's progress (the last it reported, once it ended)."
    )


class ModelSpec(CommonSpec):
    base_model: ObjectRef | None = Field(
        None, alias="baseModel", description="Model to fine-tune; mounted read-only at model/."
    )
    training_dataset: ObjectRef | None = Field(
        None, alias="trainingDataset", description="Dataset to train on; mounted at data/."
    )


class DatasetSpec(CommonSpec):
    pass


class NotebookSpec(CommonSpec):
    model: ObjectRef | None = Field(None, description="Model mounted at model/.")
    dataset: ObjectRef | None = Field(None, description="Dataset mounted at data/.")
    suspend: bool = Field(False, description="Stop the notebook, keeping the object.")

    @field_validator("model", "dataset", mode="before")
    @classmethod
    def _plain_name(cls, v: Any) -> Any:
        # The seed writes `model: falcon-7b`; accept it as {name: falcon-7b}.
        return {"name": v} if isinstance(v, str) else v


class Quantization(Strict):
    bits: Literal[4, 8, 16] = Field(16, description="Weight precision: 16 (none), 8 or 4.")


class Autoscaling(Strict):
    """Replicas follow the requests in flight; a proxy in front holds requests while none is
    ready, so a Server can scale to zero."""

    min_replicas: int = Field(
        0,
        alias="minReplicas",
        ge=0,
        le=MAX_REPLICAS,
        description="Fewest replicas (0: scale to zero).",
    )
    max_replicas: int = Field(
        1, alias="maxReplicas", ge=1, le=MAX_REPLICAS, description="Most replicas."
    )
    target_in_flight: int = Field(
        8,
        alias="targetInFlight",
        ge=1,
        le=100_000,
        description="Requests in flight (answered or held) per replica, the autoscaler's aim.",
    )
    scale_down_delay_seconds: int = Field(
        300,
        alias="scaleDownDelaySeconds",
        ge=0,
        le=86_400,
        description="Replicas are removed only when fewer would have done for this long.",
    )
    queue_limit: int = Field(
        100,
        alias="queueLimit",
        ge=0,
        le=100_000,
        description="Requests held while no replica is ready; more are answered 503 at once.",
    )
    queue_timeout_seconds: int = Field(
        300,
        alias="queueTimeoutSeconds",
        ge=1,
        le=3600,
        description="How long a held request waits for a ready replica before a 503.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must not exceed maxReplicas")
        return self


class ServerSpec(CommonSpec):
    model: ObjectRef = Field(description="Model to serve; mounted at /model/saved and model/.")
    replicas: int = Field(
        1,
        ge=0,
        le=MAX_REPLICAS,
        description="Number of server processes or pods (with autoscaling, the autoscaler's).",
    )
    autoscaling: Autoscaling | None = Field(
        None, description="Scale with the requests in flight, down to zero (replaces replicas)."
    )
    quantization: Quantization | None = Field(
        None, description="Load weights quantized (passed to the server as QUANTIZATION_BITS)."
    )

    @field_validator("model", mode="before")
    @classmethod
    def _plain_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v


class NotebookStatus(CommonStatus):
    token: str | None = Field(None, description="Jupyter token.")
    url: str | None = Field(None, description="Where the notebook is reachable.")


class ServerStatus(CommonStatus):
    url: str | None = Field(None, description="Where the server is reachable.")
    replicas: int = Field(0, description="Replicas running and ready.")


class Resource(BaseModel):
    """One object of any kind: apiVersion, kind, metadata, spec, status."""

    model_config = ConfigDict(defer_build=True, extra="forbid", populate_by_name=True)
    KIND: ClassVar[str]
    PLURAL: ClassVar[str]
    SHORT_NAMES: ClassVar[list[str]]
    # Kinds whose runs produce artifacts in a bucket (status.url is a bucket URL).
    HAS_ARTIFACTS: ClassVar[bool] = False
    # Kinds that run to completion (jobs) rather than as services.
    IS_JOB: ClassVar[bool] = False

    api_version: Literal["substratus.ai/v1"] = Field("substratus.ai/v1", alias="apiVersion")
    kind: str
    metadata: ObjectMeta
    spec: CommonSpec
    status: CommonStatus

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.KIND, self.metadata.namespace, self.metadata.name)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Model(Resource):
    KIND = "Model"
    PLURAL = KIND_NAMES[KIND].plural
    SHORT_NAMES = list(KIND_NAMES[KIND].short_names)
    HAS_ARTIFACTS = KIND_NAMES[KIND].has_artifacts
    IS_JOB = KIND_NAMES[KIND].is_job
    kind: Literal["Model"] = "Model"
    spec: ModelSpec
    status: ArtifactStatus = Field(default_factory=ArtifactStatus)


class Dataset(Resource):
    KIND = "Dataset"
    PLURAL = KIND_NAMES[KIND].plural
    SHORT_NAMES = list(KIND_NAMES[KIND].short_names)
    HAS_ARTIFACTS = KIND_NAMES[KIND].has_artifacts
    IS_JOB = KIND_NAMES[KIND].is_job
    kind: Literal["Dataset"] = "Dataset"
    spec: DatasetSpec
    status: ArtifactStatus = Field(default_factory=ArtifactStatus)


class Notebook(Resource):
    KIND = "Notebook"
    PLURAL = KIND_NAMES[KIND].plural
    SHORT_NAMES = list(KIND_NAMES[KIND].short_names)
    HAS_ARTIFACTS = KIND_NAMES[KIND].has_artifacts
    IS_JOB = KIND_NAMES[KIND].is_job
    kind: Literal["Notebook"] = "Notebook"
    spec: NotebookSpec
    status: NotebookStatus = Field(default_factory=NotebookStatus)


class Server(Resource):
    KIND = "Server"
    PLURAL = KIND_NAMES[KIND].plural
    SHORT_NAMES = list(KIND_NAMES[KIND].short_names)
    HAS_ARTIFACTS = KIND_NAMES[KIND].has_artifacts
    IS_JOB = KIND_NAMES[KIND].is_job
    kind: Literal["Server"] = "Server"
    spec: ServerSpec
    status: ServerStatus = Field(default_factory=ServerStatus)


KINDS: dict[str, type[Resource]] = {k.KIND: k for k in (Model, Dataset, Notebook, Server)}
