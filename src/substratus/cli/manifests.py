"""Reading manifests for `sub apply -f` and `sub delete -f`: files, directories, URLs, stdin."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from substratus.api.loading import ValidationFailed, load_yaml_documents

SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Document:
    body: dict[str, Any]
    source: str  # file path or URL, for messages
    directory: Path | None  # where a relative build context (image.upload) is found


def _read_source(source: str, recursive: bool) -> list[tuple[str, str, Path | None]]:
    if source == "-":
        return [(sys.stdin.read(), "<stdin>", None)]
    if source.startswith(("http://", "https://")):
        try:
            resp = httpx.get(source, follow_redirects=True, timeout=30)
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            raise ValidationFailed(source, [("", f"cannot fetch manifest: {exc}")]) from None
        return [(resp.text, source, None)]
    path = Path(source.removeprefix("file://")).expanduser()
    if path.is_dir():
        pattern = "**/*" if recursive else "*"
        files = sorted(p for p in path.glob(pattern) if p.suffix in SUFFIXES and p.is_file())
        if not files:
            raise ValidationFailed(source, [("", "directory holds no .yaml, .yml or .json files")])
        return [(f.read_text(), str(f), f.parent) for f in files]
    if not path.exists():
        raise ValidationFailed(source, [("", "no such file or directory")])
    return [(path.read_text(), str(path), path.parent)]


def read_documents(
    sources: list[str], namespace: str | None, recursive: bool = False
) -> list[Document]:
    """All documents of all sources; every document is a mapping with a kind."""
    docs: list[Document] = []
    for source in sources:
        for text, where, directory in _read_source(source, recursive):
            for body in load_yaml_documents(text, where):
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
