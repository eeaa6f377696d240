"""Artifact storage: versioned, atomically committed directories of files in a bucket.

Schemes: ``file://`` (or a plain path), ``s3://`` (and S3-compatible servers), ``gs://``,
``az://``. Cloud packages load on first use; see :mod:`substratus.storage.backends`.
"""

from substratus.core.sizes import human_size
from substratus.storage.backends import MissingDependency
from substratus.storage.buildcontext import (
    ContextTooLarge,
    DockerIgnore,
    pack_context,
    unpack_context,
)
from substratus.storage.manifest import (
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    build_manifest,
)
from substratus.storage.signed import file_md5, md5_base64
from substratus.storage.store import (
    ArtifactStore,
    Committed,
    Progress,
    StorageError,
    upload_to_signed_url,
)

__all__ = [
    "MANIFEST_NAME",
    "ArtifactStore",
    "Committed",
    "ContextTooLarge",
    "DockerIgnore",
    "FileEntry",
    "Manifest",
    "MissingDependency",
    "Progress",
    "StorageError",
    "build_manifest",
    "file_md5",
    "human_size",
    "md5_base64",
    "pack_context",
    "unpack_context",
    "upload_to_signed_url",
]
