"""Hostile input, handcrafted, against a real ``obque broker`` process.

Huge and endless bodies, deep nesting, invalid UTF-8, unicode and traversing queue names,
numbers no field can hold, wrong types, duplicate keys, empty bodies, wrong content types,
long headers and paths, oversized batches and broken HTTP framing. Whatever the app
refuses is a 4xx in the one error shape ``{"error": {"code", "message"}}``; requests the
HTTP parser itself refuses (uvicorn, before the app sees them) are still a 4xx; what is
valid despite looking odd (JSON under a foreign Content-Type, long headers, duplicate
keys) is served. Never a 5xx, never a stack trace, in an answer or in the broker's log.
After every test the broker is alive, every queue file under the root still decodes, and
nothing was written anywhere else.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from obque.client import Client
from obque.core import decode_state
from obque.core.limits import NAME_PATTERN

# broker_proc is also loaded as a plugin (its fixtures and report hook); have its asserts
# rewritten before the import below, as pytest does for plugins.
pytest.register_assert_rewrite("broker_proc")

from broker_proc import BrokerFactory, BrokerProcess, assert_error, attach_logs  # noqa: E402

pytest_plugins = ["broker_proc"]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MiB = 1024 * 1024
MAX_BODY = 16 * MiB
JSON = {"content-type": "application/json"}
_names = itertools.count()


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile_broker(module_brokers: BrokerFactory) -> BrokerProcess:
    return module_brokers.start(module_brokers.root())


@pytest.fixture
def broker(
    request: pytest.FixtureRequest, hostile_broker: BrokerProcess, module_brokers: BrokerFactory
) -> Iterator[BrokerProcess]:
    """The shared broker; afterwards it must be alive with every file intact."""
    attach_logs(request, module_brokers)
    assert hostile_broker.alive(), hostile_broker.log()
    outside_before = files_outside_root(module_brokers)
    yield hostile_broker
    assert hostile_broker.alive(), f"the broker died:\n{hostile_broker.log()}"
    assert "Traceback" not in hostile_broker.log()
    assert_root_intact(module_brokers.root_dir())
    assert files_outside_root(module_brokers) == outside_before
    # Anything traversal could have made, anywhere in this session's temporary tree.
    assert not list(module_brokers.workdir.parent.rglob("escaped*"))


@pytest.fixture
def http(broker: BrokerProcess) -> Iterator[httpx.Client]:
    with broker.client() as client:
        yield client


@pytest.fixture
def queue(http: httpx.Client, request: pytest.FixtureRequest) -> str:
    """A fresh queue on the shared broker."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    name = f"{name}-{next(_names)}"
    response = http.put(f"/v1/queues/{name}")
    assert response.status_code == 201, response.text
    return name


def files_outside_root(factory: BrokerFactory) -> set[str]:
    """Every file under the broker's working directory except the root and the logs."""
    root = factory.root_dir()
    return {
        str(path.relative_to(factory.workdir))
        for path in factory.workdir.rglob("*")
        if path.is_file() and root not in path.parents and not path.name.endswith(".log")
    }


def assert_root_intact(root: Path) -> None:
    """Only queue files in the root, each strict UTF-8 JSON that obque decodes."""
    for path in root.iterdir():
        if path.name.startswith("."):
            continue  # the file store's lock and temporary files
        assert path.suffix == ".json" and NAME_PATTERN.fullmatch(path.stem), path
        data = path.read_bytes()
        # parse_int=str: a payload may hold an integer longer than Python's int() accepts
        # (4,300 digits); it is valid JSON all the same.
        doc = json.loads(data.decode("utf-8"), parse_int=str)
        assert doc["format"] == "obque/1" and doc["name"] == path.stem, doc
        decode_state(data, str(path))


def stats(http: httpx.Client, queue: str) -> dict[str, Any]:
    response = http.get(f"/v1/queues/{queue}/stats")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def post(http: httpx.Client, path: str, body: bytes, **headers: str) -> httpx.Response:
    return http.post(path, content=body, headers=headers or JSON)


def assert_400(response: httpx.Response, sent: object, *mentions: str) -> str:
    """``400 invalid_request`` in the one error shape; a failure names what was sent."""
    try:
        return assert_error(response, 400, "invalid_request", *mentions)
    except AssertionError as exc:
        raise AssertionError(f"sent {sent!r:.200}: {exc}") from None


# -- raw HTTP (httpx would normalise or refuse what these tests send) -----------------------


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def parse_answer(data: bytes) -> RawAnswer:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return RawAnswer(status, headers, body)


def read_answer(sock: socket.socket) -> RawAnswer:
    """Read one answer: its head, then its Content-Length (or until the server closes)."""
    data = b""
    while True:
        if b"\r\n\r\n" in data:
            answer = parse_answer(data)
            length = answer.headers.get("content-length")
            if length is not None and len(answer.body) >= int(length):
                return answer
        chunk = sock.recv(65536)
        if not chunk:
            return parse_answer(data)
        data += chunk


def send_raw(broker: BrokerProcess, request: bytes, timeout: float = 30) -> RawAnswer:
    """Send bytes as they are and read the answer."""
    with socket.create_connection((broker.host, broker.port), timeout=timeout) as sock:
        sock.sendall(request)
        return read_answer(sock)


def request_line(method: str, target: str, body: bytes = b"", **headers: str) -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    head += f"Content-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode("latin-1") + b"\r\n" + body


def assert_raw_refused(answer: RawAnswer) -> None:
    """A 4xx without a trace; in the JSON error shape whenever the app answered."""
    assert 400 <= answer.status < 500, answer
    assert b"Traceback" not in answer.body, answer
    if answer.headers.get("content-type", "").startswith("application/json"):
        body = answer.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    else:  # uvicorn's own answer to a request its parser refused
        assert answer.body == b"Invalid HTTP request received.", answer


# -- huge and endless bodies ----------------------------------------------------------------


@pytest.mark.parametrize("verb", ["push", "claim", "ack", "dead/purge"])
def test_body_over_16_mib_is_413(http: httpx.Client, queue: str, verb: str) -> None:
    body = b'{"jobs": [{"payload": "' + b"x" * MAX_BODY + b'"}]}'
    response = post(http, f"/v1/queues/{queue}/{verb}", body)
    assert_error(response, 413, "payload_too_large", str(MAX_BODY))
    assert stats(http, queue)["pushed"] == 0


def test_a_body_of_exactly_16_mib_is_read(http: httpx.Client, queue: str) -> None:
    """The limit is on the body, not on what it holds: whitespace up to the limit passes."""
    head = b'{"jobs": [{"payload": "at the limit"}]}'
    response = post(http, f"/v1/queues/{queue}/push", head + b" " * (MAX_BODY - len(head)))
    assert response.status_code == 200, response.text
    assert stats(http, queue)["pushed"] == 1


def test_declared_length_over_16_mib_is_refused_before_the_body_is_sent(
    broker: BrokerProcess, queue: str
) -> None:
    # Headers only: were the broker to wait for the 17 MiB it was promised, this would time
    # out; it answers from the Content-Length alone.
    head = request_line("POST", f"/v1/queues/{queue}/push", **JSON)
    head = head.replace(b"Content-Length: 0", f"Content-Length: {MAX_BODY + MiB}".encode())
    answer = send_raw(broker, head, timeout=20)
    assert answer.status == 413, answer
    assert answer.json()["error"]["code"] == "payload_too_large"


def test_endless_chunked_body_is_cut_off_at_16_mib(broker: BrokerProcess, queue: str) -> None:
    """No Content-Length and a body that never ends: the broker stops reading past the
    limit and answers 413, while the client is still sending."""
    head = (
        f"POST /v1/queues/{queue}/push HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b"%x\r\n" % MiB + b"[" * MiB + b"\r\n"
    sent = 0
    with socket.create_connection((broker.host, broker.port), timeout=30) as sock:

        def send_forever() -> None:
            nonlocal sent
            try:
                sock.sendall(head)
                while sent < 256 * MiB:  # a bound, in case the broker read everything
                    sock.sendall(chunk)
                    sent += MiB
            except OSError:
                pass  # the broker answered and closed: that is the point

        sender = threading.Thread(target=send_forever, daemon=True)
        sender.start()
        try:
            answer = read_answer(sock)
        finally:
            sock.shutdown(socket.SHUT_RDWR)
            sender.join(timeout=30)
    assert answer.status == 413, answer
    assert b"payload_too_large" in answer.body, answer
    assert sent < 256 * MiB, "the broker read the whole endless body"


def test_client_leaving_mid_body_is_not_a_server_error(broker: BrokerProcess, queue: str) -> None:
    head = request_line("POST", f"/v1/queues/{queue}/push", **JSON)
    head = head.replace(b"Content-Length: 0", b"Content-Length: 1000")
    with socket.create_connection((broker.host, broker.port), timeout=10) as sock:
        sock.sendall(head + b'{"jobs": [{"payload": ')
    # The broker notices on its next read; a request after it shows it has moved on.
    with broker.client() as http:
        assert stats(http, queue)["pushed"] == 0
    assert "Traceback" not in broker.log()


# -- deep nesting ---------------------------------------------------------------------------

DEPTH = 100_000


@pytest.mark.parametrize(
    ("verb", "body"),
    [
        ("push", b'{"jobs": [{"payload": ' + b"[" * DEPTH + b"]" * DEPTH + b"}]}"),
        ("push", b'{"jobs": [{"payload": ' + b'{"a": ' * DEPTH + b"1" + b"}" * DEPTH + b"}]}"),
        ("push", b'{"jobs": [{"payload": ' + b"[" * DEPTH + b"}]}"),  # never closed
        ("push", b"[" * DEPTH),
        ("push", b'{"jobs": ' + b"[" * DEPTH + b"]" * DEPTH + b"}"),
        ("claim", b'{"worker": ' + b"[" * DEPTH + b"]" * DEPTH + b"}"),
        ("ack", b'{"leases": [{"id": "1", "lease": ' + b"{" * DEPTH + b"}"),
        ("dead/redrive", b'{"ids": ' + b"[" * DEPTH + b"]" * DEPTH + b"}"),
    ],
    ids=["array", "object", "unclosed", "top-level", "jobs", "worker", "lease", "ids"],
)
def test_deep_nesting_is_400(http: httpx.Client, queue: str, verb: str, body: bytes) -> None:
    assert_400(post(http, f"/v1/queues/{queue}/{verb}", body), body)
    assert stats(http, queue)["pushed"] == 0


def test_nesting_the_decoder_accepts_is_stored_and_read_back(
    http: httpx.Client, queue: str, module_brokers: BrokerFactory
) -> None:
    payload = b"[" * 200 + b'"deep"' + b"]" * 200
    response = post(http, f"/v1/queues/{queue}/push", b'{"jobs": [{"payload": ' + payload + b"}]}")
    assert response.status_code == 200, response.text
    assert payload in (module_brokers.root_dir() / f"{queue}.json").read_bytes()
    claimed = post(http, f"/v1/queues/{queue}/claim", b'{"worker": "w"}')
    assert payload in claimed.content


@pytest.mark.parametrize("payload", [b"1e999", b"[-1e400]", b"9" * 4301])
def test_a_payload_no_client_can_decode_never_breaks_a_claim(
    http: httpx.Client, broker: BrokerProcess, queue: str, payload: bytes
) -> None:
    body = b'{"jobs": [{"payload": %s}, {"payload": "innocent"}]}' % payload
    response = post(http, f"/v1/queues/{queue}/push", body)
    # Refused at the door, whole batch: no client will ever meet it.
    assert_error(response, 400, "invalid_request", "decode")
    with Client(broker.url, queue=queue) as client:
        assert client.claim("w", max=10) == []


# -- invalid UTF-8 and unicode -----------------------------------------------------------------

BAD_UTF8 = {
    "lone-continuation": b"\x80",
    "bad-start": b"\xff\xfe",
    "truncated": b"\xc3",
    "overlong-slash": b"\xc0\xaf",
    "surrogate": b"\xed\xa0\x80",
    "beyond-unicode": b"\xf4\x90\x80\x80",
    "five-bytes": b"\xf8\x88\x80\x80\x80",
    "latin-1": b"caf\xe9",
}
BAD_UTF8_PLACES = {
    "payload": ("push", b'{"jobs": [{"payload": "%s"}]}'),
    "payload-key": ("push", b'{"jobs": [{"payload": {"%s": 1}}]}'),
    "job-key": ("push", b'{"jobs": [{"payload": 1, "key": "%s"}]}'),
    "field-name": ("push", b'{"jobs": [{"payload": 1, "%s": 1}]}'),
    "worker": ("claim", b'{"worker": "%s"}'),
    "lease": ("ack", b'{"leases": [{"id": "1", "lease": "%s"}]}'),
    "nack-error": ("nack", b'{"leases": [{"id": "1", "lease": "x", "error": "%s"}]}'),
    "ids": ("dead/purge", b'{"ids": ["%s"]}'),
}


@pytest.mark.parametrize("place", list(BAD_UTF8_PLACES))
def test_invalid_utf8_anywhere_is_400(http: httpx.Client, queue: str, place: str) -> None:
    verb, template = BAD_UTF8_PLACES[place]
    for what, bad in BAD_UTF8.items():
        assert_400(post(http, f"/v1/queues/{queue}/{verb}", template % bad), what)
    assert stats(http, queue)["pushed"] == 0


@pytest.mark.parametrize(
    ("verb", "body"),
    [
        ("push", rb'{"jobs": [{"payload": "\ud800"}]}'),
        ("push", rb'{"jobs": [{"payload": {"\udfff": 1}}]}'),
        ("push", rb'{"jobs": [{"payload": 1, "key": "a\ud83d"}]}'),
        ("claim", rb'{"worker": "\udc00w"}'),
        ("nack", rb'{"leases": [{"id": "1", "lease": "x", "error": "\ud800"}]}'),
    ],
)
def test_lone_surrogate_escapes_are_400(
    http: httpx.Client, queue: str, verb: str, body: bytes
) -> None:
    """``"\\ud800"`` is valid JSON syntax but no character; stored, it would poison every
    strict reader of the file."""
    assert_400(post(http, f"/v1/queues/{queue}/{verb}", body), body)


def test_unicode_payloads_and_workers_round_trip(
    http: httpx.Client, queue: str, module_brokers: BrokerFactory
) -> None:
    payload = {"text": "café ✓ 日本語 😀 \u202e \u0000 \ufeff", "🔑": ["\u200b"]}
    response = http.post(
        f"/v1/queues/{queue}/push", json={"jobs": [{"payload": payload, "key": "ключ-😀"}]}
    )
    assert response.status_code == 200, response.text
    claimed = http.post(f"/v1/queues/{queue}/claim", json={"worker": "wörker-日本"}).json()
    assert claimed["jobs"][0]["payload"] == payload
    state = json.loads((module_brokers.root_dir() / f"{queue}.json").read_bytes())
    assert state["jobs"][0]["payload"] == payload
    assert state["jobs"][0]["claim"]["worker"] == "wörker-日本"


UNICODE_NAMES = ["café", "队列", "\uff51\uff55\uff45\uff55\uff45", "q\u200b", "Ω", "qu\u0301eue"]
UNICODE_NAMES += ["q\u202eeuq", "😀", "q\u0000", "q\n", "İ", "ß", "ǆ"]


@pytest.mark.parametrize("name", UNICODE_NAMES)
def test_unicode_queue_names_are_400(http: httpx.Client, name: str) -> None:
    for method, suffix in (("PUT", ""), ("POST", "/push"), ("GET", "/stats")):
        body = b'{"jobs": [{"payload": 1}]}' if suffix else b""
        path = f"/v1/queues/{quote(name, safe='')}{suffix}"
        response = http.request(method, path, content=body, headers=JSON)
        assert_error(response, 400, "invalid_request", "queue name")


# -- path traversal --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "..%2Fescaped",
        "..%2F..%2Fescaped",
        "..%2f..%2f..%2fescaped",
        "%2e%2e%2Fescaped",
        "%2E%2E",
        "%2e",
        "..",
        "escaped%2F..%2F..%2Fescaped",
        "a%2Fb",
        "%2Fescaped",
        "..%5C..%5Cescaped",
        "..%5cescaped",
        "escaped%00",
        "escaped%00.json",
        "%252e%252e%252fescaped",
        "%c0%ae%c0%ae%2fescaped",
        ".escaped",
        "escaped.json%2F..",
        "~escaped",
    ],
)
@pytest.mark.parametrize("method", ["PUT", "POST", "GET"])
def test_traversing_names_are_refused_and_write_nothing(
    broker: BrokerProcess, name: str, method: str
) -> None:
    suffix = {"PUT": "", "POST": "/push", "GET": "/stats"}[method]
    body = b'{"jobs": [{"payload": 1}]}' if method == "POST" else b""
    answer = send_raw(broker, request_line(method, f"/v1/queues/{name}{suffix}", body, **JSON))
    assert_raw_refused(answer)


@pytest.mark.parametrize(
    "target",
    [
        "/v1/queues/../escaped",
        "/v1/queues/../../escaped",
        "/v1/queues/./escaped/..",
        "/v1/queues/..\\..\\escaped",
        "/v1/queues/escaped\\..\\..",
        "/v1/queues//escaped",
        "//v1/queues/escaped",
        "/v1/queues/escaped/../../v1/queues/escaped",
    ],
)
def test_raw_dot_segments_and_backslashes_write_nothing(broker: BrokerProcess, target: str) -> None:
    answer = send_raw(broker, request_line("PUT", target))
    assert_raw_refused(answer)


def test_raw_nul_and_non_ascii_bytes_in_the_path_are_refused(broker: BrokerProcess) -> None:
    for target in (b"/v1/queues/a\x00b", b"/v1/queues/caf\xc3\xa9", b"/v1/queues/caf\xe9"):
        request = b"PUT " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        assert_raw_refused(send_raw(broker, request))


# -- numbers ---------------------------------------------------------------------------------

#: Literals no field can hold: out of every range, not finite, or not JSON at all.
BAD_NUMBERS = [b"1e308", b"1e309", b"-1", b"1" + b"0" * 400, b"-1e309", b"NaN", b"Infinity"]
BAD_NUMBERS += [b"-Infinity", b"0x10", b"1_000", b"+1", b"01", b".5", b"1.", b"--1"]
NUMBER_FIELDS = [
    ("claim", b'{"worker": "w", "max": %s}'),
    ("claim", b'{"worker": "w", "lease_seconds": %s}'),
    ("claim", b'{"worker": "w", "wait_seconds": %s}'),
    ("push", b'{"jobs": [{"payload": 1, "delay_seconds": %s}]}'),
    ("push", b'{"jobs": [{"payload": 1, "max_attempts": %s}]}'),
    ("heartbeat", b'{"leases": [{"id": "1", "lease": "x"}], "lease_seconds": %s}'),
    ("nack", b'{"leases": [{"id": "1", "lease": "x", "delay_seconds": %s}]}'),
]
CONFIG_FIELDS = [
    "lease_seconds",
    "max_attempts",
    "retry_delay_seconds",
    "retry_delay_max_seconds",
    "dead_retention",
    "max_payload_bytes",
    "dedup_seconds",
    "max_jobs",
    "max_inline_bytes",
]


@pytest.mark.parametrize(("verb", "template"), NUMBER_FIELDS)
def test_numbers_out_of_range_are_400(
    http: httpx.Client, queue: str, verb: str, template: bytes
) -> None:
    for number in BAD_NUMBERS:
        assert_400(post(http, f"/v1/queues/{queue}/{verb}", template % number), number)
    assert stats(http, queue)["pushed"] == 0


@pytest.mark.parametrize("field", CONFIG_FIELDS)
def test_config_numbers_out_of_range_are_400_and_change_nothing(
    http: httpx.Client, queue: str, field: str
) -> None:
    before = http.put(f"/v1/queues/{queue}").json()["config"]
    for number in [*BAD_NUMBERS, b"true", b'"5"', b"[5]", b"{}"]:
        body = b'{"%s": %s}' % (field.encode(), number)
        assert_400(http.put(f"/v1/queues/{queue}", content=body, headers=JSON), body)
    assert http.put(f"/v1/queues/{queue}").json()["config"] == before


@pytest.mark.parametrize(
    "limit", ["1e308", "1" + "0" * 400, "-1", "0", "NaN", "inf", "1.5", "", "0x10", "1001"]
)
def test_jobs_limit_out_of_range_is_400(http: httpx.Client, queue: str, limit: str) -> None:
    response = http.get(f"/v1/queues/{queue}/jobs", params={"limit": limit})
    assert_error(response, 400, "invalid_request", "limit")


def test_integer_fields_take_integral_floats_and_refuse_fractions_naming_the_field(
    http: httpx.Client, queue: str, module_brokers: BrokerFactory
) -> None:
    """JSON Schema's integer is a number with no fraction, so ``3.0`` and ``3e0`` are
    integers (JavaScript, SQS and Cloud Tasks clients write whole numbers that way);
    ``1.5`` is not, and the answer names the field."""
    config = b'{"max_jobs": 50.0, "lease_seconds": 3e1, "max_inline_bytes": 65536.0}'
    response = http.put(f"/v1/queues/{queue}", content=config, headers=JSON)
    assert response.status_code == 200, response.text
    shown = response.json()["config"]
    assert (shown["max_jobs"], shown["lease_seconds"], shown["max_inline_bytes"]) == (50, 30, 65536)
    body = b'{"jobs": [{"payload": 1.0, "max_attempts": 3.0}, {"payload": 2, "max_attempts": 2}]}'
    response = post(http, f"/v1/queues/{queue}/push", body)
    assert response.status_code == 200, response.text
    response = post(http, f"/v1/queues/{queue}/claim", b'{"worker": "w", "max": 2.0}')
    assert response.status_code == 200, response.text
    assert [job["attempt"] for job in response.json()["jobs"]] == [1, 1]
    doc = json.loads((module_brokers.root_dir() / f"{queue}.json").read_bytes())
    # Stored as the integers they are; a payload's own 1.0 is kept as written.
    assert [job["max_attempts"] for job in doc["jobs"]] == [3, 2]
    assert (
        doc["config"]["max_jobs"] == 50
        and b'"payload":1.0' in json.dumps(doc["jobs"][0], separators=(",", ":")).encode()
    )

    for verb, template, field in (
        ("push", b'{"jobs": [{"payload": 1, "max_attempts": %s}]}', "max_attempts"),
        ("claim", b'{"worker": "w", "max": %s}', "max"),
    ):
        for number in (b"1.5", b"2.000001", b"1e-3"):
            assert_400(post(http, f"/v1/queues/{queue}/{verb}", template % number), number, field)
    for field in ("max_jobs", "lease_seconds", "dead_retention", "max_inline_bytes"):
        body = b'{"%s": 2048.5}' % field.encode()
        answer = http.put(f"/v1/queues/{queue}", content=body, headers=JSON)
        message = assert_400(answer, body, field)
        assert "integer" in message, message
    assert stats(http, queue)["pushed"] == 2


def test_payload_bytes_in_the_file_are_bounded_by_max_inline_bytes(
    http: httpx.Client, queue: str
) -> None:
    """``max_jobs`` counts jobs; ``max_inline_bytes`` bounds the bytes their payloads add to
    the file (which every commit rewrites): past it a push is ``429 queue_full`` naming the
    limit and the current size, and acking makes room again."""
    assert http.put(f"/v1/queues/{queue}", json={"max_inline_bytes": 4096}).status_code == 200
    blob = "x" * 998  # 1,000 bytes of JSON
    response = http.post(f"/v1/queues/{queue}/push", json={"jobs": [{"payload": blob}] * 4})
    assert response.status_code == 200, response.text
    response = http.post(f"/v1/queues/{queue}/push", json={"jobs": [{"payload": blob}]})
    message = assert_error(response, 429, "queue_full", "max_inline_bytes of 4096", "4000 bytes")
    assert "spill_payload_bytes" in message  # and what to do about it
    assert stats(http, queue)["pushed"] == 4
    [job] = http.post(f"/v1/queues/{queue}/claim", json={"worker": "w"}).json()["jobs"]
    lease = {"id": job["id"], "lease": job["lease"]}
    ack = http.post(f"/v1/queues/{queue}/ack", json={"leases": [lease]}).json()["results"]
    assert ack[0]["ok"] is True
    response = http.post(f"/v1/queues/{queue}/push", json={"jobs": [{"payload": blob}]})
    assert response.status_code == 200, response.text
    for bad in (1023, 2**30 + 1, 0):
        answer = http.put(f"/v1/queues/{queue}", json={"max_inline_bytes": bad})
        assert_error(answer, 400, "invalid_request", "max_inline_bytes", "1073741824")


def test_payload_numbers_are_kept_as_written(
    http: httpx.Client, queue: str, module_brokers: BrokerFactory
) -> None:
    """A payload is never interpreted: its numbers are stored exactly as sent."""
    payload = b"[1e308, -0.0, 123456789012345678901234567890, 0.10000000000000000555, 1E+2]"
    response = post(http, f"/v1/queues/{queue}/push", b'{"jobs": [{"payload": %s}]}' % payload)
    assert response.status_code == 200, response.text
    assert payload in (module_brokers.root_dir() / f"{queue}.json").read_bytes()
    assert payload in post(http, f"/v1/queues/{queue}/claim", b'{"worker": "w"}').content


# -- wrong types -------------------------------------------------------------------------------

WRONG_TYPES = [
    ("push", b'{"jobs": {"payload": 1}}'),
    ("push", b'{"jobs": "1"}'),
    ("push", b'{"jobs": null}'),
    ("push", b'{"jobs": [1]}'),
    ("push", b'{"jobs": [null]}'),
    ("push", b'{"jobs": [[{"payload": 1}]]}'),
    ("push", b'{"jobs": [{}]}'),
    ("push", b'{"jobs": [{"payload": 1, "key": 5}]}'),
    ("push", b'{"jobs": [{"payload": 1, "key": ""}]}'),
    ("push", b'{"jobs": [{"payload": 1, "key": ["k"]}]}'),
    ("push", b'{"jobs": [{"payload": 1, "delay_seconds": "5"}]}'),
    ("push", b'{"jobs": [{"payload": 1, "max_attempts": true}]}'),
    ("push", b'{"jobs": [{"payload": 1, "max_attempts": 2.5}]}'),
    ("push", b'{"JOBS": [{"payload": 1}]}'),
    ("claim", b'{"worker": 1}'),
    ("claim", b'{"worker": null}'),
    ("claim", b'{"worker": ["w"]}'),
    ("claim", b'{"worker": {"name": "w"}}'),
    ("claim", b'{"worker": true}'),
    ("claim", b'{"worker": "w", "max": "5"}'),
    ("claim", b'{"worker": "w", "max": true}'),
    ("claim", b'{"worker": "w", "max": 1.5}'),
    ("claim", b'{"worker": "w", "max": null}'),
    ("claim", b'{"worker": "w", "wait_seconds": "1"}'),
    ("claim", b'{"worker": "w", "lease_seconds": [30]}'),
    ("claim", b'"w"'),
    ("claim", b"[]"),
    ("claim", b"42"),
    ("claim", b"true"),
    ("heartbeat", b'{"leases": {"id": "1", "lease": "x"}}'),
    ("heartbeat", b'{"leases": [["1", "x"]]}'),
    ("ack", b'{"leases": [{"id": 1, "lease": "x"}]}'),
    ("ack", b'{"leases": [{"id": "1", "lease": 7}]}'),
    ("ack", b'{"leases": [{"id": "1", "lease": null}]}'),
    ("ack", b'{"leases": ["1"]}'),
    ("ack", b'{"leases": [{"id": "", "lease": "x"}]}'),
    ("nack", b'{"leases": [{"id": "1", "lease": "x", "dead": "yes"}]}'),
    ("nack", b'{"leases": [{"id": "1", "lease": "x", "dead": 1}]}'),
    ("nack", b'{"leases": [{"id": "1", "lease": "x", "error": 500}]}'),
    ("dead/redrive", b'{"ids": "1"}'),
    ("dead/redrive", b'{"ids": [1, 2]}'),
    ("dead/redrive", b'{"ids": {"1": true}}'),
    ("dead/purge", b'{"ids": [null]}'),
    ("dead/purge", b"[]"),
    ("dead/purge", b'"all"'),
]


@pytest.mark.parametrize(("verb", "body"), WRONG_TYPES)
def test_wrong_types_are_400(http: httpx.Client, queue: str, verb: str, body: bytes) -> None:
    assert_400(post(http, f"/v1/queues/{queue}/{verb}", body), body)
    assert stats(http, queue)["pushed"] == 0


def test_wrong_types_in_config_are_400(http: httpx.Client, queue: str) -> None:
    for body in (b"[]", b'"x"', b"1", b'{"lease_seconds": "30"}', b'{"LEASE_SECONDS": 30}'):
        assert_400(http.put(f"/v1/queues/{queue}", content=body, headers=JSON), body)


# -- duplicate keys, empty bodies, content types --------------------------------------------


def test_duplicate_keys_last_one_wins_and_payloads_keep_theirs(
    http: httpx.Client, queue: str, module_brokers: BrokerFactory
) -> None:
    """One parser reads every request, so duplicates cannot mean two things to two
    readers; the broker takes the last, as JSON parsers commonly do, and keeps a payload's
    own duplicates verbatim."""
    payload = b'{"a": 1, "a": 2}'
    body = b'{"jobs": [{"payload": 0}], "jobs": [{"payload": %s, "key": "x", "key": "y"}]}'
    response = post(http, f"/v1/queues/{queue}/push", body % payload)
    assert response.status_code == 200, response.text
    assert len(response.json()["ids"]) == 1
    claimed = post(http, f"/v1/queues/{queue}/claim", b'{"worker": "a", "worker": "b"}')
    assert claimed.status_code == 200, claimed.text
    assert payload in claimed.content
    [job] = json.loads((module_brokers.root_dir() / f"{queue}.json").read_bytes())["jobs"]
    assert (job["key"], job["claim"]["worker"]) == ("y", "b")
    assert payload in (module_brokers.root_dir() / f"{queue}.json").read_bytes()


EMPTY_BODIES = [b"", b" ", b"\r\n\t ", b"\x00", b"\xef\xbb\xbf{}", b"null", b"{}", b"0", b'""']


@pytest.mark.parametrize("verb", ["push", "claim", "heartbeat", "ack", "nack"])
def test_empty_and_blank_bodies_are_400(http: httpx.Client, queue: str, verb: str) -> None:
    for body in EMPTY_BODIES:
        assert_400(post(http, f"/v1/queues/{queue}/{verb}", body), body)


@pytest.mark.parametrize("verb", ["dead/redrive", "dead/purge"])
def test_absent_body_means_all_but_a_bad_one_is_400(
    http: httpx.Client, queue: str, verb: str
) -> None:
    for body in (b"", b" \n"):
        assert post(http, f"/v1/queues/{queue}/{verb}", body).status_code == 200
    for body in (b"\x00", b"null", b"0", b'""', b"\xef\xbb\xbf{}"):
        assert_400(post(http, f"/v1/queues/{queue}/{verb}", body), body)


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/octet-stream",
        "application/xml",
        "application/json; charset=latin-1",
        "",
    ],
)
def test_content_type_never_changes_how_a_body_is_read(
    http: httpx.Client, queue: str, content_type: str
) -> None:
    """The body is always read as JSON, whatever it claims to be (Lambda delivers binary
    bodies base64-encoded with their own type); non-JSON is refused, JSON accepted."""
    headers = {"content-type": content_type} if content_type else {}
    for body in (b"jobs=1&payload=2", b"--x\r\nContent-Disposition: form-data\r\n\r\n1\r\n--x--"):
        response = http.post(f"/v1/queues/{queue}/push", content=body, headers=headers)
        assert_error(response, 400, "invalid_request", "JSON")
    response = http.post(
        f"/v1/queues/{queue}/push", content=b'{"jobs": [{"payload": 1}]}', headers=headers
    )
    assert response.status_code == 200, response.text


# -- long headers and paths ----------------------------------------------------------------


def test_long_and_many_headers_are_answered(broker: BrokerProcess, queue: str) -> None:
    for headers in (
        {"X-Long": "a" * 64 * 1024},
        {"Cookie": "c=" + "b" * 256 * 1024},
        {f"X-Many-{i}": "v" for i in range(2000)},
        {"Authorization": "Bearer " + "t" * 100_000},
    ):
        answer = send_raw(broker, request_line("GET", f"/v1/queues/{queue}/stats", **headers))
        if answer.status != 200:  # no token on this broker: headers are inert, or refused
            assert_raw_refused(answer)


@pytest.mark.parametrize("length", [64, 1000, 8000])
def test_long_queue_names_are_400(http: httpx.Client, length: int) -> None:
    assert_error(http.put(f"/v1/queues/{'a' * length}"), 400, "invalid_request", "queue name")


def test_a_path_beyond_the_parsers_limit_is_refused(broker: BrokerProcess) -> None:
    answer = send_raw(broker, request_line("GET", f"/v1/queues/{'a' * 200_000}/stats"))
    assert_raw_refused(answer)


def test_long_query_strings_are_answered(http: httpx.Client, queue: str) -> None:
    response = http.get(f"/v1/queues/{queue}/jobs", params={"x": "y" * 6000, "state": "ready"})
    assert response.status_code == 200, response.text
    many = [("limit", "1")] * 2000
    response = http.get(f"/v1/queues/{queue}/jobs", params=many)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert_error(response, 400, "invalid_request")


# -- batches over their limits ---------------------------------------------------------------


@pytest.mark.parametrize("verb", ["heartbeat", "ack", "nack"])
def test_more_than_1000_leases_is_400_naming_the_limit(
    http: httpx.Client, queue: str, verb: str
) -> None:
    leases = [{"id": str(i), "lease": "x" * 16} for i in range(1001)]
    response = http.post(f"/v1/queues/{queue}/{verb}", json={"leases": leases})
    assert_error(response, 400, "invalid_request", "1000")
    response = http.post(f"/v1/queues/{queue}/{verb}", json={"leases": leases[:1000]})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 1000 and not any(r["ok"] for r in results)


def test_more_than_1000_jobs_and_100000_ids_are_400(http: httpx.Client, queue: str) -> None:
    jobs = [{"payload": i} for i in range(1001)]
    assert_error(
        http.post(f"/v1/queues/{queue}/push", json={"jobs": jobs}), 400, "invalid_request", "1000"
    )
    ids = [str(i) for i in range(100_001)]
    for verb in ("dead/redrive", "dead/purge"):
        response = http.post(f"/v1/queues/{queue}/{verb}", json={"ids": ids})
        assert_error(response, 400, "invalid_request", "100000")
    assert stats(http, queue)["pushed"] == 0


def test_oversized_fields_are_400_naming_the_limit(http: httpx.Client, queue: str) -> None:
    cases = [
        ("push", {"jobs": [{"payload": 1, "key": "k" * 257}]}, "256"),
        ("claim", {"worker": "w" * 129}, "128"),
        ("ack", {"leases": [{"id": "1" * 33, "lease": "x"}]}, "32"),
        ("ack", {"leases": [{"id": "1", "lease": "x" * 65}]}, "64"),
    ]
    for verb, body, limit in cases:
        response = http.post(f"/v1/queues/{queue}/{verb}", json=body)
        assert_error(response, 400, "invalid_request", limit)


# -- broken HTTP framing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /v1/queues/q/push HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
        b"POST /v1/queues/q/push HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}",
        b"POST /v1/queues/q/push HTTP/1.1\r\nHost: x\r\nContent-Length: 1"
        + b"0" * 30
        + b"\r\n\r\n",
        b"POST /v1/queues/q/push HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /v1/queues/q/push HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nabc\r\n0\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS ClientHello
        b"GET /v1/queues HTTP/9.9\r\nHost: x\r\n\r\n",
        b"G\x00T /v1/queues HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["cl-text", "cl-negative", "cl-huge", "te-and-cl", "bad-chunk", "tls", "version", "nul"],
)
def test_broken_framing_is_refused_without_a_trace(
    broker: BrokerProcess, request_bytes: bytes
) -> None:
    assert_raw_refused(send_raw(broker, request_bytes))
    with broker.client() as http:  # and the broker goes on serving
        assert http.get("/healthz").status_code == 200
    assert "Traceback" not in broker.log()
