"""The four kinds of ``substratus.ai/v1`` as typed models, their validation and CRDs.

The names below are imported on first use (PEP 562), so that ``substratus.api.kindnames`` and
``substratus.api.errors`` can be imported without the models, which take most of a command's
start-up."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from substratus.api.errors import ValidationFailed
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
    from substratus.api.loading import parse_documents, parse_object

__all__ = [
    "API_VERSION", "GPU", "GROUP", "KINDS", "Condition", "Dataset", "EnvValue", "GitSource",
    "Image", "Model", "Notebook", "ObjectMeta", "ObjectRef", "Quantization", "Resource",
    "Resources", "SecretKeyRef", "Server", "UploadSource", "ValidationFailed", "parse_documents",
    "parse_object",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in __all__:
        for module in ("errors", "common", "kinds", "loading"):
            home = importlib.import_module(f"{__name__}.{module}")
            if hasattr(home, name):
                return getattr(home, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
