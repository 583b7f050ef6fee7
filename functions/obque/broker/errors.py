"""Turning errors into the API's one error shape: ``{"error": {"code", "message"}}``.

Every status a caller can meet is decided here. A user's mistake is a 4xx with a message
naming the limit or field; store trouble is a retryable 503 with ``Retry-After``; a
caller should meet a 500 only as ``queue_file_corrupt``, which names the object (left
untouched), or ``store_forbidden``, when the store refuses the broker's own credentials
for an object (a deployment whose IAM does not cover it: retrying cannot help).
Unexpected exceptions are logged here and answered without a stack trace.
"""

from __future__ import annotations

import logging

import msgspec
from starlette.responses import Response

from obque.broker.wire import ErrorBody, ErrorOut
from obque.core.errors import (
    Conflict,
    InvalidRequest,
    MissingDependency,
    NotLeader,
    ObqueError,
    PayloadTooLarge,
    QueueFileCorrupt,
    QueueFull,
    QueueNotFound,
    StoreError,
    StoreForbidden,
    StoreUnavailable,
    Unauthorized,
)

__all__ = ["STATUS", "error_response", "http_error_response", "unexpected_error_response"]

log = logging.getLogger("obque.broker")

# Keyed by the exception classes' codes, so that the tree in ``obque.core.errors`` and
# the statuses cannot drift apart; the other codes are the framework's own answers.
STATUS: dict[str, int] = {
    InvalidRequest.code: 400,
    Unauthorized.code: 401,
    "not_found": 404,
    QueueNotFound.code: 404,
    "method_not_allowed": 405,
    PayloadTooLarge.code: 413,
    QueueFull.code: 429,
    QueueFileCorrupt.code: 500,
    "internal_error": 500,
    MissingDependency.code: 500,
    # The store refused the broker's own credentials (IAM): retrying cannot help, so not
    # a 503; the message names the object.
    StoreForbidden.code: 500,
    NotLeader.code: 503,
    StoreUnavailable.code: 503,
    Conflict.code: 503,  # a CAS that kept losing: as retryable as an outage
    StoreError.code: 503,
}


def _encode(code: str, message: str, broker: str | None = None) -> bytes:
    return msgspec.json.encode(ErrorOut(ErrorBody(code, message), broker))


def error_response(exc: ObqueError) -> Response:
    code = exc.code
    status = STATUS.get(code, 500)
    headers = {}
    broker = None
    if isinstance(exc, NotLeader):
        broker = exc.broker_url
    if status == 503:
        headers["Retry-After"] = "1"
        if code in (Conflict.code, StoreError.code):
            code = StoreUnavailable.code
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if status >= 500 and code != "not_leader":
        log.warning("%s: %s", code, exc.message)
    return Response(
        _encode(code, exc.message, broker),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def http_error_response(status: int, detail: str) -> Response:
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
        status, "invalid_request" if 400 <= status < 500 else "internal_error"
    )
    return Response(_encode(code, detail), status_code=status, media_type="application/json")


def unexpected_error_response(exc: BaseException) -> Response:
    log.error("unexpected error", exc_info=exc)
    return Response(
        _encode("internal_error", "the broker failed unexpectedly; see its log"),
        status_code=500,
        media_type="application/json",
    )
