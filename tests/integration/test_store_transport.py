"""How the S3 and GCS adapters classify transport failures, against a misbehaving server.

A write whose answer is lost must come back as ``AmbiguousWrite`` after exactly one
request: an SDK retry of a conditional write that had landed would answer 412 and turn
our own success into a conflict. A write that never left must be ``StoreUnavailable``.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest
from botocore.exceptions import ClientError
from servers import StoreServer, free_ports

from obque.core.errors import AmbiguousWrite, Conflict, StoreForbidden, StoreUnavailable
from obque.store import open_store

pytestmark = pytest.mark.timeout(60)

ADAPTERS = ["s3", "gs"]


class _Handler(socketserver.StreamRequestHandler):
    server: Misbehaving

    def handle(self) -> None:
        headers: dict[str, str] = {}
        method = self.rfile.readline().split(b" ", 1)[0]
        while (line := self.rfile.readline().decode("latin-1").strip()) != "":
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("expect", "").lower() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.wfile.flush()
        self.rfile.read(int(headers.get("content-length", "0")))
        if method in (b"PUT", b"POST"):  # not the SDKs' own lookups (GCS bucket metadata)
            with self.server.lock:
                self.server.writes += 1
        if self.server.answer is None:
            self.connection.shutdown(socket.SHUT_RDWR)  # the answer is lost
        else:
            self.wfile.write(self.server.answer)


class Misbehaving(socketserver.ThreadingTCPServer):
    """A loopback HTTP endpoint that reads each request whole, then answers ``answer``
    (raw bytes) or, when it is None, closes the connection without a word. ``writes``
    counts the PUT and POST requests it received."""

    daemon_threads = True

    def __init__(self, answer: bytes | None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answer = answer
        self.writes = 0
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def misbehaving(request: pytest.FixtureRequest) -> Iterator[Misbehaving]:
    server = Misbehaving(request.param)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _endpoint_env(scheme: str, endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the SDK of ``scheme`` at ``endpoint``; return a queue URI there."""
    server = (
        StoreServer.s3("fake", endpoint) if scheme == "s3" else StoreServer.gcs("fake", endpoint)
    )
    server.apply(monkeypatch)
    return server.uri("transport/queue.json")


LOST = None
FAILED = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize("scheme", ADAPTERS)
@pytest.mark.parametrize("misbehaving", [LOST, FAILED], ids=["lost", "500"], indirect=True)
@pytest.mark.parametrize("expected", [None, "1"], ids=["create", "cas"])
def test_a_write_without_a_clear_answer_is_ambiguous_and_sent_once(
    scheme: str, misbehaving: Misbehaving, expected: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(_endpoint_env(scheme, misbehaving.endpoint, monkeypatch))
    try:
        with pytest.raises(AmbiguousWrite):
            store.backend.put(store.key, b"{}", expected)
    finally:
        store.close()
    assert misbehaving.writes == 1


@pytest.mark.parametrize("scheme", ADAPTERS)
def test_a_write_to_nowhere_is_unavailable_not_ambiguous(
    scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed_port = free_ports(1)[0]  # nothing listens there any more
    store = open_store(_endpoint_env(scheme, f"http://127.0.0.1:{closed_port}", monkeypatch))
    try:
        with pytest.raises(StoreUnavailable) as raised:
            store.backend.put(store.key, b"{}", None)
    finally:
        store.close()
    assert not isinstance(raised.value, AmbiguousWrite)


CONDITIONAL_CONFLICT_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ConditionalRequestConflict</Code>'
    b"<Message>A conflicting conditional operation is currently in progress against this "
    b"resource. Please try again.</Message><RequestId>R1</RequestId></Error>"
)
CONDITIONAL_CONFLICT = (
    b"HTTP/1.1 409 Conflict\r\nContent-Type: application/xml\r\n"
    + f"Content-Length: {len(CONDITIONAL_CONFLICT_BODY)}\r\n".encode()
    + b"Connection: close\r\n\r\n"
    + CONDITIONAL_CONFLICT_BODY
)


@pytest.mark.parametrize("misbehaving", [CONDITIONAL_CONFLICT], ids=["409"], indirect=True)
@pytest.mark.parametrize("expected", [None, '"etag-1"'], ids=["create", "cas"])
def test_s3_409_conditional_request_conflict_is_a_conflict_sent_once(
    misbehaving: Misbehaving, expected: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # S3 answers 409 ConditionalRequestConflict when two conditional writes of one key
    # race; the loser lost its compare-and-set. Neither moto nor SeaweedFS sends it.
    store = open_store(_endpoint_env("s3", misbehaving.endpoint, monkeypatch))
    try:
        with pytest.raises(Conflict) as raised:
            store.write(b"{}", expected)  # the public path: no ambiguity resolution either
    finally:
        store.close()
    assert not isinstance(raised.value, StoreUnavailable)
    assert isinstance(raised.value.__cause__, ClientError)
    assert "ConditionalRequestConflict" in str(raised.value.__cause__)
    assert misbehaving.writes == 1  # not retried by the SDK, not re-read as ambiguous


def _answer(status: str, content_type: str, body: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


S3_ACCESS_DENIED = _answer(
    "403 Forbidden",
    "application/xml",
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    b"<Message>Access Denied</Message><RequestId>R2</RequestId></Error>",
)
GCS_FORBIDDEN = _answer(
    "403 Forbidden",
    "application/json",
    b'{"error": {"code": 403, "message": "broker@p.iam.gserviceaccount.com does not have '
    b'storage.objects.get access.", "errors": [{"reason": "forbidden"}]}}',
)


@pytest.mark.parametrize(
    ("scheme", "misbehaving"),
    [("s3", S3_ACCESS_DENIED), ("gs", GCS_FORBIDDEN)],
    ids=["s3", "gs"],
    indirect=["misbehaving"],
)
def test_a_403_is_store_forbidden_not_retried_and_names_the_object(
    scheme: str, misbehaving: Misbehaving, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An IAM refusal is not transient: a broker answers it as 500 store_forbidden, never
    # as a 503 that invites the caller to retry.
    store = open_store(_endpoint_env(scheme, misbehaving.endpoint, monkeypatch))
    try:
        with pytest.raises(StoreForbidden) as read:
            store.read()
        with pytest.raises(StoreForbidden) as written:
            store.write(b"{}", None)
    finally:
        store.close()
    for refused in (read.value, written.value):
        assert not isinstance(refused, StoreUnavailable)
        assert refused.code == "store_forbidden"
        assert store.uri in refused.message
        assert "403" in refused.message and "may not access this object" in refused.message
    assert misbehaving.writes == 1  # the write was refused once, not retried
