"""The client's pure parts: building requests (``calls``, ``wire``), reading answers and
error bodies, and the retry policy (``retry``).

A few tests drive ``Client`` / ``AsyncClient`` over ``httpx.MockTransport`` to show what
reaches the wire: that invalid calls never do, and that a retried push repeats its key.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from obque.client import AsyncClient, BrokerUnreachable, Client, PushItem, RetryPolicy, calls
from obque.client.auth import NoAuth
from obque.client.calls import ClaimedJob, ItemOutcome, error_from_body
from obque.client.resolve import HttpEndpoint
from obque.client.retry import (
    MAX_RETRY_SECONDS,
    Attempts,
    GatewayError,
    needs_new_broker,
    retryable,
)
from obque.client.wire import ANSWER_SLACK, build_request, read_answer, read_timeout
from obque.commit import create_queue
from obque.core import (
    AmbiguousWrite,
    InvalidRequest,
    NackItem,
    NotLeader,
    ObqueError,
    PayloadTooLarge,
    QueueFileCorrupt,
    QueueFull,
    QueueNotFound,
    StoreForbidden,
    StoreUnavailable,
    Unauthorized,
)
from obque.core.limits import MAX_PUSH_BATCH, RETRY_KEY_PREFIX, RETRY_KEY_SECONDS
from obque.store import open_store

ENDPOINT = HttpEndpoint("http://broker.test:8080", "jobs")
URL = "http://broker.test:8080/v1/queues/jobs/push"


def sent_body(call: calls.Call[Any]) -> Any:
    """The JSON a broker would receive for ``call``."""
    request = build_request(ENDPOINT, call, NoAuth())
    return json.loads(request.body) if request.body else None


def error_body(code: str, message: str = "it went wrong", **extra: Any) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}, **extra}).encode()


# -- push bodies ---------------------------------------------------------------------------


def test_push_without_key_carries_a_retry_key() -> None:
    call = calls.push_call([PushItem({"video": "a.mp4"})])
    (job,) = sent_body(call)["jobs"]
    assert job["payload"] == {"video": "a.mp4"}
    assert job["key"].startswith(RETRY_KEY_PREFIX)
    assert len(job["key"]) > 8
    assert set(job) == {"payload", "key"}
    # The in-process path (same Call) pushes under the very same key.
    assert call.op is not None
    assert call.op.jobs[0].key == job["key"]  # type: ignore[union-attr]


def test_retry_keys_are_fresh_per_job_and_per_call() -> None:
    first = sent_body(calls.push_call([PushItem(i) for i in range(50)]))["jobs"]
    second = sent_body(calls.push_call([PushItem(0)]))["jobs"]
    keys = [j["key"] for j in first + second]
    assert len(set(keys)) == len(keys)
    assert all(k.startswith(RETRY_KEY_PREFIX) for k in keys)


def test_push_keeps_a_given_key_and_its_options() -> None:
    call = calls.push_call([PushItem({"n": 1}, key="upload-a", delay_seconds=2.5, max_attempts=3)])
    assert sent_body(call) == {
        "jobs": [{"payload": {"n": 1}, "key": "upload-a", "delay_seconds": 2.5, "max_attempts": 3}]
    }
    assert call.op is not None
    new = call.op.jobs[0]  # type: ignore[union-attr]
    assert (new.key, new.delay_ms, new.max_attempts) == ("upload-a", 2500, 3)


def test_push_request_shape() -> None:
    call = calls.push_call([PushItem("text"), PushItem([1, 2], key="k")])
    request = build_request(ENDPOINT, call, NoAuth())
    assert (request.method, request.url) == ("POST", URL)
    assert request.headers == {"Content-Type": "application/json"}
    jobs = json.loads(request.body)["jobs"]
    assert [j["payload"] for j in jobs] == ["text", [1, 2]]
    assert jobs[1]["key"] == "k"
    assert read_answer(call, 200, b'{"ids":["7","8"],"duplicates":[],"revision":3}', URL) == [
        "7",
        "8",
    ]


def test_push_batch_limits() -> None:
    assert len(
        sent_body(calls.push_call([PushItem(i) for i in range(MAX_PUSH_BATCH)]))["jobs"]
    ) == (MAX_PUSH_BATCH)
    with pytest.raises(InvalidRequest, match="1000"):
        calls.push_call([PushItem(i) for i in range(MAX_PUSH_BATCH + 1)])
    with pytest.raises(InvalidRequest, match="1 to 1000"):
        calls.push_call([])


# -- validation before anything is sent ----------------------------------------------------


INVALID_CALLS: dict[str, tuple[Callable[[], object], str]] = {
    "claim max=101": (lambda: calls.claim_call("w", max=101), "max"),
    "claim max=0": (lambda: calls.claim_call("w", max=0), "max"),
    "claim wait=21": (lambda: calls.claim_call("w", wait_seconds=21), "wait_seconds"),
    "claim wait=-1": (lambda: calls.claim_call("w", wait_seconds=-1), "wait_seconds"),
    "claim lease=0": (lambda: calls.claim_call("w", lease_seconds=0), "lease_seconds"),
    "claim no worker": (lambda: calls.claim_call(""), "worker"),
    "push object()": (lambda: calls.push_call([PushItem(object())]), "JSON"),
    "push nested object()": (lambda: calls.push_call([PushItem({"a": [object()]})]), "JSON"),
    "push empty key": (lambda: calls.push_call([PushItem(1, key="")]), "key"),
    "push long key": (lambda: calls.push_call([PushItem(1, key="k" * 257)]), "key"),
    "push delay<0": (lambda: calls.push_call([PushItem(1, delay_seconds=-1)]), "delay_seconds"),
    "push attempts=0": (lambda: calls.push_call([PushItem(1, max_attempts=0)]), "max_attempts"),
    "jobs bad state": (lambda: calls.jobs_call("running", 10, lambda: 0), "state"),
    "nack bad delay": (
        lambda: calls.nack_call([NackItem.of("1", "lease", -5, None, False)]),
        "delay",
    ),
    "configure unknown": (lambda: calls.configure_call({"colour": "blue"}), "colour"),
}


@pytest.mark.parametrize("build", INVALID_CALLS.values(), ids=list(INVALID_CALLS))
def test_invalid_calls_are_refused_while_building(
    build: tuple[Callable[[], object], str],
) -> None:
    make, mention = build
    with pytest.raises(InvalidRequest) as raised:
        make()
    assert mention in str(raised.value)


class Recorder:
    """An ``httpx.MockTransport`` handler answering from a script, recording requests."""

    def __init__(self, *answers: tuple[int, bytes]) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        #: Called with each request before it is answered (to change the world meanwhile).
        self.hook: Callable[[httpx.Request], None] | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.hook is not None:
            self.hook(request)
        status, body = self.answers.pop(0) if self.answers else (500, b"script ran out")
        return httpx.Response(status, content=body, headers={"content-type": "application/json"})

    def bodies(self) -> list[Any]:
        return [json.loads(r.content) if r.content else None for r in self.requests]


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    """Clients built in the test send to a scripted transport instead of the network."""
    for name in ("OBQUE_URL", "OBQUE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    handler = Recorder()
    transport = httpx.MockTransport(handler)
    real_client, real_async = httpx.Client, httpx.AsyncClient
    monkeypatch.setattr(httpx, "Client", lambda **kw: real_client(transport=transport, **kw))
    monkeypatch.setattr(httpx, "AsyncClient", lambda **kw: real_async(transport=transport, **kw))
    yield handler


FAST = RetryPolicy(attempts=4, base_seconds=0.001, cap_seconds=0.002)

CLIENT_MISUSES: dict[str, Callable[[Client], object]] = {
    "claim max=101": lambda q: q.claim("w", max=101),
    "claim wait=21": lambda q: q.claim("w", wait=21),
    "push bad payload": lambda q: q.push(object()),
    "push_many 1001": lambda q: q.push_many(range(1001)),
    "push bad delay": lambda q: q.push(1, delay=-1),
    "list bad state": lambda q: q.list_jobs("running"),
    "configure unknown": lambda q: q.configure(colour="blue"),
}


@pytest.mark.parametrize("misuse", CLIENT_MISUSES.values(), ids=list(CLIENT_MISUSES))
def test_client_validates_before_sending(
    recorder: Recorder, misuse: Callable[[Client], object]
) -> None:
    with (
        Client("http://broker.test:8080", queue="jobs", retry=FAST) as q,
        pytest.raises(InvalidRequest),
    ):
        misuse(q)
    assert recorder.requests == []


def test_async_client_validates_before_sending(recorder: Recorder) -> None:
    async def main() -> None:
        async with AsyncClient("http://broker.test:8080", queue="jobs", retry=FAST) as q:
            with pytest.raises(InvalidRequest, match="max"):
                await q.claim("w", max=101)
            with pytest.raises(InvalidRequest, match="wait_seconds"):
                await q.claim("w", wait=21)
            with pytest.raises(InvalidRequest, match="JSON"):
                await q.push(object())

    asyncio.run(main())
    assert recorder.requests == []


def test_a_retried_push_repeats_its_key(recorder: Recorder) -> None:
    recorder.answers = [
        (503, error_body("store_unavailable", "injected 503")),
        (502, b"<html>Bad Gateway</html>"),
        (200, b'{"ids":["41"],"duplicates":[],"revision":9}'),
    ]
    with Client("http://broker.test:8080", queue="jobs", retry=FAST) as q:
        assert q.push({"n": 1}) == "41"
    bodies = recorder.bodies()
    assert len(bodies) == 3
    assert bodies[0] == bodies[1] == bodies[2]
    assert bodies[0]["jobs"][0]["key"].startswith(RETRY_KEY_PREFIX)
    assert {str(r.url) for r in recorder.requests} == {URL}


def test_client_gives_up_after_the_policy_and_raises_the_last_error(recorder: Recorder) -> None:
    recorder.answers = [(503, error_body("store_unavailable", f"down {i}")) for i in range(10)]
    with (
        Client("http://broker.test:8080", queue="jobs", retry=FAST) as q,
        pytest.raises(StoreUnavailable, match="down 3"),
    ):
        q.push(1)
    assert len(recorder.requests) == FAST.attempts


def test_client_does_not_retry_a_request_error(recorder: Recorder) -> None:
    recorder.answers = [(429, error_body("queue_full", "queue 'jobs' holds 10 jobs"))]
    with (
        Client("http://broker.test:8080", queue="jobs", retry=FAST) as q,
        pytest.raises(QueueFull, match="holds 10"),
    ):
        q.push(1)
    assert len(recorder.requests) == 1


def test_async_client_retries_like_the_sync_one(recorder: Recorder) -> None:
    recorder.answers = [
        (503, error_body("not_leader", "moved", broker="http://broker.test:8080")),
        (200, b'{"ids":["5","6"],"duplicates":[],"revision":2}'),
    ]

    async def main() -> list[str]:
        async with AsyncClient("http://broker.test:8080", queue="jobs", retry=FAST) as q:
            return await q.push_many([1, 2])

    assert asyncio.run(main()) == ["5", "6"]
    first, second = recorder.bodies()
    assert first == second


def advertise(path: Path, url: str) -> None:
    """Make the queue file at ``path`` name ``url`` as its broker (as a takeover would)."""
    data = json.loads(path.read_text())
    epoch = (data.get("broker") or {}).get("epoch", 0) + 1
    data["broker"] = {"url": url, "mode": "process", "id": f"b-{epoch}", "epoch": epoch}
    data["revision"] += 1
    path.write_text(json.dumps(data))


@pytest.fixture
def moving_queue(tmp_path: Path) -> tuple[Path, str]:
    """A file queue advertising http://old.test; returns its path and URI."""
    path = tmp_path / "jobs.json"
    create_queue(open_store(path.as_uri()), "jobs")
    advertise(path, "http://old.test")
    return path, path.as_uri()


def move_after(path: Path, requests: int) -> Callable[[httpx.Request], None]:
    """A hook that advertises http://new.test once ``requests`` requests were answered."""
    seen = itertools.count(1)

    def hook(request: httpx.Request) -> None:
        if next(seen) == requests:
            advertise(path, "http://new.test")

    return hook


def hosts(recorder: Recorder) -> list[str]:
    return [r.url.host for r in recorder.requests]


PUSHED = (200, b'{"ids":["1"],"duplicates":[],"revision":3}')


def test_a_proxy_5xx_re_reads_the_queue_file(
    recorder: Recorder, moving_queue: tuple[Path, str]
) -> None:
    path, uri = moving_queue
    recorder.hook = move_after(path, 1)
    recorder.answers = [(502, b"<html>502 Bad Gateway</html>"), PUSHED]
    with Client(uri, retry=FAST) as q:
        assert q.push(1) == "1"
    assert hosts(recorder) == ["old.test", "new.test"]


def test_store_unavailable_re_reads_the_queue_file_once_it_lasts(
    recorder: Recorder, moving_queue: tuple[Path, str]
) -> None:
    path, uri = moving_queue
    recorder.hook = move_after(path, 1)  # the broker moved right after the first answer
    unavailable = (503, error_body("store_unavailable", "the store timed out"))
    recorder.answers = [unavailable, unavailable, PUSHED]
    with Client(uri, retry=FAST) as q:
        assert q.push(1) == "1"
    # The first 503 came from a live broker: asked again. The second in a row: re-read.
    assert hosts(recorder) == ["old.test", "old.test", "new.test"]


# -- the other calls -------------------------------------------------------------------------


def test_claim_request_and_answer() -> None:
    call = calls.claim_call("w1", max=5, lease_seconds=30, wait_seconds=20)
    assert sent_body(call) == {"worker": "w1", "max": 5, "wait_seconds": 20, "lease_seconds": 30}
    assert call.path == "/claim"
    assert read_timeout(call) == 20 + ANSWER_SLACK
    answer = {
        "jobs": [
            {"id": "3", "payload": {"a": 1}, "attempt": 2, "lease": "L", "lease_expires_ms": 9}
        ]
    }
    assert read_answer(call, 200, json.dumps(answer).encode(), URL) == [
        ClaimedJob("3", {"a": 1}, 2, "L", 9)
    ]
    no_wait = calls.claim_call("w1")
    assert sent_body(no_wait) == {"worker": "w1", "max": 1, "wait_seconds": 0.0}
    assert read_timeout(no_wait) == ANSWER_SLACK


def test_settle_requests_and_answers() -> None:
    results = json.dumps(
        {
            "results": [
                {"id": "1", "ok": True, "lease_expires_ms": 5},
                {"id": "2", "ok": False, "error": "lease_lost"},
            ]
        }
    ).encode()
    expected = [ItemOutcome("1", True, None, 5), ItemOutcome("2", False, "lease_lost", None)]

    beat = calls.heartbeat_call([("1", "a"), ("2", "b")], lease_seconds=60)
    assert sent_body(beat) == {
        "leases": [{"id": "1", "lease": "a"}, {"id": "2", "lease": "b"}],
        "lease_seconds": 60,
    }
    assert read_answer(beat, 200, results, URL) == expected

    ack = calls.ack_call([("1", "a")])
    assert (ack.method, ack.path, sent_body(ack)) == (
        "POST",
        "/ack",
        {"leases": [{"id": "1", "lease": "a"}]},
    )
    assert read_answer(ack, 200, results, URL) == expected

    nack = calls.nack_call(
        [
            NackItem.of("1", "a", None, None, False),
            NackItem.of("2", "b", 1.5, "boom", False),
            NackItem.of("3", "c", 0, None, True),
        ]
    )
    assert sent_body(nack) == {
        "leases": [
            {"id": "1", "lease": "a"},
            {"id": "2", "lease": "b", "delay_seconds": 1.5, "error": "boom"},
            {"id": "3", "lease": "c", "delay_seconds": 0, "dead": True},
        ]
    }


def test_inspection_and_admin_requests() -> None:
    jobs = calls.jobs_call("dead", 5, lambda: 0)
    request = build_request(ENDPOINT, jobs, NoAuth())
    assert (request.method, request.body) == ("GET", b"")
    assert request.url == "http://broker.test:8080/v1/queues/jobs/jobs?state=dead&limit=5"
    assert read_answer(jobs, 200, b'{"jobs":[{"id":"1"}]}', request.url) == [{"id": "1"}]

    stats = calls.stats_call(lambda: 0)
    request = build_request(ENDPOINT, stats, NoAuth())
    assert (request.method, request.url) == ("GET", "http://broker.test:8080/v1/queues/jobs/stats")
    assert read_answer(stats, 200, b'{"ready":1}', request.url) == {"ready": 1}

    assert sent_body(calls.redrive_call()) == {}
    assert sent_body(calls.redrive_call(["1", "2"])) == {"ids": ["1", "2"]}
    assert read_answer(calls.redrive_call(), 200, b'{"redriven":4}', URL) == 4
    assert sent_body(calls.purge_call()) == {}
    assert sent_body(calls.purge_call(iter(["9"]))) == {"ids": ["9"]}
    assert read_answer(calls.purge_call(), 200, b'{"purged":2}', URL) == 2

    configure = calls.configure_call({"lease_seconds": 60})
    request = build_request(ENDPOINT, configure, NoAuth())
    assert (request.method, request.url) == ("PUT", "http://broker.test:8080/v1/queues/jobs")
    assert json.loads(request.body) == {"lease_seconds": 60}
    answer = b'{"name":"jobs","config":{"lease_seconds":60},"revision":4}'
    assert read_answer(configure, 200, answer, request.url) == {"lease_seconds": 60}


def test_auth_headers_join_the_request() -> None:
    class Stamp:
        def __init__(self) -> None:
            self.seen: list[tuple[str, str, bytes]] = []

        def headers(self, method: str, url: str, body: bytes) -> dict[str, str]:
            self.seen.append((method, url, body))
            return {"Authorization": "Stamp 1"}

    stamp = Stamp()
    call = calls.push_call([PushItem(1, key="k")])
    request = build_request(ENDPOINT, call, stamp)
    assert request.headers == {"Content-Type": "application/json", "Authorization": "Stamp 1"}
    # The signer sees exactly what is sent.
    assert stamp.seen == [("POST", request.url, request.body)]


# -- error answers -------------------------------------------------------------------------

ERROR_CODES: list[tuple[int, str, type[ObqueError]]] = [
    (400, "invalid_request", InvalidRequest),
    (401, "unauthorized", Unauthorized),
    (404, "queue_not_found", QueueNotFound),
    (413, "payload_too_large", PayloadTooLarge),
    (429, "queue_full", QueueFull),
    (500, "queue_file_corrupt", QueueFileCorrupt),
    (500, "store_forbidden", StoreForbidden),
    (503, "store_unavailable", StoreUnavailable),
    (503, "not_leader", NotLeader),
]


@pytest.mark.parametrize(
    ("status", "code", "kind"), ERROR_CODES, ids=[c for _, c, _ in ERROR_CODES]
)
def test_error_codes_map_to_their_exceptions(
    status: int, code: str, kind: type[ObqueError]
) -> None:
    message = f"{code}: the message names the object"
    error = error_from_body(status, error_body(code, message), URL)
    assert type(error) is kind
    assert error.message == message
    assert error.code == code
    with pytest.raises(kind, match="names the object"):
        read_answer(calls.stats_call(lambda: 0), status, error_body(code, message), URL)


def test_not_leader_carries_the_broker_url() -> None:
    body = error_body("not_leader", "served by http://b2:9000", broker="http://b2:9000")
    error = error_from_body(503, body, URL)
    assert isinstance(error, NotLeader)
    assert error.broker_url == "http://b2:9000"
    assert retryable(error) and needs_new_broker(error)
    # Without the field (an older broker): still NotLeader, still retried after re-reading.
    bare = error_from_body(503, error_body("not_leader"), URL)
    assert isinstance(bare, NotLeader) and bare.broker_url is None


def test_an_unknown_code_is_still_an_obque_error() -> None:
    error = error_from_body(418, error_body("teapot", "short and stout"), URL)
    assert type(error) is ObqueError
    assert error.message == "short and stout"
    assert not retryable(error)


PROXY_ANSWERS: list[tuple[int, bytes, type[ObqueError], bool, bool]] = [
    (502, b"<html><body>502 Bad Gateway</body></html>", GatewayError, True, True),
    (503, b"Service Unavailable", GatewayError, True, True),
    (504, b"", GatewayError, True, True),
    (500, b'{"message":"Internal Server Error"}', GatewayError, True, True),
    (429, b"Rate exceeded", StoreUnavailable, True, False),
    (403, b'{"Message":"Forbidden"}', Unauthorized, False, False),  # Function URL, AWS_IAM
    (403, b"<html>Your client does not have permission</html>", Unauthorized, False, False),
    (401, b"Unauthorized", Unauthorized, False, False),
    (404, b"Not Found", InvalidRequest, False, False),
    (400, b'"not an object"', InvalidRequest, False, False),
]


@pytest.mark.parametrize(
    ("status", "body", "kind", "retried", "reread"),
    PROXY_ANSWERS,
    ids=[f"{s}-{i}" for i, (s, *_) in enumerate(PROXY_ANSWERS)],
)
def test_proxy_answers_that_are_not_broker_errors(
    status: int, body: bytes, kind: type[ObqueError], retried: bool, reread: bool
) -> None:
    """A 5xx without obque's error body came from a proxy or gateway: the broker behind
    it may be gone, so the queue file is re-read at once (a throttling 429 is not)."""
    error = error_from_body(status, body, URL)
    assert type(error) is kind
    assert str(status) in error.message
    assert URL in error.message
    assert retryable(error) is retried
    assert needs_new_broker(error) is reread


def test_a_long_proxy_page_is_cut_short() -> None:
    error = error_from_body(502, b"x" * 5000, URL)
    assert error.message.count("x") == 200


# -- the retry policy --------------------------------------------------------------------------


def test_delays_grow_exponentially_and_are_capped() -> None:
    policy = RetryPolicy(attempts=50, base_seconds=0.05, cap_seconds=5.0)
    for attempt in range(40):
        ceiling = min(5.0, 0.05 * 2**attempt)
        for _ in range(20):
            assert ceiling / 2 <= policy.delay(attempt) <= ceiling
    assert max(policy.delay(1000) for _ in range(200)) <= 5.0


def test_delays_are_jittered() -> None:
    random.seed(1234)
    policy = RetryPolicy()
    samples = [policy.delay(3) for _ in range(50)]
    assert len(set(samples)) == len(samples)
    assert max(samples) - min(samples) > 0.05  # spread over [0.2, 0.4]


def test_retry_after_is_a_floor() -> None:
    policy = RetryPolicy(base_seconds=0.01, cap_seconds=0.1)
    assert policy.delay(0, retry_after=2.0) == 2.0
    assert policy.delay(0, retry_after=None) <= 0.01


@pytest.mark.parametrize(
    "error",
    [
        InvalidRequest("bad"),
        PayloadTooLarge("big"),
        QueueFull("full"),
        QueueNotFound("none"),
        QueueFileCorrupt("corrupt"),
        Unauthorized("who"),
        ObqueError("something"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_attempts_reraise_what_is_not_retryable(error: ObqueError) -> None:
    attempts = Attempts(RetryPolicy(attempts=10))
    with pytest.raises(type(error)) as raised:
        attempts.failed(error)
    assert raised.value is error
    assert attempts.count == 0


def test_attempts_stop_after_the_policy() -> None:
    policy = RetryPolicy(attempts=3, base_seconds=0.01, cap_seconds=1.0)
    attempts = Attempts(policy)
    errors = [StoreUnavailable(f"try {i}") for i in range(3)]
    delays = [attempts.failed(errors[0]), attempts.failed(errors[1])]
    assert 0.005 <= delays[0] <= 0.01 and 0.01 <= delays[1] <= 0.02
    with pytest.raises(StoreUnavailable) as raised:
        attempts.failed(errors[2])
    assert raised.value is errors[2]


def test_one_attempt_means_no_retry() -> None:
    with pytest.raises(BrokerUnreachable):
        Attempts(RetryPolicy(attempts=1)).failed(BrokerUnreachable("gone"))


@pytest.mark.parametrize(
    ("error", "refresh"),
    [
        (NotLeader("moved", broker_url="http://b2"), True),
        (BrokerUnreachable("connection refused"), True),
        (GatewayError("502 from a load balancer"), True),
        (StoreUnavailable("503"), False),
        (AmbiguousWrite("lost answer"), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_attempts_re_resolve_at_once_when_the_broker_may_have_moved(
    error: ObqueError, refresh: bool
) -> None:
    attempts = Attempts(RetryPolicy())
    assert attempts.refresh is False
    attempts.failed(error)
    assert attempts.refresh is refresh


def test_store_unavailable_re_resolves_from_the_second_in_a_row() -> None:
    """A broker's own 503 store_unavailable says it is alive: the first is retried on the
    same broker; when the trouble lasts, the queue file is read again in case a takeover
    happened meanwhile."""
    attempts = Attempts(RetryPolicy())
    attempts.failed(StoreUnavailable("store down 1"))
    assert not attempts.refresh
    attempts.failed(StoreUnavailable("store down 2"))
    assert attempts.refresh
    attempts.failed(StoreUnavailable("store down 3"))
    assert attempts.refresh
    # Another kind of failure breaks the streak.
    attempts.failed(AmbiguousWrite("lost answer"))
    assert not attempts.refresh
    attempts.failed(StoreUnavailable("store down 4"))
    assert not attempts.refresh


def test_refresh_follows_the_latest_failure() -> None:
    attempts = Attempts(RetryPolicy())
    attempts.failed(BrokerUnreachable("refused"))
    assert attempts.refresh
    attempts.failed(StoreUnavailable("503"))
    assert not attempts.refresh


# -- the retry budget is time -------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_failing(attempts: Attempts, clock: FakeClock, wanted: float, error: ObqueError) -> int:
    """Drive the retry loop against a broker that always fails, each attempt taking the
    whole time it is allowed; returns the number of attempts made."""
    made = 0
    while True:
        timeout = attempts.timeout(wanted)
        assert clock.now + timeout <= attempts.deadline + 1e-9  # never waits past the budget
        clock.now += timeout
        made += 1
        try:
            clock.now += attempts.failed(error)
        except ObqueError as raised:
            assert raised is error
            return made


def test_the_default_budget_rides_out_a_broker_failover() -> None:
    """A standby takes a dead broker's queues once its heartbeat is --broker-timeout (10 s)
    old, and the heartbeat is up to a third of that older at the crash: 10-13 s of refused
    connections. The default policy must still be trying then, with an attempt due soon."""
    clock = FakeClock()
    started = clock.now
    attempts = Attempts(RetryPolicy(), clock=clock)
    tried: list[float] = []
    while clock.now - started < 13.0:
        tried.append(clock.now - started)
        clock.now += 0.001  # refused at once
        clock.now += attempts.failed(BrokerUnreachable("refused"))
    assert attempts.refresh  # each retry re-reads the queue file
    # The gap between tries is capped (2 s), so the takeover is noticed within it.
    assert max(b - a for a, b in itertools.pairwise(tried)) <= RetryPolicy().cap_seconds + 0.01
    assert RetryPolicy().total_seconds >= 13.0 + 2 * RetryPolicy().cap_seconds


@pytest.mark.parametrize("wanted", [0.5, 5.0, ANSWER_SLACK])
def test_a_call_never_outlives_its_budget(wanted: float) -> None:
    clock = FakeClock()
    started = clock.now
    policy = RetryPolicy()
    attempts = Attempts(policy, clock=clock)
    made = run_failing(attempts, clock, wanted, BrokerUnreachable("timed out"))
    # Retried while time is left; an attempt that took the whole budget is the last.
    assert made >= (2 if wanted < policy.total_seconds else 1)
    assert clock.now - started <= policy.total_seconds + 1e-9


def test_a_long_poll_gets_its_wait_on_top_of_the_budget() -> None:
    clock = FakeClock()
    started = clock.now
    attempts = Attempts(RetryPolicy(total_seconds=10), wait_seconds=20, clock=clock)
    # The first attempt may wait the whole poll plus the answer slack.
    assert attempts.timeout(20 + ANSWER_SLACK) == 30
    made = run_failing(attempts, clock, 20 + ANSWER_SLACK, StoreUnavailable("503"))
    assert made == 1  # no room left for another 20 s poll
    assert clock.now - started <= 30 + 1e-9
    # Retried early enough, a poll still gets at least its wait.
    clock = FakeClock()
    attempts = Attempts(RetryPolicy(total_seconds=10), wait_seconds=20, clock=clock)
    clock.now += 0.01
    clock.now += attempts.failed(BrokerUnreachable("refused"))
    assert attempts.timeout(20 + ANSWER_SLACK) >= 21


def test_a_retried_push_is_deduplicated_for_longer_than_any_budget() -> None:
    """Client retry keys deduplicate for RETRY_KEY_SECONDS after their job left the
    queue. A push committed by its first attempt (answer lost) and committed again by
    the budget's last attempt must still meet its key: the budget is at most half that
    window, the rest covering the broker's own time and clock skew between brokers."""
    assert MAX_RETRY_SECONDS * 2 <= RETRY_KEY_SECONDS
    assert RetryPolicy().total_seconds <= MAX_RETRY_SECONDS
    with pytest.raises(InvalidRequest, match=str(RETRY_KEY_SECONDS)):
        RetryPolicy(total_seconds=MAX_RETRY_SECONDS + 1)
    # Pushes never long-poll, so their whole retry fits in total_seconds (see above).
    assert calls.push_call([PushItem(1)]).wait_seconds == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"total_seconds": 0},
        {"total_seconds": -1},
        {"attempts": 0},
        {"base_seconds": 0},
        {"base_seconds": 3, "cap_seconds": 1},
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_nonsense_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(InvalidRequest, match="RetryPolicy"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_payload_round_trips_through_the_wire_encoding() -> None:
    payload = {"unicode": "é✓", "nested": [1, 2.5, None, True], "big": 2**60}
    call = calls.push_call([PushItem(payload)])
    request = build_request(ENDPOINT, call, NoAuth())
    assert msgspec.json.decode(request.body)["jobs"][0]["payload"] == payload
