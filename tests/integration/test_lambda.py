"""The AWS Lambda entry point (``obque.broker.aws``) with real parts (SPEC §5, §7, §9, §10).

Two ways in, both against real S3 servers:

* Function URL events (payload format 2.0) handed straight to ``build_handler()``'s
  handler, against moto's S3 server and SeaweedFS: every route and every error status.
* The real runtime interface client: each execution environment is its own
  ``python -m awslambdaric obque.broker.aws.handler`` process polling a local Runtime API
  (:mod:`lambda_runtime`), against SeaweedFS with the S3 latency model. Concurrent
  invocations share no memory, so they meet through the intent protocol; the concurrency
  test checks that every operation lands exactly once, in far fewer compare-and-set
  writes of ``queue.json`` than invocations, and that no intent object is left behind.

Last, an engine-level test of what an invocation that gives up leaves behind.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from awslambdaric.lambda_context import LambdaContext

pytest.register_assert_rewrite("broker_proc")

from broker_proc import assert_error  # noqa: E402
from lambda_events import NO_BODY, function_url_event, to_response  # noqa: E402
from lambda_runtime import FUNCTION_ARN, LambdaEnvironments, RuntimeApi  # noqa: E402
from servers import StoreServer, free_ports  # noqa: E402

from obque.broker.aws import build_handler  # noqa: E402
from obque.commit import IntentEngine, IntentSettings, create_queue  # noqa: E402
from obque.core import Conflict, NewJob, Push, StoreUnavailable  # noqa: E402
from obque.store import Backend, Snapshot, Store, open_root  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

HANDLER = "obque.broker.aws.handler"
#: Execution environments in the pool, and concurrent invocations per round. Each is a
#: Python process; on two cores 48 start in ~15 s and a round takes seconds.
ENVIRONMENTS = 48
#: A round must fold at least this many operations into each write of ``queue.json``
#: (measured on 2 shared cores under a load average of 4-40: 12-16 for the rounds after
#: the first, 8-16 for the first; the SPEC's figure for 64 environments is 16).
MIN_OPS_PER_CAS = 8
#: The first round meets environments that have not seen contention yet (see below).
MIN_OPS_PER_CAS_FIRST = 4


def _s3_client(server: StoreServer) -> Any:
    env = server.env
    return boto3.session.Session().client(
        "s3",
        endpoint_url=server.endpoint,
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def _keys(server: StoreServer, prefix: str) -> list[str]:
    listing = _s3_client(server).list_objects_v2(Bucket=server.bucket, Prefix=prefix)
    return [item["Key"] for item in listing.get("Contents", [])]


def _body(response: httpx.Response) -> Any:
    assert response.status_code == 200, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    return response.json()


# -- Function URL events through the handler, in this process ------------------------------


@dataclass
class FunctionUrl:
    """A Lambda handler built from the environment, serving a fresh root on one server."""

    server: StoreServer
    prefix: str  # the root's key prefix in the bucket, ending in "/"
    monkeypatch: pytest.MonkeyPatch
    handler: Callable[[dict[str, Any], Any], dict[str, Any]] | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def root(self) -> str:
        return self.server.uri(self.prefix)

    def build(self, *, token: str | None = None) -> FunctionUrl:
        """(Re)build the handler the way a cold start does: from the environment."""
        self.monkeypatch.setenv("OBQUE_ROOT", self.root)
        if token is None:
            self.monkeypatch.delenv("OBQUE_TOKEN", raising=False)
        else:
            self.monkeypatch.setenv("OBQUE_TOKEN", token)
        self.handler = build_handler()
        return self

    def create(self, name: str = "queue", **config: object) -> None:
        create_queue(open_root(self.root).queue(name), name, config)

    def key(self, name: str = "queue") -> str:
        return f"{self.prefix}{name}.json"

    def call(self, method: str, path: str, json_body: Any = NO_BODY, **kw: Any) -> httpx.Response:
        assert self.handler is not None
        event = function_url_event(method, path, json_body, **kw)
        deadline_ms = int((time.time() + 30) * 1000)
        context = LambdaContext(str(uuid.uuid4()), None, None, deadline_ms, FUNCTION_ARN)
        answer = self.handler(event, context)
        self.calls.append(answer)
        return to_response(event, answer)


@pytest.fixture
def event_loop_for_mangum() -> Iterator[asyncio.AbstractEventLoop]:
    # mangum runs each request on asyncio.get_event_loop(); a Lambda environment's main
    # thread has one for its life, a test gets a fresh one and closes it after.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield loop
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
        asyncio.set_event_loop(None)


@pytest.fixture(params=["moto", "seaweedfs"])
def s3(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> StoreServer:
    server: StoreServer = request.getfixturevalue(f"{request.param}_server")
    server.apply(monkeypatch)
    return server


@pytest.fixture
def fn(
    s3: StoreServer, monkeypatch: pytest.MonkeyPatch, event_loop_for_mangum: object
) -> FunctionUrl:
    return FunctionUrl(s3, f"lambda-{uuid.uuid4().hex[:10]}/", monkeypatch).build()


def test_create_push_claim_heartbeat_ack_nack(fn: FunctionUrl) -> None:
    created = fn.call("PUT", "/v1/queues/jobs", {"lease_seconds": 60})
    assert created.status_code == 201, created.text
    assert created.json()["config"]["lease_seconds"] == 60
    again = fn.call("PUT", "/v1/queues/jobs")
    assert again.status_code == 200, again.text
    assert {q["name"] for q in _body(fn.call("GET", "/v1/queues"))["queues"]} == {"jobs"}

    pushed = _body(
        fn.call(
            "POST",
            "/v1/queues/jobs/push",
            {
                "jobs": [
                    {"payload": {"n": 1}, "key": "upload-1"},
                    {"payload": {"n": 2}},
                    {"payload": {"n": 3}, "delay_seconds": 600},
                ]
            },
        )
    )
    first, second, delayed = pushed["ids"]
    assert len(set(pushed["ids"])) == 3 and pushed["duplicates"] == []
    duplicate = _body(
        fn.call(
            "POST", "/v1/queues/jobs/push", {"jobs": [{"payload": {"n": 1}, "key": "upload-1"}]}
        )
    )
    assert duplicate["ids"] == [first] and duplicate["duplicates"] == [first]

    stats = _body(fn.call("GET", "/v1/queues/jobs/stats"))
    assert (stats["ready"], stats["delayed"], stats["claimed"], stats["pushed"]) == (2, 1, 0, 3)
    ready = _body(fn.call("GET", "/v1/queues/jobs/jobs", query={"state": "ready", "limit": "1"}))
    assert [(j["id"], j["payload"], j["key"]) for j in ready["jobs"]] == [
        (first, {"n": 1}, "upload-1")
    ]
    listed = _body(fn.call("GET", "/v1/queues/jobs/jobs", query="state=delayed"))["jobs"]
    assert [j["id"] for j in listed] == [delayed]

    claimed = _body(fn.call("POST", "/v1/queues/jobs/claim", {"worker": "w1", "max": 2}))["jobs"]
    assert [(j["id"], j["payload"], j["attempt"]) for j in claimed] == [
        (first, {"n": 1}, 1),
        (second, {"n": 2}, 1),
    ]
    now_ms = time.time() * 1000
    assert all(now_ms + 50_000 < j["lease_expires_ms"] <= now_ms + 61_000 for j in claimed)
    leases = [{"id": j["id"], "lease": j["lease"]} for j in claimed]

    beat = _body(
        fn.call(
            "POST",
            "/v1/queues/jobs/heartbeat",
            {"leases": [*leases, {"id": first, "lease": "not-the-lease"}], "lease_seconds": 300},
        )
    )["results"]
    assert [r["ok"] for r in beat] == [True, True, False]
    assert beat[2] == {"id": first, "ok": False, "error": "lease_lost"}
    assert all(r["lease_expires_ms"] > now_ms + 250_000 for r in beat[:2])

    acked = _body(fn.call("POST", "/v1/queues/jobs/ack", {"leases": leases[:1]}))["results"]
    assert acked == [{"id": first, "ok": True}]
    stale = _body(fn.call("POST", "/v1/queues/jobs/ack", {"leases": leases[:1]}))["results"]
    assert stale == [{"id": first, "ok": False, "error": "lease_lost"}]

    nack = {"leases": [{**leases[1], "delay_seconds": 0, "error": "boom"}]}
    assert _body(fn.call("POST", "/v1/queues/jobs/nack", nack))["results"] == [
        {"id": second, "ok": True}
    ]
    retry = _body(fn.call("POST", "/v1/queues/jobs/claim", {"worker": "w2"}))["jobs"]
    assert [(j["id"], j["attempt"]) for j in retry] == [(second, 2)]
    done = _body(
        fn.call(
            "POST", "/v1/queues/jobs/ack", {"leases": [{"id": second, "lease": retry[0]["lease"]}]}
        )
    )
    assert done["results"] == [{"id": second, "ok": True}]

    stats = _body(fn.call("GET", "/v1/queues/jobs/stats"))
    assert (stats["ready"], stats["delayed"], stats["claimed"]) == (0, 1, 0)
    assert (stats["pushed"], stats["acked"], stats["nacked"]) == (3, 2, 1)
    assert _body(fn.call("POST", "/v1/queues/jobs/claim", {"worker": "w3"})) == {"jobs": []}
    assert all(a["headers"]["content-type"] == "application/json" for a in fn.calls)


def test_dead_letters_list_redrive_and_purge(fn: FunctionUrl) -> None:
    fn.create("dl")
    ids = _body(
        fn.call("POST", "/v1/queues/dl/push", {"jobs": [{"payload": i} for i in range(3)]})
    )["ids"]
    claimed = _body(fn.call("POST", "/v1/queues/dl/claim", {"worker": "w", "max": 3}))["jobs"]
    nacks = [{"id": j["id"], "lease": j["lease"], "dead": True, "error": "bad"} for j in claimed]
    results = _body(fn.call("POST", "/v1/queues/dl/nack", {"leases": nacks}))["results"]
    assert all(r["ok"] for r in results), results

    dead = _body(fn.call("GET", "/v1/queues/dl/jobs", query={"state": "dead"}))["jobs"]
    assert sorted(j["id"] for j in dead) == sorted(ids)
    assert {(j["state"], j["last_error"]) for j in dead} == {("dead", "bad")}
    assert _body(fn.call("GET", "/v1/queues/dl/stats"))["dead"] == 3

    assert _body(fn.call("POST", "/v1/queues/dl/dead/redrive", {"ids": [ids[0]]})) == {
        "redriven": 1
    }
    again = _body(fn.call("POST", "/v1/queues/dl/claim", {"worker": "w"}))["jobs"]
    assert [(j["id"], j["payload"], j["attempt"]) for j in again] == [(ids[0], 0, 1)]
    assert _body(fn.call("POST", "/v1/queues/dl/dead/purge", {"ids": [ids[1]]})) == {"purged": 1}
    assert _body(fn.call("POST", "/v1/queues/dl/dead/purge")) == {"purged": 1}  # all: no body
    assert _body(fn.call("POST", "/v1/queues/dl/dead/redrive")) == {"redriven": 0}
    stats = _body(fn.call("GET", "/v1/queues/dl/stats"))
    assert (stats["dead"], stats["ready"], stats["claimed"]) == (0, 0, 1)


def test_base64_encoded_bodies(fn: FunctionUrl) -> None:
    """Lambda base64-encodes bodies it considers binary; the handler must decode them."""
    fn.create()
    payload = {"name": "vidéo ✓ 動画", "bytes": list(range(5))}
    push = fn.call(
        "POST",
        "/v1/queues/queue/push",
        body=json.dumps({"jobs": [{"payload": payload}]}, ensure_ascii=False),
        base64_body=True,
        headers={"content-type": "application/octet-stream"},
    )
    [job_id] = _body(push)["ids"]
    claimed = _body(
        fn.call("POST", "/v1/queues/queue/claim", body=b'{"worker": "w"}', base64_body=True)
    )["jobs"]
    assert [(j["id"], j["payload"]) for j in claimed] == [(job_id, payload)]
    ack = json.dumps({"leases": [{"id": job_id, "lease": claimed[0]["lease"]}]}).encode()
    answer = fn.call("POST", "/v1/queues/queue/ack", body=ack, base64_body=True)
    assert _body(answer)["results"] == [{"id": job_id, "ok": True}]
    # The answer itself is JSON text, which a Function URL passes through unencoded.
    assert fn.calls[-1]["isBase64Encoded"] is False
    assert fn.calls[0]["body"].encode().decode("utf-8")  # plain text, not base64


@pytest.mark.parametrize(
    ("path", "body", "mentions"),
    [
        ("push", b'{"jobs": [', ("not valid JSON",)),
        ("push", b"", ("empty",)),
        ("push", b"[1, 2]", ("invalid request body",)),
        ("push", b'{"jobs": [{"payload": 1}], "extra": 1}', ("extra",)),
        ("push", b'{"jobs": []}', ("jobs",)),
        ("push", b'{"jobs": [{"payload": "\xff"}]}', ("UTF-8",)),
        ("push", json.dumps({"jobs": [{"payload": 1}] * 1001}).encode(), ("1000",)),
        ("push", b'{"jobs": [{"payload": 1, "delay_seconds": -1}]}', ("delay_seconds",)),
        ("claim", b'{"worker": "w", "max": 101}', ("100", "max")),
        ("claim", b'{"worker": "w", "wait_seconds": 21}', ("20", "wait_seconds")),
        ("claim", b'{"worker": "w", "lease_seconds": 0}', ("lease_seconds",)),
        ("claim", b'{"max": 1}', ("worker",)),
        ("ack", b'{"leases": [{"id": "1"}]}', ("lease",)),
        ("nack", b'{"leases": [{"id": "1", "lease": "x", "dead": "yes"}]}', ("dead",)),
    ],
)
def test_malformed_requests_answer_400(
    fn: FunctionUrl, path: str, body: bytes, mentions: tuple[str, ...]
) -> None:
    fn.create()
    answer = fn.call("POST", f"/v1/queues/queue/{path}", body=body, base64_body=True)
    assert_error(answer, 400, "invalid_request", *mentions)


def test_bad_names_and_queries_answer_400(fn: FunctionUrl) -> None:
    fn.create()
    assert_error(fn.call("GET", "/v1/queues/Bad_Name/stats"), 400, "invalid_request", "Bad_Name")
    for query in ("limit=0", "limit=1001", "state=bogus", "limit=ten"):
        answer = fn.call("GET", "/v1/queues/queue/jobs", query=query)
        assert_error(answer, 400, "invalid_request", query.partition("=")[0])


def test_unknown_queue_answers_404(fn: FunctionUrl) -> None:
    for method, path in [("GET", "stats"), ("POST", "push"), ("POST", "dead/purge")]:
        body = {"jobs": [{"payload": 1}]} if path == "push" else NO_BODY
        answer = fn.call(method, f"/v1/queues/missing/{path}", body)
        assert_error(answer, 404, "queue_not_found", "missing")
    assert _keys(fn.server, fn.prefix) == []  # asking created nothing


def test_payload_and_body_limits_answer_413(fn: FunctionUrl) -> None:
    fn.create(max_payload_bytes=1024)
    answer = fn.call("POST", "/v1/queues/queue/push", {"jobs": [{"payload": "x" * 2000}]})
    assert_error(answer, 413, "payload_too_large", "1024")
    huge = b'{"jobs": [{"payload": "' + b"x" * (16 * 1024 * 1024) + b'"}]}'
    assert_error(
        fn.call("POST", "/v1/queues/queue/push", body=huge), 413, "payload_too_large", "16777216"
    )
    assert _body(fn.call("GET", "/v1/queues/queue/stats"))["pushed"] == 0


def test_full_queue_answers_429(fn: FunctionUrl) -> None:
    fn.create(max_jobs=2)
    assert (
        len(_body(fn.call("POST", "/v1/queues/queue/push", {"jobs": [{"payload": 1}] * 2}))["ids"])
        == 2
    )
    answer = fn.call("POST", "/v1/queues/queue/push", {"jobs": [{"payload": 3}]})
    assert_error(answer, 429, "queue_full", "2")
    assert _body(fn.call("GET", "/v1/queues/queue/stats"))["pushed"] == 2


def test_corrupt_queue_file_answers_500_and_is_left_untouched(fn: FunctionUrl) -> None:
    client = _s3_client(fn.server)
    garbage = b'{"format": "obque/1", "jobs": [ truncated'
    client.put_object(Bucket=fn.server.bucket, Key=fn.key(), Body=garbage)
    before = client.head_object(Bucket=fn.server.bucket, Key=fn.key())["ETag"]
    for method, path, body in [
        ("POST", "push", {"jobs": [{"payload": 1}]}),
        ("POST", "claim", {"worker": "w"}),
        ("GET", "stats", NO_BODY),
        ("POST", "dead/purge", NO_BODY),
    ]:
        answer = fn.call(method, f"/v1/queues/queue/{path}", body)
        assert_error(answer, 500, "queue_file_corrupt", fn.key())
    stored = client.get_object(Bucket=fn.server.bucket, Key=fn.key())
    assert stored["Body"].read() == garbage
    assert stored["ETag"] == before
    assert _keys(fn.server, fn.prefix) == [fn.key()]  # no intents, no spill


def test_bearer_token_answers_401(fn: FunctionUrl) -> None:
    fn.create()
    fn.build(token="s3cret-token")
    for token in (None, "wrong", "s3cret-token-but-longer"):
        answer = fn.call("GET", "/v1/queues/queue/stats", token=token)
        assert_error(answer, 401, "unauthorized")
        assert answer.headers["www-authenticate"] == "Bearer"
    wrong_scheme = fn.call(
        "GET", "/v1/queues/queue/stats", headers={"authorization": "Basic s3cret-token"}
    )
    assert_error(wrong_scheme, 401, "unauthorized")
    assert _body(fn.call("GET", "/v1/queues/queue/stats", token="s3cret-token"))["pushed"] == 0
    assert _body(fn.call("GET", "/healthz")) == {"ok": True}  # liveness stays open


# -- the real runtime interface client, one process per execution environment ---------------


@dataclass
class Pool:
    """Execution environments serving one root, invoked through the Runtime API."""

    api: RuntimeApi
    environments: LambdaEnvironments
    server: StoreServer
    prefix: str
    http: httpx.Client

    def create(self, name: str, **config: object) -> None:
        with self.server.applied():
            create_queue(open_root(self.server.uri(self.prefix)).queue(name), name, config)

    def invoke(self, method: str, path: str, json_body: Any = NO_BODY, **kw: Any) -> httpx.Response:
        """One Function URL request through the invoke route, as Lambda's front end does."""
        event = function_url_event(method, path, json_body, **kw)
        answer = self.http.post(self.api.invoke_url, json=event)
        assert answer.status_code == 200, answer.text
        assert "x-amz-function-error" not in answer.headers, answer.text
        return to_response(event, answer.json())

    def invoke_all(self, method: str, path: str, bodies: list[Any]) -> list[httpx.Response]:
        """Invoke concurrently, one request per body, and wait for every answer.

        The events are queued at once (not through this process's HTTP threads), so
        they reach the environments as a burst does rather than at the rate this
        process's threads can send them.
        """
        events = [function_url_event(method, path, body) for body in bodies]
        invocations = [self.api.submit(event) for event in events]
        answers = []
        for event, invocation in zip(events, invocations, strict=True):
            assert invocation.done.wait(invocation.timeout_s + 5), "an invocation got no answer"
            assert not invocation.error, invocation.payload()
            answers.append(to_response(event, invocation.payload()))
        return answers

    def stats(self, name: str) -> dict[str, Any]:
        stats: dict[str, Any] = _body(self.invoke("GET", f"/v1/queues/{name}/stats"))
        return stats

    def intents(self, name: str) -> list[str]:
        return _keys(self.server, f"{self.prefix}{name}.json.d/intents/")


@pytest.fixture(scope="module")
def pool(seaweedfs_server: StoreServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    prefix = f"lambda-rt-{uuid.uuid4().hex[:10]}/"
    env = seaweedfs_server.child_env()
    env["OBQUE_ROOT"] = f"{seaweedfs_server.uri(prefix)}?latency=s3"
    env.pop("OBQUE_TOKEN", None)
    log_dir = tmp_path_factory.mktemp("lambda-environments")
    limits = httpx.Limits(max_connections=ENVIRONMENTS * 2)
    with RuntimeApi() as api, httpx.Client(timeout=60, limits=limits, trust_env=False) as http:
        environments = LambdaEnvironments(api, HANDLER, env, log_dir)
        with environments.running(ENVIRONMENTS):
            yield Pool(api, environments, seaweedfs_server, prefix, http)


def test_runtime_client_serves_function_url_events(pool: Pool) -> None:
    created = pool.invoke("PUT", "/v1/queues/rt", {"max_attempts": 3})
    assert created.status_code == 201, created.text
    [job_id] = _body(pool.invoke("POST", "/v1/queues/rt/push", {"jobs": [{"payload": "é"}]}))["ids"]
    claim = pool.invoke("POST", "/v1/queues/rt/claim", body=b'{"worker":"w"}', base64_body=True)
    [job] = _body(claim)["jobs"]
    assert (job["id"], job["payload"]) == (job_id, "é")
    acked = _body(
        pool.invoke(
            "POST", "/v1/queues/rt/ack", {"leases": [{"id": job_id, "lease": job["lease"]}]}
        )
    )
    assert acked["results"] == [{"id": job_id, "ok": True}]
    stats = pool.stats("rt")
    assert (stats["pushed"], stats["acked"], stats["ready"]) == (1, 1, 0)
    # An API error is an ordinary answer of the function, not a function error.
    assert_error(pool.invoke("GET", "/v1/queues/nope/stats"), 404, "queue_not_found", "nope")
    assert_error(pool.invoke("POST", "/v1/queues/rt/push", body="{"), 400, "invalid_request")


def test_runtime_client_reports_an_unhandled_error(pool: Pool) -> None:
    """An event mangum cannot route fails the invocation through ``/error``; the
    environment survives and serves the next one."""
    answer = pool.http.post(pool.api.invoke_url, json={"not": "a function url event"})
    assert answer.status_code == 200
    assert answer.headers["x-amz-function-error"] == "Unhandled"
    error = answer.json()
    assert error["errorType"] == "RuntimeError" and error["errorMessage"], error
    pool.environments.wait_idle()
    assert not pool.environments.exited()
    assert _body(pool.invoke("GET", "/healthz")) == {"ok": True}


def test_runtime_client_deadline_bounds_a_long_poll(pool: Pool) -> None:
    """The handler reads its budget from the runtime's deadline header: a 20 s long-poll
    claim in a function with a 4 s timeout answers (empty) before Lambda would kill it."""
    pool.create("deadline")
    event = function_url_event(
        "POST", "/v1/queues/deadline/claim", {"worker": "w", "wait_seconds": 20}
    )
    started = time.monotonic()
    invocation = pool.api.invoke(event, timeout_s=4)
    elapsed = time.monotonic() - started
    assert not invocation.error, invocation.payload()
    assert _body(to_response(event, invocation.payload())) == {"jobs": []}
    assert elapsed < 4, f"answered after {elapsed:.1f}s, past the 4 s deadline"


@pytest.mark.parametrize(
    ("root", "error_type", "named"),
    [
        # A root obque cannot open.
        ("ftp://bucket/", "InvalidStoreURI", "ftp"),
        # No root at all: the cold start names the setting, instead of a function
        # silently serving file://./.obque/ on its instance's disk.
        (None, "ConfigurationError", "OBQUE_ROOT is not set"),
    ],
    ids=["bad-root", "missing-root"],
)
def test_runtime_client_reports_an_init_error(
    moto_server: StoreServer, tmp_path: Path, root: str | None, error_type: str, named: str
) -> None:
    """A handler that cannot be built posts ``/runtime/init/error`` and the process exits."""
    env = {k: v for k, v in moto_server.child_env().items() if k != "OBQUE_ROOT"}
    if root is not None:
        env["OBQUE_ROOT"] = root
    with RuntimeApi() as api:
        environments = LambdaEnvironments(api, HANDLER, env, tmp_path)
        try:
            [environment] = environments.start(1)
            assert environment.popen.wait(60) == 1, environments.failure_report([environment])
        finally:
            environments.stop()
    [report] = api.init_errors
    assert report["errorType"] == error_type, report
    assert named in report["errorMessage"], report


def test_concurrent_invocations_group_commit(pool: Pool, record_property: Any) -> None:
    """SPEC §5 and §11: concurrent single-operation invocations of separate environments
    land exactly once each, in far fewer writes of ``queue.json`` than invocations."""
    pool.create("burst")
    n = ENVIRONMENTS
    ratios: dict[str, float] = {}
    # Warm every environment with a read (no commit), as under steady load.
    pool.environments.wait_idle()
    warm = pool.invoke_all("GET", "/v1/queues/burst/stats", [NO_BODY] * n)
    assert [a.status_code for a in warm] == [200] * n, [a.text for a in warm]

    def round_of(label: str, kind: str, bodies: list[Any], most_commits: int) -> list[Any]:
        pool.environments.wait_idle()
        before = pool.stats("burst")
        started = time.monotonic()
        answers = pool.invoke_all("POST", f"/v1/queues/burst/{kind}", bodies)
        elapsed = time.monotonic() - started
        failed = [(a.status_code, a.text) for a in answers if a.status_code != 200]
        assert not failed, f"{len(failed)} of {n} {label} invocations failed: {failed[:5]}"
        commits = pool.stats("burst")["commits"] - before["commits"]
        ratios[label] = round(n / commits, 1) if commits else float("inf")
        record_property(f"{label} commits", commits)
        print(f"\n{label}: {n} invocations, {commits} writes of queue.json in {elapsed:.1f}s")
        assert 1 <= commits <= most_commits, (
            f"{n} {label} invocations took {commits} writes of queue.json "
            f"({ratios[label]} operations per write); at most {most_commits} expected"
        )
        assert pool.intents("burst") == [], f"intent objects left behind after {label}"
        return [a.json() for a in answers]

    def pushes(first: int) -> list[Any]:
        return [{"jobs": [{"payload": {"n": i}}]} for i in range(first, first + n)]

    # The first burst meets environments that have not seen contention: they commit
    # directly until their compare-and-sets lose, then switch to intents. How many land
    # directly depends on how spread out the burst arrives (here: on two shared cores),
    # so this round only has to show grouping; the ones after it are held to the figure.
    first = round_of("first push", "push", pushes(0), n // MIN_OPS_PER_CAS_FIRST)
    second = round_of("push", "push", pushes(n), n // MIN_OPS_PER_CAS)
    bodies = first + second
    ids = [body["ids"][0] for body in bodies]
    assert all(len(body["ids"]) == 1 and body["duplicates"] == [] for body in bodies)
    assert len(set(ids)) == 2 * n, "two pushes got the same id"
    stats = pool.stats("burst")
    assert (stats["pushed"], stats["ready"]) == (2 * n, 2 * n)
    queued = _body(pool.invoke("GET", "/v1/queues/burst/jobs", query={"limit": "1000"}))["jobs"]
    assert sorted(j["payload"]["n"] for j in queued) == list(range(2 * n))

    claims = [{"worker": f"w{i}", "max": 1} for i in range(n)]
    claimed = round_of("claim", "claim", claims, n // MIN_OPS_PER_CAS)
    jobs = [job for body in claimed for job in body["jobs"]]
    assert [len(body["jobs"]) for body in claimed] == [1] * n, "a claim got no job or several"
    # FIFO: the burst's claims take the oldest jobs, each exactly once.
    assert sorted(j["id"] for j in jobs) == sorted(ids[:n]), "a job was handed out twice"

    acks = [{"leases": [{"id": j["id"], "lease": j["lease"]}]} for j in jobs]
    acked = round_of("ack", "ack", acks, n // MIN_OPS_PER_CAS)
    assert [body["results"] for body in acked] == [[{"id": j["id"], "ok": True}] for j in jobs]
    stats = pool.stats("burst")
    assert (stats["pushed"], stats["acked"], stats["ready"]) == (2 * n, n, n)
    assert (stats["claimed"], stats["dead"]) == (0, 0)
    record_property("operations per write", ratios)
    assert not pool.environments.exited(), pool.environments.failure_report()


# -- an invocation that gave up ------------------------------------------------------------


class _Scripted(Backend):
    """A real backend whose writes of the queue file a test can refuse or hold back."""

    def __init__(self, inner: Backend, queue_key: str, refuse: int, hold: threading.Event) -> None:
        self.inner = inner
        self.queue_key = queue_key
        self.refuse = refuse  # lose this many compare-and-sets of the queue file
        self.hold = hold  # then let the next one through only once this is set

    def get(self, key: str) -> Snapshot | None:
        return self.inner.get(key)

    def put(self, key: str, data: bytes, expected: str | None) -> str:
        if key == self.queue_key:
            if self.refuse > 0:
                self.refuse -= 1
                raise Conflict(f"{self.uri(key)}: scripted conflict")
            assert self.hold.wait(30), "the held write was never released"
        return self.inner.put(key, data, expected)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def list(self, prefix: str) -> list[str]:
        return self.inner.list(prefix)

    def uri(self, key: str) -> str:
        return self.inner.uri(key)


class _LosesWritesOf(_Scripted):
    """Loses every compare-and-set of the queue file whose bytes contain ``marker``: the
    invocation can never fold its own intent, but can revoke it."""

    def __init__(self, inner: Backend, queue_key: str, marker: bytes) -> None:
        super().__init__(inner, queue_key, 0, threading.Event())
        self.marker = marker

    def put(self, key: str, data: bytes, expected: str | None) -> str:
        if key == self.queue_key and self.marker in data:
            raise Conflict(f"{self.uri(key)}: scripted conflict")
        return self.inner.put(key, data, expected)


def test_an_intent_whose_caller_gave_up_is_never_applied(
    moto_server: StoreServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A timed-out caller's intent is never applied. Invocation A loses every
    compare-and-set that would apply its push, so it gives up and revokes its intent;
    invocation B folded A's intent (read while still valid) but its write is held until A
    has answered. The revocation and B's fold meet at the queue file's compare-and-set:
    A's lands first, so B's loses, re-reads and skips A's intent. A told 503 "revoked"
    must not have its operation applied."""
    moto_server.apply(monkeypatch)
    root = open_root(moto_server.uri(f"gave-up-{uuid.uuid4().hex[:10]}/"))
    queue = root.queue("queue")
    create_queue(queue, "queue")
    a_gave_up = threading.Event()
    settings = IntentSettings(window_s=0.05)
    a_budget = time.monotonic() + 3.0
    a = IntentEngine(
        Store(_LosesWritesOf(root.backend, queue.key, b'"from-a"'), queue.key),
        settings=settings,
        deadline=lambda: a_budget,
    )
    b = IntentEngine(
        Store(_Scripted(root.backend, queue.key, 2, a_gave_up), queue.key), settings=settings
    )
    outcome: dict[str, object] = {}

    def run_a() -> None:
        try:
            outcome["a"] = a.run(Push.of([NewJob.of("from-a")]))
        except StoreUnavailable as exc:
            outcome["a"] = exc
        finally:
            a_gave_up.set()

    thread = threading.Thread(target=run_a)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not (intents := queue.children("intents/")):
            assert time.monotonic() < deadline and thread.is_alive(), outcome
            time.sleep(0.01)
        [a_intent] = intents
        b.run(Push.of([NewJob.of("from-b")]))
    finally:
        thread.join(30)
        a.close()
        b.close()
    state = b.read_state()
    a_applied = f"i:{a_intent.removeprefix('intents/').removesuffix('.json')}" in state.applied
    payloads = sorted(bytes(job.payload).decode() for job in state.jobs.values())
    assert isinstance(outcome["a"], StoreUnavailable), outcome  # A answered 503 ...
    assert "was revoked" in str(outcome["a"]), outcome
    assert payloads == ['"from-b"'], (a_applied, payloads)  # ... so its push must not land


def test_store_outage_answers_503_with_retry_after(
    fn: FunctionUrl, monkeypatch: pytest.MonkeyPatch
) -> None:
    fn.create()
    assert _body(fn.call("POST", "/v1/queues/queue/push", {"jobs": [{"payload": "before"}]}))
    # A cold start while S3 cannot be reached (nothing listens at its endpoint any more).
    closed_port = free_ports(1)[0]
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{closed_port}")
    fn.build()
    for method, path, body in [
        ("POST", "push", {"jobs": [{"payload": "during"}]}),
        ("POST", "claim", {"worker": "w"}),
        ("GET", "stats", NO_BODY),
    ]:
        answer = fn.call(method, f"/v1/queues/queue/{path}", body)
        assert_error(answer, 503, "store_unavailable", fn.key())
        assert int(answer.headers["retry-after"]) >= 1, answer.headers
    assert_error(fn.call("GET", "/v1/queues"), 503, "store_unavailable")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", fn.server.endpoint)
    fn.build()  # S3 is back: the next environment serves again
    assert _body(fn.call("POST", "/v1/queues/queue/push", {"jobs": [{"payload": "after"}]}))
    stats = _body(fn.call("GET", "/v1/queues/queue/stats"))
    assert (stats["pushed"], stats["ready"]) == (2, 2), stats
