"""The broker's error answers: the statuses it gives and the ones its OpenAPI publishes."""

from __future__ import annotations

import msgspec
import pytest

from obque.broker.app import create_app
from obque.broker.errors import STATUS, error_response
from obque.broker.openapi import PUBLISHED_ERRORS
from obque.broker.settings import BrokerSettings
from obque.core.errors import ObqueError, QueueFileCorrupt, StoreForbidden, StoreUnavailable

URI = "s3://bucket/other.json"


def test_every_published_code_is_answered_with_its_published_status() -> None:
    published = {code: status for status, codes, _ in PUBLISHED_ERRORS for code in codes}
    assert {code: STATUS[code] for code in published} == published
    # Every 5xx code a caller can be given is published (the rest are rewritten, or are
    # the framework's generic answers for a bug or a missing SDK).
    rewritten = {"conflict", "store_error"}  # answered as store_unavailable
    generic = {"internal_error", "missing_dependency"}
    assert {c for c, s in STATUS.items() if s >= 500} - rewritten - generic == {
        c for c, s in published.items() if s >= 500
    }


def test_the_openapi_document_names_store_forbidden_among_the_500s() -> None:
    app = create_app(BrokerSettings(root="mem://broker-errors/", mode="serverless"))
    paths = app.openapi()["paths"]
    documented = [
        operation["responses"]
        for path, operations in paths.items()
        if path.startswith("/v1/")
        for operation in operations.values()
    ]
    assert len(documented) == 11
    for responses in documented:
        assert "queue_file_corrupt" in responses["500"]["description"]
        assert "store_forbidden" in responses["500"]["description"]
        assert "not_leader or store_unavailable" in responses["503"]["description"]


@pytest.mark.parametrize(
    ("error", "status", "code", "retry_after"),
    [
        (StoreForbidden(f"{URI}: S3 answered 403 AccessDenied"), 500, "store_forbidden", None),
        (QueueFileCorrupt(f"{URI} is not valid JSON"), 500, "queue_file_corrupt", None),
        (StoreUnavailable(f"{URI}: S3 answered 503 SlowDown"), 503, "store_unavailable", "1"),
    ],
    ids=["forbidden", "corrupt", "unavailable"],
)
def test_store_errors_answer_with_their_status_and_name_the_object(
    error: ObqueError, status: int, code: str, retry_after: str | None
) -> None:
    response = error_response(error)
    assert response.status_code == status
    assert response.headers.get("retry-after") == retry_after
    body = msgspec.json.decode(bytes(response.body))
    assert body == {"error": {"code": code, "message": error.message}}
    assert URI in body["error"]["message"]
