"""``GET /openapi.json`` (OpenAPI 3.1, from the request models of ``protocol.py``) and
``GET /docs`` (Swagger UI, served from the files of the ``swagger-ui-py`` package: the page
works with no network, as a server inside a cluster often has none)."""

from __future__ import annotations

import functools
import html
import importlib.util
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from substratus.workloads.server import protocol as p

# Relative to /docs, so that the page works behind a path prefix (a proxy, kubectl proxy).
STATIC = "docs/static"

_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_ERRORS = {
    "400": "the request is not valid: the message names the field",
    "401": "no valid API key in `Authorization: Bearer KEY`",
    "404": "no such model",
    "413": "the body is larger than the server accepts",
    "503": "the model is still loading",
}
# (path, summary, request model, streams)
_OPERATIONS: list[tuple[str, str, type[BaseModel], bool]] = [
    ("/v1/completions", "Complete a prompt", p.CompletionRequest, True),
    ("/v1/chat/completions", "Answer a conversation", p.ChatCompletionRequest, True),
    ("/v1/embeddings", "Embed texts or token ids", p.EmbeddingRequest, False),
]


def static_dir() -> Path | None:
    """Swagger UI's files (swagger-ui-bundle.js, swagger-ui.css), found without importing the
    package (its own code needs jinja2); None when it is not installed."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "static"


@functools.cache
def document(model: str, secured: bool) -> dict[str, Any]:
    """The API this server answers; ``secured``: it asks for a bearer API key. Made once: the
    request models do not change while the server runs."""
    _, defs = models_json_schema(
        [(m, "validation") for _, _, m, _ in _OPERATIONS],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = {**defs.get("$defs", {}), "Error": _ERROR}
    errors = {
        code: {
            "description": why,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for code, why in _ERRORS.items()
        if secured or code != "401"
    }
    paths: dict[str, Any] = {}
    for path, summary, request, streams in _OPERATIONS:
        content: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}
        if streams:
            content["text/event-stream"] = {"schema": {"type": "string"}}
        paths[path] = {
            "post": {
                "summary": summary,
                "operationId": path.strip("/").replace("/", "_"),
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": f"#/components/schemas/{request.__name__}"}
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "OpenAI's response object"
                        + ("; with `stream: true`, server-sent events ending with `[DONE]`")
                        * streams,
                        "content": content,
                    },
                    **errors,
                },
            }
        }
    listed = {"description": "OpenAI's model list", "content": {"application/json": {}}}
    paths["/v1/models"] = {"get": {"summary": "The served model", "responses": {"200": listed}}}
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": f"Substratus model server: {model}",
            "version": "v1",
            "description": "OpenAI-compatible: point the `openai` client's `base_url` at "
            "`/v1`. `GET /` answers 200 once the model is loaded; `GET /metrics` is "
            "Prometheus' text.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if secured:
        doc["components"]["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"apiKey": []}]
    return doc


def docs_page(model: str) -> str:
    title = html.escape(f"{model}: Substratus model server")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="stylesheet" href="{STATIC}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{STATIC}/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({{url: {json.dumps("openapi.json")}, dom_id: "#swagger-ui"}});
</script>
</body>
</html>
"""
