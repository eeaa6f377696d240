"""Reading manifests for `sub apply -f` and `sub delete -f`: files, directories, URLs, stdin."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NamedTuple

from substratus.api.documents import check_document, load_yaml_documents
from substratus.api.errors import ValidationFailed
from substratus.api.limits import MAX_MANIFEST_BYTES
from substratus.core.client import NotFoundError

SUFFIXES = (".yaml", ".yml", ".json")


class Document(NamedTuple):
    body: dict[str, Any]
    source: str  # file path or URL, for messages
    directory: Path | None  # where a relative build context (image.upload) is found


def upload_section(spec: dict[str, Any]) -> tuple[dict[str, Any], str, str, str] | None:
    """Where a document asks for an upload, in the shape it was written: the design's
    ``spec.image.upload`` {md5, requestId} or the original's ``spec.build.upload``
    {md5Checksum, requestID}. Returns (parent, field path, md5 key, request id key)."""
    for parent_key, md5_key, id_key in (("image", "md5", "requestId"),
                                        ("build", "md5Checksum", "requestID")):  # fmt: skip
        parent = spec.get(parent_key)
        if isinstance(parent, dict) and parent.get("upload") is not None:
            return parent, f"spec.{parent_key}.upload", md5_key, id_key
    return None


def needs_upload(body: dict[str, Any]) -> bool:
    spec = body.get("spec")
    return isinstance(spec, dict) and upload_section(spec) is not None


def _too_large(source: str) -> ValidationFailed:
    return ValidationFailed(source, [("", f"larger than the limit of {MAX_MANIFEST_BYTES} bytes")])


def _fetch(url: str) -> str:
    import httpx

    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=30) as resp:
            resp.raise_for_status()
            body = bytearray()
            for chunk in resp.iter_bytes():
                body += chunk
                if len(body) > MAX_MANIFEST_BYTES:
                    raise _too_large(url)
            return body.decode(resp.encoding or "utf-8", errors="replace")
    except httpx.HTTPError as exc:
        raise ValidationFailed(url, [("", f"cannot fetch manifest: {exc}")]) from None


def _read_file(path: Path) -> str:
    # Checked before reading: a huge file is refused without loading it.
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise _too_large(str(path))
    return path.read_text()


def _read_source(source: str, recursive: bool) -> list[tuple[str, str, Path | None]]:
    if source == "-":
        text = sys.stdin.read(MAX_MANIFEST_BYTES + 1)
        if len(text) > MAX_MANIFEST_BYTES:
            raise _too_large("<stdin>")
        return [(text, "<stdin>", None)]
    if source.startswith(("http://", "https://")):
        return [(_fetch(source), source, None)]
    path = Path(source.removeprefix("file://")).expanduser()
    if path.is_dir():
        pattern = "**/*" if recursive else "*"
        files = sorted(p for p in path.glob(pattern) if p.suffix in SUFFIXES and p.is_file())
        if not files:
            raise ValidationFailed(source, [("", "directory holds no .yaml, .yml or .json files")])
        return [(_read_file(f), str(f), f.parent) for f in files]
    if not path.exists():
        raise NotFoundError(f"{source}: no such file or directory")
    return [(_read_file(path), str(path), path.parent)]


def read_documents(
    sources: list[str], namespace: str | None, recursive: bool = False
) -> list[Document]:
    """All documents of all sources; every document is a mapping with a kind."""
    docs: list[Document] = []
    for source in sources:
        for text, where, directory in _read_source(source, recursive):
            bodies = load_yaml_documents(text, where)
            if not bodies:
                # An empty file is almost always a mistake (a wrong path, a failed redirect).
                raise ValidationFailed(where, [("", "holds no objects")])
            for body in bodies:
                if not isinstance(body, dict):
                    raise ValidationFailed(where, [("", "each document must be a mapping")])
                if body.get("kind") == "List" and isinstance(body.get("items"), list):
                    items = body["items"]
                else:
                    items = [body]
                for item in items:
                    meta = item.setdefault("metadata", {}) if isinstance(item, dict) else None
                    if not isinstance(meta, dict):
                        raise ValidationFailed(where, [("metadata", "must be a mapping")])
                    check_document(item, where)
                    if namespace:
                        if meta.get("namespace", namespace) != namespace:
                            raise ValidationFailed(
                                where,
                                [
                                    (
                                        "metadata.namespace",
                                        f"{meta['namespace']!r} does not match --namespace "
                                        f"{namespace!r}",
                                    )
                                ],
                            )
                        meta["namespace"] = namespace
                    docs.append(Document(item, where, directory))
    return docs
