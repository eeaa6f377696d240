"""The four kinds of ``substratus.ai/v1`` as typed models, their validation and CRDs."""

from substratus.api.common import (
    GPU,
    Condition,
    EnvValue,
    GitSource,
    Image,
    ObjectMeta,
    ObjectRef,
    Resources,
    SecretKeyRef,
    UploadSource,
)
from substratus.api.kinds import (
    API_VERSION,
    GROUP,
    KINDS,
    Dataset,
    Model,
    Notebook,
    Quantization,
    Resource,
    Server,
)
from substratus.api.loading import ValidationFailed, parse_documents, parse_object

__all__ = [
    "API_VERSION",
    "GPU",
    "GROUP",
    "KINDS",
    "Condition",
    "Dataset",
    "EnvValue",
    "GitSource",
    "Image",
    "Model",
    "Notebook",
    "ObjectMeta",
    "ObjectRef",
    "Quantization",
    "Resource",
    "Resources",
    "SecretKeyRef",
    "Server",
    "UploadSource",
    "ValidationFailed",
    "parse_documents",
    "parse_object",
]
