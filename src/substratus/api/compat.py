"""The original Substratus's spelling of a spec, read as this project's: two shapes, one meaning.

The original project's last release wrote ``image: NAME`` (a string), ``build: {git, upload:
{md5Checksum, requestID}}`` for what the design calls ``image.git`` / ``image.upload``, and on a
Model ``model`` / ``dataset`` for ``baseModel`` / ``trainingDataset``; its examples also write
``modelName: NAME`` on Notebooks and Servers, and env values ``${{ secrets.NAME.KEY }}``.

``normalise_spec`` runs before a spec is validated (``CommonSpec``'s before-validator, so every
reader of objects gets it) and rewrites those spellings into the design's; nothing is stored in
the rewritten form, so ``get -o yaml`` shows what the user wrote. ``written_loc`` maps a
validation error's location back to the field as the user wrote it. The models below describe
the original-only fields for the CRDs and the API reference; they are not validated directly.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field

from substratus.api.common import REQUEST_ID_RE, GitSource, ObjectRef, Strict
from substratus.api.names import dns_subdomain_problem, secret_key_problem

# The original's pattern: either case (this project keeps digests in lowercase).
ORIGINAL_MD5_RE = re.compile(r"^[a-fA-F0-9]{32}$")
IMAGE_SHAPE = "must be an image name or {name, git, upload}"
_BUILD_SHAPE = "must be {git: {url, ...}} or {upload: {md5Checksum, requestID}}"
_UPLOAD_FIELDS = {"md5Checksum": "md5", "requestID": "requestId"}
_SOURCES = ("git", "upload")

# Fields only the original shape has, renamed to the design's: (spec class, written) -> meant.
RENAMED: dict[str, dict[str, str]] = {
    "ModelSpec": {"model": "baseModel", "dataset": "trainingDataset"},
    "NotebookSpec": {"modelName": "model"},
    "ServerSpec": {"modelName": "model"},
}

# Written fields that hold a plain name, not a reference object.
_PLAIN_NAMES = {"modelName"}

# As the original read it: the Secret's name runs to the last dot (names may hold dots), the
# key is what follows ("secrets.tls.certs.crt" is key "crt" of Secret "tls.certs").
_SECRET_REF_RE = re.compile(r"^\$\{\{\s*secrets\.([^\s{}]+)\.([^.\s{}]+)\s*\}\}$")


class CompatError(ValueError):
    """A problem with an original-shape field; ``loc`` is its path within ``spec``."""

    def __init__(self, loc: tuple[str, ...], reason: str) -> None:
        self.loc = loc
        self.reason = reason
        super().__init__(f"spec.{'.'.join(loc)}: {reason}")


def conflict(meant: str) -> str:
    """The reason given (locally and by the CRDs' CEL rules) when both spellings are set."""
    return f"conflicts with spec.{meant}: set one, not both"


# --- the original-only fields, for the CRDs and docs/api.md ------------------------------------


class BuildUpload(Strict):
    md5_checksum: str | None = Field(
        None,
        alias="md5Checksum",
        description="MD5 of the uploaded tarball (spec.image.upload.md5).",
        json_schema_extra={"pattern": ORIGINAL_MD5_RE.pattern},
    )
    request_id: str | None = Field(
        None,
        alias="requestID",
        description="Identifies one upload (spec.image.upload.requestId).",
        json_schema_extra={"pattern": REQUEST_ID_RE.pattern},
    )


class BuildSpec(Strict):
    git: GitSource | None = Field(None, description="Same as spec.image.git.")
    upload: BuildUpload | None = Field(None, description="Same as spec.image.upload.")


class OriginalSpec(Strict):
    build: BuildSpec | None = Field(
        None, description="The original's spelling of spec.image.git / spec.image.upload."
    )


class OriginalModelSpec(OriginalSpec):
    model: ObjectRef | None = Field(None, description="The original's spelling of baseModel.")
    dataset: ObjectRef | None = Field(
        None, description="The original's spelling of trainingDataset."
    )


class OriginalServingSpec(OriginalSpec):
    model_name: str | None = Field(
        None, alias="modelName", description="The original examples' spelling of model: {name}."
    )


# By spec class name: the model of the fields that only the original shape has.
ORIGINAL_FIELDS: dict[str, type[OriginalSpec]] = {
    "ModelSpec": OriginalModelSpec,
    "DatasetSpec": OriginalSpec,
    "NotebookSpec": OriginalServingSpec,
    "ServerSpec": OriginalServingSpec,
}


# --- normalisation -----------------------------------------------------------------------------


def normalise_spec(owner: str, data: Any) -> Any:
    """``data`` (a spec of class ``owner``) in the design's shape; raises CompatError."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for written, meant in RENAMED.get(owner, {}).items():
        value = out.pop(written, None)
        if value is None:
            continue
        if out.get(meant) is not None:
            raise CompatError((written,), conflict(meant))
        if written in _PLAIN_NAMES and not isinstance(value, str):
            raise CompatError((written,), "must be a name (a string)")
        out[meant] = value
    image = out.get("image")
    if isinstance(image, str):
        out["image"] = image = {"name": image}
    elif image is not None and not isinstance(image, dict):
        raise CompatError(("image",), IMAGE_SHAPE)
    build = out.pop("build", None)
    if build is not None:
        out["image"] = {**(image or {}), **_build_source(build, image or {})}
    return out


def _build_source(build: Any, image: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(build, dict):
        raise CompatError(("build",), _BUILD_SHAPE)
    for key in build:
        if key not in _SOURCES:
            raise CompatError(("build", str(key)), "unknown field")
    given = [s for s in _SOURCES if build.get(s) is not None]
    if not given:
        raise CompatError(("build",), "set git or upload")
    if len(given) > 1:
        raise CompatError(("build",), "set at most one of git and upload")
    (source,) = given
    for other in _SOURCES:
        if image.get(other) is not None:
            raise CompatError(("build", source), conflict(f"image.{other}"))
    if source == "git":
        return {"git": build["git"]}
    upload = build["upload"]
    if not isinstance(upload, dict):
        raise CompatError(("build", "upload"), "must be {md5Checksum, requestID}")
    out: dict[str, Any] = {}
    for key, value in upload.items():
        if key not in _UPLOAD_FIELDS:
            raise CompatError(("build", "upload", str(key)), "unknown field")
        if key == "md5Checksum" and isinstance(value, str) and ORIGINAL_MD5_RE.fullmatch(value):
            value = value.lower()
        out[_UPLOAD_FIELDS[key]] = value
    return {"upload": out}


def env_value(key: str, value: Any) -> Any:
    """An env value with ``${{ secrets.NAME.KEY }}`` read as {secretKeyRef: {name, key}}."""
    if not isinstance(value, str) or not value.strip().startswith("${{"):
        return value
    match = _SECRET_REF_RE.fullmatch(value.strip())
    if match is None:
        raise ValueError(
            f"env key {key!r}: {value!r} is not a secret reference: "
            "write ${{ secrets.NAME.KEY }} or {secretKeyRef: {name: NAME, key: KEY}}"
        )
    name, secret_key = match.groups()
    problem = dns_subdomain_problem(name) or secret_key_problem(secret_key)
    if problem:
        raise ValueError(f"env key {key!r}: secret {problem}")
    return {"secretKeyRef": {"name": name, "key": secret_key}}


def written_loc(owner: str, raw: Any, loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """A location within the normalised spec, as the user wrote it in ``raw`` (the spec)."""
    if not isinstance(raw, dict) or not loc:
        return loc
    head, rest = loc[0], loc[1:]
    for written, meant in RENAMED.get(owner, {}).items():
        if head == meant and raw.get(written) is not None:
            # A plain name (modelName: X) has no fields of its own to point into.
            return (written, *rest) if isinstance(raw[written], dict) else (written,)
    if head != "image":
        return loc
    build = raw.get("build")
    if isinstance(build, dict) and rest and rest[0] in build:
        if rest[0] == "upload" and len(rest) > 1:
            theirs = {v: k for k, v in _UPLOAD_FIELDS.items()}
            return ("build", "upload", theirs.get(str(rest[1]), rest[1]), *rest[2:])
        return ("build", *rest)
    if isinstance(raw.get("image"), str):
        return ("image",)
    return loc
