"""Each security claim of docs/security.md, proven against real ``obque broker`` processes
(and, where the claim is about the code rather than its answers, against the app
in-process).

Claims: the bearer token guards every route but ``/healthz`` and the dashboard page; it is
compared in constant time; neither it nor lease tokens nor payloads reach the logs; a
broker refuses to listen beyond loopback without a token unless told ``--insecure``; lease
tokens are 96 random bits per claim, never listed, and a stale or guessing worker cannot
settle someone else's claim; payloads are stored and returned verbatim, never interpreted;
a broker without a token refuses what a web page could make a browser send (cross-site
requests, foreign ``Origin``s and, on loopback, foreign ``Host`` names: DNS rebinding).
"""

from __future__ import annotations

import ast
import asyncio
import base64
import inspect
import itertools
import json
import os
import re
import signal
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

import obque.broker.auth
from obque.broker import serve
from obque.broker.app import create_app
from obque.broker.settings import BrokerSettings
from obque.core import InvalidRequest

# broker_proc is also loaded as a plugin (its fixtures and report hook); have its asserts
# rewritten before the import below, as pytest does for plugins.
pytest.register_assert_rewrite("broker_proc")

from broker_proc import (  # noqa: E402
    BrokerFactory,
    BrokerProcess,
    assert_error,
    attach_logs,
    free_port,
    read_queue_file,
    wait_until,
)

pytest_plugins = ["broker_proc"]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

T = TypeVar("T")
TOKEN = "sec-" + "Zq3vK9xW2mP7rT4nB8cY1dF6hJ0gL5sA"  # 36 characters
LEASE = re.compile(r"[A-Za-z0-9_-]{16}")
_names = itertools.count()


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(module_brokers: BrokerFactory) -> BrokerProcess:
    """A broker with a token (and a queue ``q``), shared by the module."""
    broker = module_brokers.start(module_brokers.root(), token=TOKEN)
    with broker.client() as http:
        assert http.put("/v1/queues/q").status_code == 201
    return broker


@pytest.fixture
def http(
    request: pytest.FixtureRequest, guarded: BrokerProcess, module_brokers: BrokerFactory
) -> Iterator[httpx.Client]:
    attach_logs(request, module_brokers)
    assert guarded.alive(), guarded.log()
    with guarded.client() as client:
        yield client


@pytest.fixture
def anon(guarded: BrokerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=guarded.url, timeout=30) as client:
        yield client


@pytest.fixture
def queue(http: httpx.Client) -> str:
    name = f"sec-{next(_names)}"
    assert http.put(f"/v1/queues/{name}").status_code == 201
    return name


def push(http: httpx.Client, queue: str, *payloads: Any) -> list[str]:
    response = http.post(
        f"/v1/queues/{queue}/push", json={"jobs": [{"payload": p} for p in payloads]}
    )
    assert response.status_code == 200, response.text
    ids: list[str] = response.json()["ids"]
    return ids


def claim(http: httpx.Client, queue: str, worker: str = "w", **fields: Any) -> list[Any]:
    response = http.post(f"/v1/queues/{queue}/claim", json={"worker": worker, **fields})
    assert response.status_code == 200, response.text
    jobs: list[dict[str, Any]] = response.json()["jobs"]
    return jobs


def settle(http: httpx.Client, queue: str, verb: str, *leases: dict[str, Any]) -> list[Any]:
    response = http.post(f"/v1/queues/{queue}/{verb}", json={"leases": list(leases)})
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def in_app(app: Any, script: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    """Run ``script`` against the ASGI app in-process, on one event loop."""

    async def run() -> T:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await script(client)

    try:
        return asyncio.run(run())
    finally:
        app.state.queues.close()


def in_process_app(token: str | None = TOKEN) -> Any:
    return create_app(BrokerSettings(root=f"mem://sec-{uuid.uuid4().hex[:8]}/", token=token))


# -- who may call: the bearer token ----------------------------------------------------------

#: Every route of the API, with a body it accepts (so a 401 cannot be a 400 in disguise).
ROUTES = [
    ("GET", "/v1/queues", None),
    ("PUT", "/v1/queues/q", {}),
    ("PUT", "/v1/queues/brand-new", {}),
    ("POST", "/v1/queues/q/push", {"jobs": [{"payload": 1}]}),
    ("POST", "/v1/queues/q/claim", {"worker": "w"}),
    ("POST", "/v1/queues/q/heartbeat", {"leases": [{"id": "1", "lease": "x"}]}),
    ("POST", "/v1/queues/q/ack", {"leases": [{"id": "1", "lease": "x"}]}),
    ("POST", "/v1/queues/q/nack", {"leases": [{"id": "1", "lease": "x"}]}),
    ("GET", "/v1/queues/q/stats", None),
    ("GET", "/v1/queues/q/jobs", None),
    ("POST", "/v1/queues/q/dead/redrive", {}),
    ("POST", "/v1/queues/q/dead/purge", {}),
    ("GET", "/v1/queues/no-such-queue/stats", None),  # no existence oracle either
    ("GET", "/metrics", None),
    ("GET", "/openapi.json", None),
    ("GET", "/docs", None),
    ("GET", "/no/such/route", None),
]

WRONG_AUTHORIZATIONS = {
    "same-length": "Bearer " + TOKEN[:-1] + ("A" if TOKEN[-1] != "A" else "B"),
    "shorter": "Bearer " + TOKEN[:-1],
    "prefix": "Bearer " + TOKEN[:8],
    "longer": "Bearer " + TOKEN + "x",
    "much-longer": "Bearer " + TOKEN * 50,
    "scheme-only": "Bearer",
    "no-space": "Bearer" + TOKEN,
    "no-scheme": TOKEN,
    "basic": "Basic " + base64.b64encode(f"user:{TOKEN}".encode()).decode(),
    "other-case": "Bearer " + TOKEN.swapcase(),
    "twice": f"Bearer {TOKEN} {TOKEN}",
    "comma": f"Bearer {TOKEN},",
    "unicode": "Bearer " + TOKEN[:-1] + "é",
}


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_every_route_is_401_without_a_token(
    anon: httpx.Client, method: str, path: str, body: Any
) -> None:
    response = anon.request(method, path, json=body)
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "authorization", list(WRONG_AUTHORIZATIONS.values()), ids=list(WRONG_AUTHORIZATIONS)
)
def test_wrong_tokens_are_401(guarded: BrokerProcess, authorization: str) -> None:
    headers = [("Authorization", authorization.encode("utf-8"))]
    with httpx.Client(base_url=guarded.url, timeout=30) as client:
        for method, path, body in ROUTES:
            response = client.request(method, path, json=body, headers=headers)
            assert_error(response, 401, "unauthorized")


def test_the_token_is_accepted_only_in_the_authorization_header(
    anon: httpx.Client, guarded: BrokerProcess
) -> None:
    for params, headers in (
        ({"token": TOKEN}, {}),
        ({"access_token": TOKEN}, {}),
        ({}, {"Cookie": f"token={TOKEN}; obque-token={TOKEN}"}),
        ({}, {"X-Obque-Token": TOKEN}),
        ({}, {"Proxy-Authorization": f"Bearer {TOKEN}"}),
    ):
        response = anon.get("/v1/queues", params=params, headers=headers)
        assert_error(response, 401, "unauthorized")


def test_the_token_opens_every_route(http: httpx.Client, guarded: BrokerProcess) -> None:
    for method, path, body in ROUTES:
        response = http.request(method, path, json=body)
        expected = {"brand-new": 201, "no-such-queue": 404, "no/such": 404}
        status = next((s for part, s in expected.items() if part in path), 200)
        assert response.status_code == status, (method, path, response.text)
    for scheme in ("bearer", "BEARER", "Bearer"):
        with httpx.Client(base_url=guarded.url, timeout=30) as client:
            response = client.get("/v1/queues", headers={"Authorization": f"{scheme} {TOKEN}"})
            assert response.status_code == 200, response.text


def test_healthz_and_the_dashboard_page_are_open_and_say_nothing(anon: httpx.Client) -> None:
    health = anon.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"ok": True})
    page = anon.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # A static page: it fetches data with the token the visitor gives it, and holds none.
    assert TOKEN not in page.text and "sec-" not in page.text
    assert "/v1/queues" in page.text and "Authorization" in page.text


def test_an_unauthenticated_body_is_never_read(guarded: BrokerProcess) -> None:
    """401 comes from the headers alone: an anonymous caller cannot make the broker read
    (or buffer) a body, however large it claims to be."""
    head = (
        f"POST /v1/queues/q/push HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {15 * 1024 * 1024}\r\n\r\n"
    ).encode()
    with socket.create_connection((guarded.host, guarded.port), timeout=20) as sock:
        sock.sendall(head)  # and never the body
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    assert data.startswith(b"HTTP/1.1 401 "), data


# -- how the token is compared -----------------------------------------------------------------


def test_the_token_is_compared_with_hmac_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = obque.broker.auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(obque.broker.auth.hmac, "compare_digest", spy)
    presented = [TOKEN, TOKEN[:-1] + "!", TOKEN[:5], TOKEN + TOKEN, ""]

    async def script(client: httpx.AsyncClient) -> list[int]:
        statuses = []
        for token in presented:
            response = await client.get("/v1/queues", headers={"Authorization": f"Bearer {token}"})
            statuses.append(response.status_code)
        return statuses

    assert in_app(in_process_app(), script) == [200, 401, 401, 401, 401]
    # Every presented token, whatever its length, went through compare_digest against the
    # configured one: the answer never depends on a comparison that stops early.
    assert calls == [(t.encode(), TOKEN.encode()) for t in presented]


def _mentions_a_token(node: ast.AST) -> bool:
    return any(
        (isinstance(n, ast.Name) and n.id in {"token", "header", "presented"})
        or (isinstance(n, ast.Attribute) and n.attr == "token")
        for n in ast.walk(node)
    )


def test_no_broker_module_compares_the_token_with_equality() -> None:
    """Structural: no ``==``, ``!=``, ``in`` or ``startswith`` on the token anywhere in
    the broker package (those stop at the first differing byte)."""
    package = Path(inspect.getfile(obque.broker.auth)).parent
    offenders = []
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            unsafe = isinstance(node, ast.Compare) and any(
                isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn) for op in node.ops
            )
            unsafe = unsafe or (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in {"startswith", "endswith", "find", "index", "count"}
            )
            if unsafe and _mentions_a_token(node):
                offenders.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    # The one comparison allowed looks at the scheme (the first 7 bytes), never the secret.
    assert offenders and all("header[:7].lower() != b'bearer '" in o for o in offenders), offenders
    source = inspect.getsource(obque.broker.auth.token_matches)
    assert "hmac.compare_digest(" in source


# -- no secrets in logs ------------------------------------------------------------------------


def test_no_token_lease_or_payload_reaches_the_logs(brokers: BrokerFactory) -> None:
    broker = brokers.start(brokers.root(), token=TOKEN, extra=["--log-level", "debug"])
    (brokers.root_dir() / "corrupt.json").write_bytes(b"{not json")
    secret_payload = {"password": "hunter2-" + uuid.uuid4().hex}
    leases: list[str] = []
    with httpx.Client(base_url=broker.url, timeout=30) as anon:
        for authorization in WRONG_AUTHORIZATIONS.values():
            anon.get("/v1/queues", headers=[("Authorization", authorization.encode())])
            anon.post("/v1/queues/q/push", json={"jobs": [{"payload": secret_payload}]})
    with broker.client() as http:
        assert http.put("/v1/queues/q").status_code == 201
        push(http, "q", secret_payload, secret_payload, secret_payload)
        jobs = claim(http, "q", max=3)
        leases = [job["lease"] for job in jobs]
        refs = [{"id": job["id"], "lease": job["lease"]} for job in jobs]
        settle(http, "q", "heartbeat", refs[0])
        settle(http, "q", "ack", {"id": refs[0]["id"], "lease": leases[1]})  # wrong lease
        settle(http, "q", "nack", {**refs[1], "error": f"failed with {secret_payload}"})
        settle(http, "q", "ack", refs[2])
        http.post("/v1/queues/q/push", content=b'{"jobs": [', headers={"content-type": "x"})
        assert http.get("/v1/queues/corrupt/stats").status_code == 500
        assert http.get("/metrics").status_code == 200
        for state in ("ready", "claimed", "dead", "delayed"):
            http.get("/v1/queues/q/jobs", params={"state": state})
    assert broker.stop() in (0, -signal.SIGTERM)  # logs flushed: the process has ended
    log = broker.log()
    assert "queue_file_corrupt" in log  # the log did record what went wrong...
    # (every line is JSON but the CLI's banner, so the fields can be searched as fields)
    lines = log.splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert [line for line in lines if not line.startswith("{")] == lines[:1], lines[:3]
    assert any(r["msg"].startswith("queue_file_corrupt") for r in records), records
    assert TOKEN not in log  # ...but no secret
    assert TOKEN[4:20] not in log
    assert not [lease for lease in leases if lease in log]
    assert secret_payload["password"] not in log
    # The token is never written into the queue file (which bucket readers see).
    assert TOKEN not in (brokers.root_dir() / "q.json").read_text()


# -- where a broker may listen -----------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "192.168.0.10", "broker.example"])
def test_a_non_loopback_bind_without_a_token_is_refused(brokers: BrokerFactory, host: str) -> None:
    port = free_port()
    done = brokers.run("broker", "--root", brokers.root(), "--host", host, "--port", str(port))
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"obque: refusing to listen on {host} without a token"), lines
    assert "--token" in lines[0] and "--insecure" in lines[0] and "OBQUE_TOKEN" in lines[0]
    assert done.stdout == ""


def test_an_empty_token_is_no_token(brokers: BrokerFactory) -> None:
    port = str(free_port())
    done = brokers.run(
        "broker", "--root", brokers.root(), "--host", "0.0.0.0", "--port", port, "--token", ""
    )
    assert done.returncode == 2 and "refusing to listen" in done.stderr, done


def test_insecure_allows_a_non_loopback_bind_without_a_token(brokers: BrokerFactory) -> None:
    broker = brokers.start(brokers.root(), host="0.0.0.0", extra=["--insecure"])
    with httpx.Client(base_url=broker.url, timeout=30) as anon:  # and anyone may call it
        assert anon.put("/v1/queues/q").status_code == 201


def test_loopback_binds_need_no_token(brokers: BrokerFactory) -> None:
    broker = brokers.start(brokers.root(), host="localhost")
    with httpx.Client(base_url=broker.url, timeout=30) as anon:
        assert anon.put("/v1/queues/q").status_code == 201


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.1", False),
        ("127.0.0.1.nip.io", False),
        ("localhost.", False),
        ("LOCALHOST", False),
        ("127.1", False),
    ],
)
def test_which_hosts_count_as_loopback(host: str, loopback: bool) -> None:
    """Anything not certainly loopback needs a token: doubt fails closed."""
    assert serve.is_loopback(host) is loopback
    settings = BrokerSettings(root="mem://x/")
    if loopback:
        serve.check_bind(settings, host)
    else:
        with pytest.raises(InvalidRequest, match="refusing to listen"):
            serve.check_bind(settings, host)
    serve.check_bind(BrokerSettings(root="mem://x/", token=TOKEN), host)
    serve.check_bind(settings, host, insecure=True)


# -- lease tokens ------------------------------------------------------------------------------


def test_lease_tokens_are_96_random_bits_per_claim(http: httpx.Client, queue: str) -> None:
    push(http, queue, *range(100))
    push(http, queue, *range(100, 200))
    jobs = claim(http, queue, max=100) + claim(http, queue, max=100)
    leases = [job["lease"] for job in jobs]
    assert len(leases) == 200
    assert all(LEASE.fullmatch(lease) for lease in leases), leases
    raw = [base64.urlsafe_b64decode(lease) for lease in leases]
    assert {len(r) for r in raw} == {12}  # 96 bits
    assert len({r[:6] for r in raw}) == 200  # not even a 48-bit prefix repeats
    ones = sum(bin(byte).count("1") for r in raw for byte in r)
    assert 0.45 < ones / (200 * 96) < 0.55  # 19,200 bits: ~14 standard deviations of room


def test_lease_tokens_come_from_the_os_random_source() -> None:
    app = in_process_app(token=None)

    async def script(client: httpx.AsyncClient) -> Any:
        assert (await client.put("/v1/queues/q")).status_code == 201
        return app.state.queues.known()["q"]

    engine = in_app(app, script)
    assert engine.committer.entropy is os.urandom


def test_a_reclaimed_job_gets_a_new_lease(http: httpx.Client, queue: str) -> None:
    push(http, queue, "again")
    [first] = claim(http, queue, "a", lease_seconds=1)
    second = wait_until(
        lambda: claim(http, queue, "b"), timeout=15, what="the lease to lapse and the job return"
    )[0]
    assert second["id"] == first["id"] and second["lease"] != first["lease"]


def test_lease_tokens_are_never_listed(http: httpx.Client, queue: str) -> None:
    push(http, queue, *range(5))
    jobs = claim(http, queue, max=3, lease_seconds=600)
    leases = [job["lease"] for job in jobs]
    refs = [{"id": job["id"], "lease": job["lease"]} for job in jobs]
    answers = [
        http.post(f"/v1/queues/{queue}/heartbeat", json={"leases": refs[:1]}),
        http.post(f"/v1/queues/{queue}/nack", json={"leases": [{**refs[1], "dead": True}]}),
        http.get(f"/v1/queues/{queue}/stats"),
        http.get("/v1/queues"),
        http.get("/metrics"),
        http.get("/openapi.json"),
        *(
            http.get(f"/v1/queues/{queue}/jobs", params={"state": state, "limit": 1000})
            for state in ("ready", "delayed", "claimed", "dead")
        ),
    ]
    listed = answers[-2].json()["jobs"]  # claimed
    assert {job["id"] for job in listed} == {refs[0]["id"], refs[2]["id"]}
    assert all("lease" not in job for job in listed)
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert not [lease for lease in leases if lease in answer.text], answer.text
    schema = answers[5].json()["components"]["schemas"]["JobView"]["properties"]
    assert "lease" not in schema


def test_a_stale_or_guessing_worker_cannot_settle_someone_elses_claim(
    http: httpx.Client, queue: str
) -> None:
    [job_id] = push(http, queue, "contested")
    [stale] = claim(http, queue, "a", lease_seconds=1)
    [other_id] = push(http, queue, "other")
    by_id: dict[str, Any] = {}

    def b_holds_the_job() -> bool:
        by_id.update((job["id"], job) for job in claim(http, queue, "b", lease_seconds=600))
        return job_id in by_id

    wait_until(b_holds_the_job, timeout=15, what="worker b to claim the lapsed job")
    assert stale["id"] == job_id and set(by_id) == {job_id, other_id}
    mine, theirs = by_id[job_id], by_id[other_id]

    forged = [
        {"id": job_id, "lease": stale["lease"]},  # a's lease, expired and superseded
        {"id": job_id, "lease": theirs["lease"]},  # b's lease for another job
        {"id": job_id, "lease": base64.urlsafe_b64encode(os.urandom(12)).decode()},
        {"id": job_id, "lease": mine["lease"][:-1] + ("A" if mine["lease"][-1] != "A" else "B")},
    ]
    for verb in ("heartbeat", "nack", "ack"):
        for ref in forged:
            [result] = settle(http, queue, verb, ref)
            assert (result["ok"], result.get("error")) == (False, "lease_lost"), (verb, ref)
    [claimed] = [
        job
        for job in http.get(f"/v1/queues/{queue}/jobs", params={"state": "claimed"}).json()["jobs"]
        if job["id"] == job_id
    ]
    assert claimed["worker"] == "b" and claimed["attempts"] == 2
    [ok] = settle(http, queue, "ack", {"id": job_id, "lease": mine["lease"]})
    assert ok["ok"] is True


# -- payloads are data ---------------------------------------------------------------------------

VERBATIM = [
    b'{"__proto__": {"polluted": true}, "constructor": {"prototype": {"isAdmin": true}}}',
    b'"{{7*7}} ${7*7} <%= 7*7 %> $(touch /tmp/obque-pwned) `id`"',
    b'"<script>alert(document.cookie)</script><img src=x onerror=alert(1)>"',
    b'"\'; DROP TABLE jobs; --"',
    b'{"id": "1", "lease": "AAAAAAAAAAAAAAAA", "claim": {"worker": "me", "expires_ms": 0}}',
    b'{"format": "obque/1", "name": "q", "revision": 999999, "jobs": [], "broker": null}',
    b'{ "spaced" :\t[ 1 ,2 ]\n, "unicode": "\\u00e9\\ud83d\\ude00" }',
    b'"' + b"x" * 200_000 + b'"',
]


def test_payloads_are_stored_and_returned_verbatim(
    http: httpx.Client, queue: str, module_brokers: BrokerFactory
) -> None:
    body = b'{"jobs": [' + b", ".join(b'{"payload": %s}' % p for p in VERBATIM) + b"]}"
    response = http.post(
        f"/v1/queues/{queue}/push", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text
    ids = response.json()["ids"]
    stored = (module_brokers.root_dir() / f"{queue}.json").read_bytes()
    # The 200 KB payload is above spill_payload_bytes: it lives in its own object, as is.
    [spilled] = (module_brokers.root_dir() / f"{queue}.json.d" / "payloads").iterdir()
    assert spilled.read_bytes() == VERBATIM[-1]
    assert all(payload in stored for payload in VERBATIM[:-1])
    state = read_queue_file(module_brokers.root_dir(), queue)
    assert (state["name"], len(state["jobs"])) == (queue, len(VERBATIM))  # nothing forged
    assert all("claim" not in job for job in state["jobs"])
    claimed = http.post(f"/v1/queues/{queue}/claim", json={"worker": "w", "max": 100})
    assert [job["id"] for job in claimed.json()["jobs"]] == ids
    assert all(payload in claimed.content for payload in VERBATIM)
    assert not Path("/tmp/obque-pwned").exists()


# -- token-less brokers: cross-site requests ---------------------------------------------------


def test_a_cross_site_browser_request_cannot_change_a_tokenless_broker(
    brokers: BrokerFactory,
) -> None:
    broker = brokers.start(brokers.root())
    with httpx.Client(base_url=broker.url, timeout=30) as http:
        assert http.put("/v1/queues/q").status_code == 201
        # What `fetch(url, {method: "POST", mode: "no-cors", body})` sends from evil.example:
        # a "simple" request, which browsers send without asking the broker first.
        response = http.post(
            "/v1/queues/q/push",
            content=b'{"jobs": [{"payload": "from a web page"}]}',
            headers={
                "Origin": "https://evil.example",
                "Sec-Fetch-Site": "cross-site",
                "Sec-Fetch-Mode": "no-cors",
                "Content-Type": "text/plain;charset=UTF-8",
            },
        )
        assert 400 <= response.status_code < 500, response.text
        assert http.get("/v1/queues/q/stats").json()["pushed"] == 0


PAGE_PUSH = b'{"jobs": [{"payload": "from a web page"}]}'


def pushes(http: httpx.Client, **headers: str) -> httpx.Response:
    """A push carrying the headers a browser would add (``Host`` included, if given)."""
    return http.post("/v1/queues/q/push", content=PAGE_PUSH, headers=headers)


def pushed(broker: BrokerProcess) -> int:
    with httpx.Client(base_url=broker.url, timeout=30) as http:
        count: int = http.get("/v1/queues/q/stats").json()["pushed"]
    return count


def refused(response: httpx.Response) -> None:
    assert_error(response, 401, "unauthorized", "cross-site or foreign-host")


def test_a_tokenless_loopback_broker_refuses_foreign_hosts_and_foreign_origins(
    brokers: BrokerFactory,
) -> None:
    """DNS rebinding makes a page's own name resolve to 127.0.0.1: the request then carries
    that name in ``Host`` (and, same-origin to the browser, a matching ``Origin``)."""
    broker = brokers.start(brokers.root())
    own = f"127.0.0.1:{broker.port}"
    with httpx.Client(base_url=broker.url, timeout=30) as http:
        assert http.put("/v1/queues/q").status_code == 201
        refused(pushes(http, Host="evil.example"))
        refused(pushes(http, Host=f"evil.example:{broker.port}"))
        refused(pushes(http, Host=f"127.0.0.1.evil.example:{broker.port}"))
        rebound = f"http://evil.example:{broker.port}"
        refused(pushes(http, Host=f"evil.example:{broker.port}", Origin=rebound))
        refused(http.get("/v1/queues/q/stats", headers={"Host": "evil.example"}))
        refused(pushes(http, Origin="null"))  # sandboxed frames, file:// pages
        refused(pushes(http, Origin="https://evil.example"))
        refused(pushes(http, Origin=f"http://localhost.evil.example:{broker.port}"))
        refused(pushes(http, **{"Sec-Fetch-Site": "cross-site"}))
        refused(pushes(http, **{"Sec-Fetch-Site": "same-site"}))
        assert pushed(broker) == 0

        # What the dashboard (same-origin) and programs (no Origin) send is served.
        for headers in (
            {"Origin": f"http://{own}", "Sec-Fetch-Site": "same-origin"},
            {"Origin": f"http://{own}"},
            {"Sec-Fetch-Site": "none"},  # a URL typed into the address bar
            {"Host": f"localhost:{broker.port}"},
            {"Host": f"LOCALHOST:{broker.port}", "Origin": f"http://localhost:{broker.port}"},
            {"Host": f"[::1]:{broker.port}"},
            {},
        ):
            response = pushes(http, **headers)
            assert response.status_code == 200, (headers, response.text)
        assert pushed(broker) == 7


def test_an_insecure_broker_keeps_the_origin_checks_but_answers_any_host(
    brokers: BrokerFactory,
) -> None:
    """Bound to every address with ``--insecure`` a broker cannot know the names it is
    reached by, so a foreign ``Host`` is served; a cross-site browser request is not."""
    broker = brokers.start(brokers.root(), host="0.0.0.0", extra=["--insecure"])
    with httpx.Client(base_url=broker.url, timeout=30) as http:
        assert http.put("/v1/queues/q").status_code == 201
        response = pushes(http, Host=f"queues.example:{broker.port}")
        assert response.status_code == 200, response.text
        origin = f"http://queues.example:{broker.port}"
        response = pushes(http, Host=f"queues.example:{broker.port}", Origin=origin)
        assert response.status_code == 200, response.text  # its own page, by that name
        refused(pushes(http, Origin="https://evil.example"))
        refused(pushes(http, Host=f"queues.example:{broker.port}", Origin="https://evil.example"))
        refused(pushes(http, Origin="null"))
        refused(pushes(http, **{"Sec-Fetch-Site": "cross-site"}))
        assert pushed(broker) == 2


def test_a_broker_with_a_token_needs_no_origin_checks(guarded: BrokerProcess) -> None:
    """The token is the guard: a page cannot read it, and with it any caller is served."""
    with guarded.client() as http:
        response = http.get(
            "/v1/queues/q/stats",
            headers={"Host": "elsewhere.example", "Origin": "https://app.example"},
        )
        assert response.status_code == 200, response.text
    with httpx.Client(base_url=guarded.url, timeout=30) as anon:
        refused_without_token = anon.get("/v1/queues/q/stats", headers={"Origin": "null"})
        assert_error(refused_without_token, 401, "unauthorized")
