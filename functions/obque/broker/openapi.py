"""The broker's OpenAPI document: msgspec's body schemas and the one error shape.

FastAPI never sees the request or response bodies (msgspec decodes and encodes them, see
``obque.broker.app``), so it cannot describe them: each route declares its bodies and
answers through :func:`route_doc`, and :func:`publish_schemas` adds msgspec's schemas of
those bodies to the generated document.
"""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import FastAPI
from starlette.responses import Response

from obque.broker.wire import REQUEST_TYPES, RESPONSE_TYPES
from obque.core.errors import (
    InvalidRequest,
    NotLeader,
    PayloadTooLarge,
    QueueFileCorrupt,
    QueueFull,
    QueueNotFound,
    StoreForbidden,
    StoreUnavailable,
    Unauthorized,
)
from obque.core.limits import NAME_PATTERN

__all__ = ["PUBLISHED_ERRORS", "publish_schemas", "route_doc"]

#: The error answers every API route publishes: status, the codes it carries, and a note.
#: ``obque.broker.errors.STATUS`` decides the statuses; a unit test holds the two together.
PUBLISHED_ERRORS: tuple[tuple[int, tuple[str, ...], str], ...] = (
    (400, (InvalidRequest.code,), ""),
    (401, (Unauthorized.code,), ""),
    (404, (QueueNotFound.code,), ""),
    (413, (PayloadTooLarge.code,), ""),
    (429, (QueueFull.code,), ""),
    (
        500,
        (QueueFileCorrupt.code, StoreForbidden.code),
        "not retryable: the message names the object to repair or to grant access to",
    ),
    (503, (NotLeader.code, StoreUnavailable.code), "with Retry-After"),
)

_ERROR_REF = {"$ref": "#/components/schemas/ErrorOut"}
_ERRORS = {
    str(status): {
        "description": " or ".join(codes) + (f" ({note})" if note else ""),
        "content": {"application/json": {"schema": _ERROR_REF}},
    }
    for status, codes, note in PUBLISHED_ERRORS
}


def route_doc(
    body: type | None,
    answer: type,
    statuses: tuple[int, ...] = (200,),
    *,
    body_optional: bool = False,
) -> dict[str, Any]:
    """OpenAPI for a route whose bodies msgspec handles (FastAPI never sees them)."""
    answer_ref = {"$ref": f"#/components/schemas/{answer.__name__}"}
    responses: dict[str, Any] = {
        **{
            str(status): {
                "description": "Created" if status == 201 else "OK",
                "content": {"application/json": {"schema": answer_ref}},
            }
            for status in statuses
        },
        **_ERRORS,
    }
    extra: dict[str, Any] = {"responses": responses}
    if body is not None:
        extra["requestBody"] = {
            "required": not body_optional,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{body.__name__}"}}
            },
        }
    return {"openapi_extra": extra, "response_class": Response}


def publish_schemas(app: FastAPI) -> None:
    """Put msgspec's schemas of the bodies into FastAPI's generated OpenAPI document."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = base()
            _, components = msgspec.json.schema_components(
                REQUEST_TYPES + RESPONSE_TYPES, ref_template="#/components/schemas/{name}"
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
            _document_queue_names(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _document_queue_names(schema: dict[str, Any]) -> None:
    """Publish the queue-name limit on every ``{name}`` and drop FastAPI's 422 answer.

    The handlers check names themselves (``check_queue_name``, a 400 naming the rule), so
    FastAPI never validates the parameter and never answers 422; the document says so.
    """
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and parameter.get("name") == "name":
                    parameter["schema"].update(
                        pattern=f"^{NAME_PATTERN.pattern}$", minLength=1, maxLength=63
                    )
