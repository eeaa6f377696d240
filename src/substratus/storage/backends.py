"""One small adaptor per URL scheme: an fsspec filesystem and a signed-upload URL.

Cloud SDKs are imported only when their scheme is used (SkyPilot's adaptor pattern), so the
package imports fast and a missing extra fails with a message naming it.

Configuration comes from the usual environment variables of each cloud:

- ``s3://bucket/key``: the standard AWS chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/
  ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, instance roles); S3-compatible servers through
  ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (path-style addressing is used with them).
- ``gs://bucket/key``: Application Default Credentials; ``STORAGE_EMULATOR_HOST`` for an
  emulator (anonymous access). gcsfs's experimental zonal/HNS file system is off unless
  ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT`` says otherwise (it stalls 60 s per bucket where the
  control API is unreachable).
- ``az://container/blob``: ``AZURE_STORAGE_CONNECTION_STRING``, or an account name
  (``AZURE_STORAGE_ACCOUNT_NAME``/``AZURE_STORAGE_ACCOUNT``) with a key
  (``AZURE_STORAGE_ACCOUNT_KEY``/``AZURE_STORAGE_KEY``) or a SAS token
  (``AZURE_STORAGE_SAS_TOKEN``), or else Azure AD credentials (``DefaultAzureCredential``).
- ``file:///abs/path``: the local file system.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any
from urllib.parse import quote

__all__ = [
    "SCHEMES",
    "Backend",
    "Location",
    "MissingDependency",
    "S3Backend",
    "backend_for",
    "parse_url",
]


class MissingDependency(ImportError):
    """A scheme's Python package is not installed; the message names the pip extra."""


def _import(module: str, extra: str, scheme: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependency(
            f"{scheme}:// URLs need the Python package {module.split('.')[0]!r}, which is not "
            f"installed: pip install 'substratus[{extra}]' ({e})"
        ) from e


@dataclass(frozen=True)
class Location:
    """A URL split for fsspec: ``path`` has no scheme and no trailing '/'."""

    scheme: str
    """Canonical scheme: ``file``, ``s3``, ``gs`` or ``az``."""
    path: str
    """``/abs/dir`` for files, ``bucket/key`` for object stores."""

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    @property
    def is_bucket_root(self) -> bool:
        """The whole bucket (or ``/``): never a sensible target for a recursive delete."""
        if self.is_local:
            return self.path in ("", "/")
        return "/" not in self.path

    def child(self, name: str) -> Location:
        return Location(self.scheme, f"{self.path}/{name}" if self.path != "/" else f"/{name}")

    @property
    def url(self) -> str:
        if self.is_local:
            return f"file://{self.path}"
        return f"{self.scheme}://{self.path}"


_ALIASES = {"file": "file", "s3": "s3", "gs": "gs", "gcs": "gs", "az": "az"}
SCHEMES = ("file", "s3", "gs", "az")


def parse_url(url: str) -> Location:
    """Split a storage URL; a URL without a scheme is a local path. ``ValueError`` if bad."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return Location("file", os.path.abspath(os.path.expanduser(url)))
    canonical = _ALIASES.get(scheme.lower())
    if canonical is None:
        raise ValueError(
            f"unsupported storage URL {url!r}: the scheme must be one of "
            + ", ".join(f"{s}://" for s in SCHEMES)
        )
    if canonical == "file":
        if rest.startswith("localhost/"):
            rest = rest[len("localhost") :]
        if not rest.startswith("/"):
            raise ValueError(f"file URL {url!r} must hold an absolute path (file:///abs/path)")
        path = "/" + rest.strip("/")
        return Location("file", os.path.normpath(path))
    path = rest.strip("/")
    if not path or path.startswith("/"):
        raise ValueError(f"storage URL {url!r} names no bucket")
    if any(p in ("", ".", "..") for p in path.split("/")):
        raise ValueError(f"storage URL {url!r} has an empty, '.' or '..' path segment")
    return Location(canonical, path)


class Backend:
    """What each scheme provides. Subclasses are stateless; filesystems are cached by fsspec."""

    scheme = ""
    extra = ""

    def filesystem(self) -> Any:
        """An ``fsspec.AbstractFileSystem`` configured from the environment."""
        raise NotImplementedError

    def signed_put_url(self, path: str, expires_s: int, content_md5: str | None = None) -> str:
        """An HTTP(S) URL that accepts one ``PUT`` of the object at ``path``; with
        ``content_md5`` (base64), only of a body with that md5 where the scheme can bind it."""
        raise NotImplementedError


class LocalBackend(Backend):
    scheme = "file"

    def filesystem(self) -> Any:
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem()

    def signed_put_url(self, path: str, expires_s: int, content_md5: str | None = None) -> str:
        return f"file://{path}"


def _env(*names: str) -> str | None:
    for n in names:
        v = os.environ.get(n)
        if v:
            return v
    return None


class S3Backend(Backend):
    scheme = "s3"
    extra = "s3"

    @staticmethod
    def endpoint() -> str | None:
        return _env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")

    @staticmethod
    def region() -> str | None:
        return _env("AWS_REGION", "AWS_DEFAULT_REGION")

    def _config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"signature_version": "s3v4"}
        if self.endpoint():
            # S3-compatible servers: path-style addressing; and send checksums only where the
            # API demands them (many servers reject botocore's newer default trailers).
            config["s3"] = {"addressing_style": "path"}
            if not os.environ.get("AWS_REQUEST_CHECKSUM_CALCULATION"):
                config["request_checksum_calculation"] = "when_required"
            if not os.environ.get("AWS_RESPONSE_CHECKSUM_VALIDATION"):
                config["response_checksum_validation"] = "when_required"
        return config

    def filesystem(self) -> Any:
        s3fs = _import("s3fs", self.extra, self.scheme)
        client_kwargs: dict[str, Any] = {}
        region = self.region() or ("us-east-1" if self.endpoint() else None)
        if region:
            client_kwargs["region_name"] = region
        return s3fs.S3FileSystem(
            endpoint_url=self.endpoint(),
            client_kwargs=client_kwargs,
            config_kwargs=self._config(),
            use_listings_cache=False,
        )

    def _client(self) -> Any:
        # botocore comes with s3fs (through aiobotocore): no need for boto3.
        session_mod = _import("botocore.session", self.extra, self.scheme)
        config_mod = _import("botocore.config", self.extra, self.scheme)
        return session_mod.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint(),
            region_name=self.region() or "us-east-1",
            config=config_mod.Config(**self._config()),
        )

    def signed_put_url(self, path: str, expires_s: int, content_md5: str | None = None) -> str:
        client = self._client()
        bucket, _, key = path.partition("/")
        params: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if content_md5:
            params["ContentMD5"] = content_md5  # a signed header: any other md5 is refused
        url: str = client.generate_presigned_url("put_object", Params=params, ExpiresIn=expires_s)
        return url

    def signed_multipart(self, path: str, expires_s: int, parts: int) -> tuple[str, list[str], str]:
        """Start a multipart upload of ``path`` and sign ``parts`` UploadPart URLs and the
        CompleteMultipartUpload URL: (upload id, part URLs, complete URL)."""
        client = self._client()
        bucket, _, key = path.partition("/")
        upload_id = str(client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"])
        base = {"Bucket": bucket, "Key": key, "UploadId": upload_id}
        urls = [
            str(
                client.generate_presigned_url(
                    "upload_part", Params={**base, "PartNumber": n}, ExpiresIn=expires_s
                )
            )
            for n in range(1, parts + 1)
        ]
        complete = client.generate_presigned_url(
            "complete_multipart_upload", Params=base, ExpiresIn=expires_s
        )
        return upload_id, urls, str(complete)


_ZB_HNS = "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"


class GCSBackend(Backend):
    scheme = "gs"
    extra = "gcs"

    @staticmethod
    def emulator() -> str | None:
        host = _env("STORAGE_EMULATOR_HOST")
        if host in (None, "default"):
            return None
        assert host is not None
        return host if host.startswith(("http://", "https://")) else f"http://{host}"

    def filesystem(self) -> Any:
        # gcsfs reads this at import time: default it off before the first import.
        os.environ.setdefault(_ZB_HNS, "false")
        gcsfs = _import("gcsfs", self.extra, self.scheme)
        experimental = os.environ.get(_ZB_HNS, "").lower() in ("true", "1")
        cls = gcsfs.GCSFileSystem if experimental else gcsfs.core.GCSFileSystem
        kwargs: dict[str, Any] = {"use_listings_cache": False}
        project = _env("GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT", "GCSFS_DEFAULT_PROJECT")
        if project:
            kwargs["project"] = project
        emulator = self.emulator()
        if emulator:
            kwargs["endpoint_url"] = emulator
            kwargs["token"] = "anon"
        return cls(**kwargs)

    def signed_put_url(self, path: str, expires_s: int, content_md5: str | None = None) -> str:
        auth = _import("google.auth", self.extra, self.scheme)
        storage = _import("google.cloud.storage", self.extra, self.scheme)
        auth_credentials = _import("google.auth.credentials", self.extra, self.scheme)
        bucket, _, key = path.partition("/")
        credentials, project = auth.default()
        client = storage.Client(project=project or "unused", credentials=credentials)
        extra: dict[str, Any] = {}
        if not isinstance(credentials, auth_credentials.Signing):
            # GKE Workload Identity / GCE: sign through the IAM signBlob API.
            requests_mod = _import("google.auth.transport.requests", self.extra, self.scheme)
            credentials.refresh(requests_mod.Request())
            extra = {
                "service_account_email": credentials.service_account_email,
                "access_token": credentials.token,
            }
        url: str = (
            client.bucket(bucket)
            .blob(key)
            .generate_signed_url(
                version="v4",
                method="PUT",
                expiration=timedelta(seconds=expires_s),
                credentials=credentials,
                api_access_endpoint=self.emulator() or None,
                content_md5=content_md5,
                **extra,
            )
        )
        return url


class AzureBackend(Backend):
    scheme = "az"
    extra = "azure"

    @staticmethod
    def settings() -> dict[str, str]:
        out = {}
        cs = _env("AZURE_STORAGE_CONNECTION_STRING")
        if cs:
            return {"connection_string": cs}
        for key, names in (
            ("account_name", ("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT")),
            ("account_key", ("AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_KEY")),
            ("sas_token", ("AZURE_STORAGE_SAS_TOKEN",)),
        ):
            v = _env(*names)
            if v:
                out[key] = v
        return out

    def filesystem(self) -> Any:
        adlfs = _import("adlfs", self.extra, self.scheme)
        settings = self.settings()
        if not settings:
            raise ValueError(
                "az:// URLs need AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT_NAME"
            )
        return adlfs.AzureBlobFileSystem(**settings, use_listings_cache=False)

    def signed_put_url(self, path: str, expires_s: int, content_md5: str | None = None) -> str:
        # A SAS cannot bind an md5: the client's Content-MD5 is checked by the service, and
        # the build checks the stored tarball again.
        blob_mod = _import("azure.storage.blob", self.extra, self.scheme)
        container, _, blob = path.partition("/")
        settings = self.settings()
        if "connection_string" in settings:
            service = blob_mod.BlobServiceClient.from_connection_string(
                settings["connection_string"]
            )
        elif "account_name" in settings:
            account_url = f"https://{settings['account_name']}.blob.core.windows.net"
            service = blob_mod.BlobServiceClient(
                account_url, credential=settings.get("account_key")
            )
        else:
            raise ValueError(
                "az:// URLs need AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT_NAME"
            )
        now = datetime.now(UTC)
        expiry = now + timedelta(seconds=expires_s)
        permission = blob_mod.BlobSasPermissions(create=True, write=True)
        account_key = getattr(service.credential, "account_key", None)
        if account_key:
            sas = blob_mod.generate_blob_sas(
                service.account_name,
                container,
                blob,
                account_key=account_key,
                permission=permission,
                expiry=expiry,
            )
        elif "sas_token" in settings:
            raise ValueError("cannot make a SAS from a SAS token: configure an account key")
        else:
            # Azure AD (workload identity, managed identity): a user delegation SAS.
            identity = _import("azure.identity", self.extra, self.scheme)
            service = blob_mod.BlobServiceClient(
                service.url, credential=identity.DefaultAzureCredential()
            )
            key = service.get_user_delegation_key(now - timedelta(minutes=5), expiry)
            sas = blob_mod.generate_blob_sas(
                service.account_name,
                container,
                blob,
                user_delegation_key=key,
                permission=permission,
                expiry=expiry,
            )
        base = service.url.split("?", 1)[0].rstrip("/")
        return f"{base}/{quote(container)}/{quote(blob, safe='/~')}?{sas}"


_BACKENDS: dict[str, Backend] = {
    "file": LocalBackend(),
    "s3": S3Backend(),
    "gs": GCSBackend(),
    "az": AzureBackend(),
}


def backend_for(location: Location) -> Backend:
    return _BACKENDS[location.scheme]
