"""The broker's HTTP API v1 (SPEC §7), spoken over HTTP to real ``obque broker`` processes.

Most tests share one broker per module and each works on its own queue; tests that need
a special broker (token, latency-shaped store, restarts, corrupt files) start their own.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection, HTTPException
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

# broker_proc is also loaded as a plugin (its fixtures and report hook); have its asserts
# rewritten before the import below, as pytest does for plugins.
pytest.register_assert_rewrite("broker_proc")

from broker_proc import (  # noqa: E402
    OBQUE,
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

STATS_FIELDS = {
    "name",
    "revision",
    "ready",
    "delayed",
    "claimed",
    "dead",
    "pushed",
    "acked",
    "nacked",
    "expired",
    "commits",
    "oldest_ready_age_seconds",
    "broker",
}
CONFIG_FIELDS = {
    "lease_seconds",
    "max_attempts",
    "retry_delay_seconds",
    "retry_delay_max_seconds",
    "dead_retention",
    "max_payload_bytes",
}
_names = itertools.count()


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_broker(module_brokers: BrokerFactory) -> BrokerProcess:
    return module_brokers.start(module_brokers.root())


@pytest.fixture
def http(
    request: pytest.FixtureRequest, shared_broker: BrokerProcess, module_brokers: BrokerFactory
) -> Iterator[httpx.Client]:
    attach_logs(request, module_brokers)
    assert shared_broker.alive(), shared_broker.log()
    with shared_broker.client() as client:
        yield client


def unique_name(request: pytest.FixtureRequest) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
    return f"{base[:50]}-{next(_names)}"


@pytest.fixture
def queue(http: httpx.Client, request: pytest.FixtureRequest) -> str:
    """A fresh queue on the shared broker (default config)."""
    name = unique_name(request)
    response = http.put(f"/v1/queues/{name}")
    assert response.status_code == 201, response.text
    return name


def make_queue(http: httpx.Client, request: pytest.FixtureRequest, **config: Any) -> str:
    name = unique_name(request)
    response = http.put(f"/v1/queues/{name}", json=config)
    assert response.status_code == 201, response.text
    return name


def push(http: httpx.Client, queue: str, *jobs: dict[str, Any]) -> dict[str, Any]:
    response = http.post(f"/v1/queues/{queue}/push", json={"jobs": list(jobs)})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def claim(http: httpx.Client, queue: str, **fields: Any) -> list[dict[str, Any]]:
    response = http.post(f"/v1/queues/{queue}/claim", json={"worker": "w1", **fields})
    assert response.status_code == 200, response.text
    jobs: list[dict[str, Any]] = response.json()["jobs"]
    return jobs


def settle(http: httpx.Client, queue: str, verb: str, *leases: dict[str, Any]) -> list[Any]:
    response = http.post(f"/v1/queues/{queue}/{verb}", json={"leases": list(leases)})
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def stats(http: httpx.Client, queue: str) -> dict[str, Any]:
    response = http.get(f"/v1/queues/{queue}/stats")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def listed(http: httpx.Client, queue: str, state: str, limit: int = 100) -> list[Any]:
    response = http.get(f"/v1/queues/{queue}/jobs", params={"state": state, "limit": limit})
    assert response.status_code == 200, response.text
    jobs: list[dict[str, Any]] = response.json()["jobs"]
    return jobs


def ref(job: dict[str, Any]) -> dict[str, str]:
    return {"id": job["id"], "lease": job["lease"]}


def now_ms() -> int:
    return int(time.time() * 1000)


# -- queues -----------------------------------------------------------------------------------


def test_put_creates_then_updates_given_fields(
    http: httpx.Client, request: pytest.FixtureRequest
) -> None:
    name = unique_name(request)
    created = http.put(f"/v1/queues/{name}", json={"lease_seconds": 7, "max_attempts": 4})
    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) == {"name", "config", "revision"}
    assert body["name"] == name
    assert set(body["config"]) >= CONFIG_FIELDS
    assert body["config"]["lease_seconds"] == 7
    assert body["config"]["max_attempts"] == 4

    again = http.put(f"/v1/queues/{name}", json={"max_attempts": 9})
    assert again.status_code == 200, again.text
    updated = again.json()
    assert updated["config"]["max_attempts"] == 9
    assert updated["config"]["lease_seconds"] == 7  # fields not given keep their values
    assert updated["revision"] > body["revision"]

    unchanged = http.put(f"/v1/queues/{name}")  # no body at all: nothing to change
    assert unchanged.status_code == 200, unchanged.text
    assert unchanged.json()["config"] == updated["config"]


@pytest.mark.parametrize(
    "config",
    [
        {"lease_seconds": 0},
        {"lease_seconds": "ten"},
        {"max_attempts": -1},
        {"max_jobs": 0},
        {"max_payload_bytes": 10**12},
        {"retry_delay_seconds": -1},
        {"no_such_setting": 1},
    ],
)
def test_put_bad_config_is_400_and_creates_nothing(
    http: httpx.Client, request: pytest.FixtureRequest, config: dict[str, Any]
) -> None:
    name = unique_name(request)
    field = next(iter(config))
    assert_error(http.put(f"/v1/queues/{name}", json=config), 400, "invalid_request", field)
    names = [q["name"] for q in http.get("/v1/queues").json()["queues"]]
    assert name not in names


def test_put_bad_config_on_existing_queue_changes_nothing(http: httpx.Client, queue: str) -> None:
    # (Not the revision: the leader's heartbeat commits bump it at any time.)
    before = http.put(f"/v1/queues/{queue}").json()["config"]
    for config in ({"lease_seconds": 10**9}, {"lease_seconds": 60, "max_attempts": 0}):
        response = http.put(f"/v1/queues/{queue}", json=config)
        assert_error(response, 400, "invalid_request")
    assert http.put(f"/v1/queues/{queue}").json()["config"] == before


def test_list_queues(http: httpx.Client, queue: str) -> None:
    response = http.get("/v1/queues")
    assert response.status_code == 200
    queues = response.json()["queues"]
    assert all(set(q) == {"name", "uri"} for q in queues)
    mine = [q for q in queues if q["name"] == queue]
    assert len(mine) == 1
    assert mine[0]["uri"].startswith("file://")
    assert mine[0]["uri"].endswith(f"/{queue}.json")
    assert [q["name"] for q in queues] == sorted(q["name"] for q in queues)


# -- push and claim ---------------------------------------------------------------------------


def test_push_answers_ids_duplicates_and_revision(http: httpx.Client, queue: str) -> None:
    first = push(http, queue, {"payload": {"n": 1}, "key": "a"}, {"payload": [2]})
    assert set(first) == {"ids", "duplicates", "revision"}
    assert len(first["ids"]) == 2 and len(set(first["ids"])) == 2
    assert first["duplicates"] == []
    assert isinstance(first["revision"], int)

    second = push(http, queue, {"payload": "again", "key": "a"}, {"payload": None, "key": "b"})
    assert second["ids"][0] == first["ids"][0]
    assert second["duplicates"] == [first["ids"][0]]
    assert second["ids"][1] not in first["ids"]
    assert second["revision"] > first["revision"]

    same_batch = push(http, queue, {"payload": 1, "key": "c"}, {"payload": 2, "key": "c"})
    assert same_batch["ids"][0] == same_batch["ids"][1]
    assert same_batch["duplicates"] == [same_batch["ids"][0]]

    assert stats(http, queue)["pushed"] == 4
    assert [j["payload"] for j in listed(http, queue, "ready")] == [{"n": 1}, [2], None, 1]

    # A key keeps deduplicating after its job was acked (within dedup_seconds).
    (job,) = claim(http, queue)
    assert job["id"] == first["ids"][0]
    assert settle(http, queue, "ack", ref(job))[0]["ok"]
    after_ack = push(http, queue, {"payload": "third time", "key": "a"})
    assert after_ack["ids"] == [job["id"]] and after_ack["duplicates"] == [job["id"]]
    assert stats(http, queue)["pushed"] == 4


def test_push_delay_and_per_job_max_attempts(http: httpx.Client, queue: str) -> None:
    pushed = push(
        http,
        queue,
        {"payload": "later", "delay_seconds": 60},
        {"payload": "once", "max_attempts": 1},
    )
    later, once = pushed["ids"]
    delayed = listed(http, queue, "delayed")
    assert [j["id"] for j in delayed] == [later]
    assert delayed[0]["ready_ms"] >= delayed[0]["enqueued_ms"] + 59_000
    (job,) = claim(http, queue, max=10)  # the delayed one is not claimable yet
    assert job["id"] == once
    # The queue allows 5 attempts, this job only 1: its first nack dead-letters it.
    assert settle(http, queue, "nack", {**ref(job), "error": "no"}) == [{"id": once, "ok": True}]
    assert [j["id"] for j in listed(http, queue, "dead")] == [once]
    assert [j["id"] for j in listed(http, queue, "delayed")] == [later]


def test_claim_max_lease_seconds_and_fifo(http: httpx.Client, queue: str) -> None:
    ids = push(http, queue, *({"payload": i} for i in range(3)))["ids"]
    before = now_ms()
    jobs = claim(http, queue, max=2, lease_seconds=5)
    after = now_ms()
    assert [j["id"] for j in jobs] == ids[:2]
    for i, job in enumerate(jobs):
        assert set(job) == {"id", "payload", "attempt", "lease", "lease_expires_ms"}
        assert job["payload"] == i
        assert job["attempt"] == 1
        assert isinstance(job["lease"], str) and job["lease"]
        assert before + 4_000 <= job["lease_expires_ms"] <= after + 6_000
    assert jobs[0]["lease"] != jobs[1]["lease"]
    claimed = listed(http, queue, "claimed")
    assert {j["id"] for j in claimed} == set(ids[:2])
    assert all(j["worker"] == "w1" and "lease" not in j for j in claimed)
    rest = claim(http, queue, max=100)
    assert [j["id"] for j in rest] == ids[2:]
    assert claim(http, queue) == []


def test_claim_on_empty_queue_is_an_empty_list(http: httpx.Client, queue: str) -> None:
    response = http.post(f"/v1/queues/{queue}/claim", json={"worker": "w"})
    assert response.status_code == 200
    assert response.json() == {"jobs": []}


# -- heartbeat, ack, nack ------------------------------------------------------------------------


def test_heartbeat_extends_and_stale_lease_is_lost(http: httpx.Client, queue: str) -> None:
    push(http, queue, {"payload": "x"})
    (job,) = claim(http, queue, lease_seconds=5)
    (beat,) = settle(http, queue, "heartbeat", ref(job))
    assert beat["ok"] is True and beat["id"] == job["id"]
    assert "error" not in beat
    response = http.post(
        f"/v1/queues/{queue}/heartbeat", json={"leases": [ref(job)], "lease_seconds": 600}
    )
    assert response.status_code == 200, response.text
    (longer,) = response.json()["results"]
    assert longer["ok"] is True
    assert longer["lease_expires_ms"] >= job["lease_expires_ms"] + 590_000
    claimed = listed(http, queue, "claimed")
    assert claimed[0]["lease_expires_ms"] == longer["lease_expires_ms"]

    stale = {"id": job["id"], "lease": "not-the-lease"}
    (lost,) = settle(http, queue, "heartbeat", stale)
    assert lost == {"id": job["id"], "ok": False, "error": "lease_lost"}
    assert listed(http, queue, "claimed")[0]["lease_expires_ms"] == longer["lease_expires_ms"]


def test_ack_ok_then_lease_lost_and_unknown_is_not_found(http: httpx.Client, queue: str) -> None:
    push(http, queue, {"payload": "x"})
    (job,) = claim(http, queue)
    assert settle(http, queue, "ack", ref(job)) == [{"id": job["id"], "ok": True}]
    assert settle(http, queue, "ack", ref(job)) == [
        {"id": job["id"], "ok": False, "error": "lease_lost"}
    ]
    assert settle(http, queue, "ack", {"id": "987654", "lease": "whatever"}) == [
        {"id": "987654", "ok": False, "error": "not_found"}
    ]
    assert settle(http, queue, "heartbeat", {"id": "nope", "lease": "whatever"}) == [
        {"id": "nope", "ok": False, "error": "not_found"}
    ]
    s = stats(http, queue)
    assert (s["acked"], s["ready"], s["claimed"]) == (1, 0, 0)


def test_ack_answers_per_item(http: httpx.Client, queue: str) -> None:
    push(http, queue, {"payload": 1}, {"payload": 2})
    a, b = claim(http, queue, max=2)
    results = settle(http, queue, "ack", ref(a), {"id": b["id"], "lease": "stale"}, ref(b))
    assert [(r["id"], r["ok"]) for r in results] == [
        (a["id"], True),
        (b["id"], False),
        (b["id"], True),
    ]
    assert results[1]["error"] == "lease_lost"


def test_nack_delay_keeps_error_and_dead_true_buries(http: httpx.Client, queue: str) -> None:
    push(http, queue, {"payload": "retry"}, {"payload": "bury"})
    retry, bury = claim(http, queue, max=2)
    results = settle(
        http,
        queue,
        "nack",
        {**ref(retry), "delay_seconds": 120, "error": "flaky upstream"},
        {**ref(bury), "dead": True, "error": "bad input"},
    )
    assert [r["ok"] for r in results] == [True, True]

    (delayed,) = listed(http, queue, "delayed")
    assert delayed["id"] == retry["id"]
    assert delayed["last_error"] == "flaky upstream"
    assert delayed["ready_ms"] >= now_ms() + 100_000
    (dead,) = listed(http, queue, "dead")
    assert dead["id"] == bury["id"] and dead["state"] == "dead"
    assert dead["last_error"] == "bad input"
    s = stats(http, queue)
    assert (s["delayed"], s["dead"], s["nacked"], s["claimed"]) == (1, 1, 2, 0)
    # The nacked lease is gone: a second nack or ack with it changes nothing.
    assert settle(http, queue, "ack", ref(retry))[0]["error"] == "lease_lost"


# -- stats and listings -------------------------------------------------------------------------


def test_stats_fields(http: httpx.Client, queue: str, shared_broker: BrokerProcess) -> None:
    push(http, queue, {"payload": 1}, {"payload": 2}, {"payload": 3, "delay_seconds": 300})
    claim(http, queue)
    s = stats(http, queue)
    assert set(s) == STATS_FIELDS
    assert s["name"] == queue
    assert (s["ready"], s["delayed"], s["claimed"], s["dead"]) == (1, 1, 1, 0)
    assert (s["pushed"], s["acked"], s["nacked"], s["expired"]) == (3, 0, 0, 0)
    assert s["commits"] >= 3 and s["revision"] >= 3
    assert isinstance(s["oldest_ready_age_seconds"], int | float)
    assert s["oldest_ready_age_seconds"] >= 0
    assert s["broker"]["url"] == shared_broker.advertised
    assert s["broker"]["mode"] == "process"


def test_jobs_by_state_and_limit(http: httpx.Client, queue: str) -> None:
    ids = push(http, queue, *({"payload": i, "key": f"k{i}"} for i in range(5)))["ids"]
    push(http, queue, {"payload": "later", "delay_seconds": 300})
    claim(http, queue)
    ready = listed(http, queue, "ready")
    assert [j["id"] for j in ready] == ids[1:]
    assert all(j["state"] == "ready" and j["attempts"] == 0 for j in ready)
    assert ready[0]["key"] == "k1"
    assert [j["id"] for j in listed(http, queue, "ready", limit=2)] == ids[1:3]
    assert [j["state"] for j in listed(http, queue, "claimed")] == ["claimed"]
    assert [j["payload"] for j in listed(http, queue, "delayed")] == ["later"]
    assert listed(http, queue, "dead") == []
    default = http.get(f"/v1/queues/{queue}/jobs")  # state defaults to ready
    assert [j["id"] for j in default.json()["jobs"]] == ids[1:]


@pytest.mark.parametrize(
    "params", [{"state": "bogus"}, {"limit": 0}, {"limit": 100_000}, {"limit": "x"}]
)
def test_jobs_bad_query_is_400(http: httpx.Client, queue: str, params: dict[str, Any]) -> None:
    response = http.get(f"/v1/queues/{queue}/jobs", params=params)
    assert_error(response, 400, "invalid_request", next(iter(params)))


# -- dead letters -------------------------------------------------------------------------------


def bury_all(http: httpx.Client, queue: str, n: int) -> list[str]:
    ids: list[str] = push(http, queue, *({"payload": i} for i in range(n)))["ids"]
    jobs = claim(http, queue, max=n)
    results = settle(http, queue, "nack", *({**ref(j), "dead": True} for j in jobs))
    assert all(r["ok"] for r in results)
    assert [j["id"] for j in listed(http, queue, "dead")] == ids
    return ids


def test_redrive_by_ids_and_all(http: httpx.Client, queue: str) -> None:
    a, b, c = bury_all(http, queue, 3)
    response = http.post(f"/v1/queues/{queue}/dead/redrive", json={"ids": [b, "no-such"]})
    assert response.status_code == 200, response.text
    assert response.json() == {"redriven": 1}
    assert [j["id"] for j in listed(http, queue, "dead")] == [a, c]
    assert [j["id"] for j in listed(http, queue, "ready")] == [b]

    everything = http.post(f"/v1/queues/{queue}/dead/redrive")  # no body: all
    assert everything.json() == {"redriven": 2}
    assert listed(http, queue, "dead") == []
    assert [j["id"] for j in listed(http, queue, "ready")] == [b, a, c]
    assert all(j["attempts"] == 0 for j in listed(http, queue, "ready"))
    assert http.post(f"/v1/queues/{queue}/dead/redrive", json={}).json() == {"redriven": 0}


def test_purge_by_ids_and_all(http: httpx.Client, queue: str) -> None:
    a, b, c = bury_all(http, queue, 3)
    response = http.post(f"/v1/queues/{queue}/dead/purge", json={"ids": [a]})
    assert response.status_code == 200, response.text
    assert response.json() == {"purged": 1}
    assert [j["id"] for j in listed(http, queue, "dead")] == [b, c]
    assert http.post(f"/v1/queues/{queue}/dead/purge", json={}).json() == {"purged": 2}
    assert listed(http, queue, "dead") == []
    assert http.post(f"/v1/queues/{queue}/dead/purge").json() == {"purged": 0}
    s = stats(http, queue)
    assert (s["dead"], s["ready"]) == (0, 0)


# -- operations endpoints -------------------------------------------------------------------------


def test_healthz(http: httpx.Client) -> None:
    response = http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"ok": True}


def test_metrics_is_prometheus_text(http: httpx.Client, queue: str) -> None:
    push(http, queue, {"payload": 1})
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "# TYPE obque_jobs gauge" in text
    assert f'obque_jobs{{queue="{queue}",state="ready"}} 1' in text
    assert re.search(rf'^obque_commits_total{{queue="{re.escape(queue)}"}} \S+$', text, re.M)
    for line in text.splitlines():
        assert line.startswith("#") or re.fullmatch(r"[a-z_]+(\{[^}]*\})? \S+", line), line


def test_dashboard_is_html(http: httpx.Client) -> None:
    response = http.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<html" in response.text.lower()


def test_openapi_has_msgspec_schemas_and_paths(http: httpx.Client) -> None:
    response = http.get("/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    schemas = doc["components"]["schemas"]
    for name in ("PushIn", "JobIn", "ClaimIn", "AckIn", "NackIn", "PushOut", "ErrorOut"):
        assert name in schemas, sorted(schemas)
    assert schemas["PushIn"]["properties"]["jobs"]["maxItems"] == 1000
    assert schemas["ClaimIn"]["properties"]["max"]["maximum"] == 100
    paths = doc["paths"]
    for path in (
        "/v1/queues",
        "/v1/queues/{name}",
        "/v1/queues/{name}/push",
        "/v1/queues/{name}/claim",
        "/v1/queues/{name}/heartbeat",
        "/v1/queues/{name}/ack",
        "/v1/queues/{name}/nack",
        "/v1/queues/{name}/stats",
        "/v1/queues/{name}/jobs",
        "/v1/queues/{name}/dead/redrive",
        "/v1/queues/{name}/dead/purge",
    ):
        assert path in paths, sorted(paths)
    push_body = paths["/v1/queues/{name}/push"]["post"]["requestBody"]
    assert push_body["content"]["application/json"]["schema"]["$ref"].endswith("/PushIn")
    # Every reference in the document resolves (msgspec's and FastAPI's schemas merged).
    refs = set(re.findall(r'"\$ref":\s*"#/components/schemas/([^"]+)"', response.text))
    assert refs and refs <= set(schemas), refs - set(schemas)


# -- the error model ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verb", "body", "mentions"),
    [
        ("push", b"{not json", ("JSON",)),
        ("push", b"", ("empty",)),
        ("push", b"   ", ("empty",)),
        ("push", b"[]", ()),
        ("push", b'{"jobs": [{"payload": 1}], "bogus": 1}', ("bogus",)),
        ("push", b'{"jobs": [{"payload": 1, "colour": "red"}]}', ("colour",)),
        ("push", b'{"jobs": []}', ("jobs", "1")),
        ("claim", b'{"worker": "w", "max": 101}', ("max", "100")),
        ("claim", b'{"worker": "w", "max": 0}', ("max",)),
        ("claim", b'{"worker": "w", "wait_seconds": 21}', ("wait_seconds", "20")),
        ("claim", b'{"worker": "w", "lease_seconds": 0}', ("lease_seconds", "1")),
        ("claim", b'{"worker": ""}', ("worker",)),
        ("claim", b'{"max": 1}', ("worker",)),
        ("heartbeat", b'{"leases": []}', ("leases",)),
        ("ack", b'{"leases": [{"id": "1"}]}', ("lease",)),
        ("nack", b'{"leases": [{"id": "1", "lease": "x", "delay_seconds": -1}]}', ("delay",)),
        ("dead/redrive", b'{"ids": "1"}', ("ids",)),
        ("dead/purge", b"nope", ("JSON",)),
    ],
)
def test_bad_bodies_are_400_invalid_request(
    http: httpx.Client, queue: str, verb: str, body: bytes, mentions: tuple[str, ...]
) -> None:
    response = http.post(
        f"/v1/queues/{queue}/{verb}", content=body, headers={"content-type": "application/json"}
    )
    assert_error(response, 400, "invalid_request", *mentions)


def test_payload_that_is_not_utf8_is_refused_and_the_file_stays_json(
    http: httpx.Client, queue: str, module_brokers: BrokerFactory
) -> None:
    for body in (
        b'{"jobs": [{"payload": "\xff\xfe"}]}',
        b'{"jobs": [{"payload": {"k": "caf\xe9"}}]}',
        b'{"jobs": [{"payload": 1, "key": "\xc3"}]}',
    ):
        response = http.post(
            f"/v1/queues/{queue}/push", content=body, headers={"content-type": "application/json"}
        )
        assert_error(response, 400, "invalid_request", "UTF-8")
    push(http, queue, {"payload": "caf\u00e9 \u2713"})
    state = read_queue_file(module_brokers.root_dir(), queue)  # strict UTF-8 JSON
    assert [job["payload"] for job in state["jobs"]] == ["caf\u00e9 \u2713"]
    assert claim(http, queue)[0]["payload"] == "caf\u00e9 \u2713"


def test_push_of_1001_jobs_is_400_naming_the_limit(http: httpx.Client, queue: str) -> None:
    response = http.post(
        f"/v1/queues/{queue}/push", json={"jobs": [{"payload": i} for i in range(1001)]}
    )
    assert_error(response, 400, "invalid_request", "1000", "jobs")
    assert stats(http, queue)["pushed"] == 0


@pytest.mark.parametrize(
    "name",
    [
        "Upper",
        "a" * 64,
        "..%2Fx",
        "%2E%2E",
        "-dash",
        ".dot",
        "a b",
        "caf%C3%A9",
        "%E2%9C%93",
        "x%00",
        "a%0A",
    ],
)
def test_bad_queue_names_are_4xx_never_5xx(http: httpx.Client, name: str) -> None:
    for method, suffix in (("PUT", ""), ("POST", "/push"), ("GET", "/stats"), ("GET", "/jobs")):
        body = b'{"jobs": [{"payload": 1}]}' if suffix == "/push" else None
        response = http.request(method, f"/v1/queues/{name}{suffix}", content=body)
        assert response.status_code in (400, 404), (method, name, response.text)
        code = "invalid_request" if response.status_code == 400 else None
        if code is not None:
            assert_error(response, 400, code, "queue name")
        else:
            body_json = response.json()
            assert set(body_json) == {"error"} and set(body_json["error"]) == {"code", "message"}
    assert all(
        not q["name"].lower().startswith("up") for q in http.get("/v1/queues").json()["queues"]
    )


def raw_request(broker: BrokerProcess, method: str, target: str) -> tuple[int, dict[str, Any]]:
    """Send a request line exactly as given (httpx would normalise ``..`` away)."""
    with socket.create_connection((broker.host, broker.port), timeout=10) as sock:
        sock.sendall(
            f"{method} {target} HTTP/1.1\r\nHost: {broker.host}\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("PUT", "/v1/queues/../x"),
        ("PUT", "/v1/queues/..%2Fx"),
        ("PUT", "/v1/queues/%2e%2e"),
        ("PUT", "/v1/queues/..%2F..%2Fescaped"),
        ("GET", "/v1/queues/../../etc/passwd/stats"),
        ("POST", "/v1/queues/%2e%2e/push"),
    ],
)
def test_dotdot_paths_never_escape_the_root(
    shared_broker: BrokerProcess, module_brokers: BrokerFactory, method: str, target: str
) -> None:
    status, body = raw_request(shared_broker, method, target)
    assert status in (400, 404), (target, status, body)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    workdir = module_brokers.workdir
    assert not list(workdir.glob("*.json")) and not list(workdir.parent.glob("*.json"))


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("POST", "/push"),
        ("POST", "/claim"),
        ("POST", "/heartbeat"),
        ("POST", "/ack"),
        ("POST", "/nack"),
        ("GET", "/stats"),
        ("GET", "/jobs"),
        ("POST", "/dead/redrive"),
        ("POST", "/dead/purge"),
    ],
)
def test_unknown_queue_is_404_queue_not_found(http: httpx.Client, method: str, suffix: str) -> None:
    bodies = {
        "/push": {"jobs": [{"payload": 1}]},
        "/claim": {"worker": "w"},
        "/heartbeat": {"leases": [{"id": "1", "lease": "x"}]},
        "/ack": {"leases": [{"id": "1", "lease": "x"}]},
        "/nack": {"leases": [{"id": "1", "lease": "x"}]},
    }
    response = http.request(method, f"/v1/queues/never-made{suffix}", json=bodies.get(suffix))
    assert_error(response, 404, "queue_not_found", "never-made")


def test_payload_over_max_payload_bytes_is_413(
    http: httpx.Client, request: pytest.FixtureRequest
) -> None:
    name = make_queue(http, request, max_payload_bytes=100)
    assert push(http, name, {"payload": "x" * 90})["ids"]
    response = http.post(f"/v1/queues/{name}/push", json={"jobs": [{"payload": "y" * 200}]})
    assert_error(response, 413, "payload_too_large", "max_payload_bytes", "100")
    assert stats(http, name)["pushed"] == 1


@pytest.mark.parametrize("chunked", [False, True])
def test_body_over_16_mib_is_413(http: httpx.Client, queue: str, chunked: bool) -> None:
    size = 16 * 1024 * 1024 + 1
    blob = b'{"jobs": [{"payload": "' + b"x" * size + b'"}]}'

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(blob), 1 << 20):
            yield blob[i : i + (1 << 20)]

    content: Any = chunks() if chunked else blob
    try:
        response = http.post(
            f"/v1/queues/{queue}/push",
            content=content,
            headers={"content-type": "application/json"},
        )
    except httpx.TransportError as exc:  # pragma: no cover - shown if it ever happens
        pytest.fail(f"the broker dropped the connection instead of answering 413: {exc!r}")
    assert_error(response, 413, "payload_too_large", str(16 * 1024 * 1024))
    assert stats(http, queue)["pushed"] == 0


def test_queue_full_is_429(http: httpx.Client, request: pytest.FixtureRequest) -> None:
    name = make_queue(http, request, max_jobs=2)
    push(http, name, {"payload": 1}, {"payload": 2})
    response = http.post(f"/v1/queues/{name}/push", json={"jobs": [{"payload": 3}]})
    assert_error(response, 429, "queue_full", "max_jobs")
    (job,) = claim(http, name)
    settle(http, name, "ack", ref(job))
    assert push(http, name, {"payload": 3})["ids"]  # room again after an ack


def test_unknown_route_is_404_and_wrong_method_405_in_error_shape(http: httpx.Client) -> None:
    assert_error(http.get("/v1/nothing-here"), 404, "not_found")
    assert_error(http.post("/nope", json={}), 404, "not_found")
    assert_error(http.delete("/v1/queues/some-queue"), 405, "method_not_allowed")
    assert_error(http.get("/v1/queues/some-queue/push"), 405, "method_not_allowed")
    assert_error(http.post("/v1/queues", json={}), 405, "method_not_allowed")


# -- auth and binding ----------------------------------------------------------------------------


def test_token_guards_everything_but_healthz(brokers: BrokerFactory) -> None:
    # Bound beyond loopback: allowed because a token is set.
    broker = brokers.start(brokers.root(), host="0.0.0.0", token="s3cret-token")
    with httpx.Client(base_url=broker.url, timeout=10) as anon:
        for method, path in (
            ("GET", "/v1/queues"),
            ("PUT", "/v1/queues/q"),
            ("POST", "/v1/queues/q/push"),
            ("GET", "/metrics"),
        ):
            response = anon.request(method, path)
            assert_error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"].lower().startswith("bearer")
            wrong = anon.request(method, path, headers={"Authorization": "Bearer s3cret-tokem"})
            assert_error(wrong, 401, "unauthorized")
        basic = anon.get("/v1/queues", headers={"Authorization": "Basic czNjcmV0LXRva2Vu"})
        assert_error(basic, 401, "unauthorized")
        assert anon.get("/healthz").status_code == 200
    with broker.client() as authed:
        assert authed.put("/v1/queues/q").status_code == 201
        assert authed.get("/v1/queues").status_code == 200
        assert push(authed, "q", {"payload": 1})["ids"] == ["1"]
    assert not (brokers.root_dir() / "nothing.json").exists()


def test_non_loopback_bind_without_token_refuses_to_start(brokers: BrokerFactory) -> None:
    port = str(free_port())
    done = brokers.run("broker", "--root", brokers.root(), "--host", "0.0.0.0", "--port", port)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("obque: ") and "--token" in last and "--insecure" in last, done.stderr
    assert "0.0.0.0" in last


def test_non_loopback_refusal_is_one_line(brokers: BrokerFactory) -> None:
    port = str(free_port())
    done = brokers.run("broker", "--root", brokers.root(), "--host", "0.0.0.0", "--port", port)
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_non_loopback_bind_with_insecure_starts(brokers: BrokerFactory) -> None:
    insecure = brokers.start(brokers.root(), host="0.0.0.0", extra=["--insecure"])
    with insecure.client() as client:
        assert client.put("/v1/queues/q").status_code == 201
        assert push(client, "q", {"payload": 1})["ids"] == ["1"]


# -- a corrupt queue file ---------------------------------------------------------------------

GARBAGE = b"\x00\xffthis is not a queue file {{{\n"


def every_operation(queue: str) -> list[tuple[str, str, Any]]:
    lease = {"leases": [{"id": "1", "lease": "x"}]}
    return [
        ("POST", f"/v1/queues/{queue}/push", {"jobs": [{"payload": 1}]}),
        ("POST", f"/v1/queues/{queue}/claim", {"worker": "w"}),
        ("POST", f"/v1/queues/{queue}/heartbeat", lease),
        ("POST", f"/v1/queues/{queue}/ack", lease),
        ("POST", f"/v1/queues/{queue}/nack", lease),
        ("GET", f"/v1/queues/{queue}/stats", None),
        ("GET", f"/v1/queues/{queue}/jobs", None),
        ("POST", f"/v1/queues/{queue}/dead/redrive", None),
        ("POST", f"/v1/queues/{queue}/dead/purge", None),
        ("PUT", f"/v1/queues/{queue}", None),
        ("PUT", f"/v1/queues/{queue}", {"max_attempts": 3}),
    ]


def assert_all_corrupt(client: httpx.Client, queue: str) -> None:
    for method, path, body in every_operation(queue):
        response = client.request(method, path, json=body)
        assert_error(response, 500, "queue_file_corrupt", f"{queue}.json")


def test_corrupt_queue_file_fails_every_operation_and_is_left_untouched(
    http: httpx.Client, shared_broker: BrokerProcess, module_brokers: BrokerFactory
) -> None:
    name = "broken-" + str(next(_names))
    path = module_brokers.root_dir() / f"{name}.json"
    path.write_bytes(GARBAGE)  # a queue file this broker has not opened yet
    assert_all_corrupt(http, name)
    assert http.get("/healthz").status_code == 200
    assert http.get("/metrics").status_code == 200
    assert name in [q["name"] for q in http.get("/v1/queues").json()["queues"]]
    assert path.read_bytes() == GARBAGE
    assert "Traceback" not in shared_broker.log()


def test_queue_file_corrupted_under_a_running_broker_is_never_overwritten(
    http: httpx.Client, queue: str, shared_broker: BrokerProcess, module_brokers: BrokerFactory
) -> None:
    path = module_brokers.root_dir() / f"{queue}.json"
    push(http, queue, {"payload": 1})
    path.write_bytes(GARBAGE)
    # The broker does not re-read before writing: its first write finds out.
    response = http.post(f"/v1/queues/{queue}/push", json={"jobs": [{"payload": 2}]})
    assert_error(response, 500, "queue_file_corrupt", f"{queue}.json")
    assert_all_corrupt(http, queue)
    assert path.read_bytes() == GARBAGE
    assert "Traceback" not in shared_broker.log()


# -- semantics over HTTP ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_like_broker(module_brokers: BrokerFactory) -> BrokerProcess:
    """A broker whose store answers like S3 (20 ms reads, 60 ms writes)."""
    return module_brokers.start(module_brokers.root("s3-like", query="latency=s3"))


@pytest.fixture
def s3_like(
    request: pytest.FixtureRequest, s3_like_broker: BrokerProcess, module_brokers: BrokerFactory
) -> BrokerProcess:
    attach_logs(request, module_brokers)
    return s3_like_broker


def concurrently(
    broker: BrokerProcess, requests: list[tuple[str, dict[str, Any]]]
) -> list[httpx.Response]:
    """POST all ``(path, body)`` at once, each on its own connection."""

    async def send_all() -> list[httpx.Response]:
        async with broker.async_client(connections=len(requests)) as aclient:
            return await asyncio.gather(*(aclient.post(path, json=body) for path, body in requests))

    return asyncio.run(send_all())


def test_concurrent_single_pushes_are_group_committed(
    s3_like: BrokerProcess, request: pytest.FixtureRequest
) -> None:
    with s3_like.client() as client:
        name = make_queue(client, request)
        commits_before = stats(client, name)["commits"]
    responses = concurrently(
        s3_like, [(f"/v1/queues/{name}/push", {"jobs": [{"payload": i}]}) for i in range(200)]
    )
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses][:3]
    ids = [r.json()["ids"][0] for r in responses]
    assert len(set(ids)) == 200
    with s3_like.client() as client:
        after = stats(client, name)
        metrics = client.get("/metrics").text
        payloads = sorted(j["payload"] for j in listed(client, name, "ready", limit=1000))
    assert after["pushed"] == 200 and after["ready"] == 200
    assert payloads == list(range(200))
    # 200 callers, 60 ms per write: one CAS per caller would be 200 commits (12 s).
    commits = after["commits"] - commits_before
    assert 1 <= commits < 50, commits
    found = re.search(rf'^obque_commits_total{{queue="{re.escape(name)}"}} (\S+)$', metrics, re.M)
    assert found is not None and float(found.group(1)) < 60, metrics


def test_refused_pushes_do_not_spoil_the_batch_they_ride_in(
    s3_like: BrokerProcess, request: pytest.FixtureRequest
) -> None:
    with s3_like.client() as client:
        name = make_queue(client, request, max_payload_bytes=50)
    bodies = [{"jobs": [{"payload": "x" * (100 if i % 5 == 0 else 10)}]} for i in range(50)]
    responses = concurrently(s3_like, [(f"/v1/queues/{name}/push", b) for b in bodies])
    for i, response in enumerate(responses):
        if i % 5 == 0:
            assert_error(response, 413, "payload_too_large", "max_payload_bytes")
        else:
            assert response.status_code == 200, response.text
    with s3_like.client() as client:
        assert stats(client, name)["pushed"] == 40


def test_max_jobs_holds_under_concurrent_pushes(
    s3_like: BrokerProcess, request: pytest.FixtureRequest
) -> None:
    with s3_like.client() as client:
        name = make_queue(client, request, max_jobs=10)
    responses = concurrently(
        s3_like, [(f"/v1/queues/{name}/push", {"jobs": [{"payload": i}]}) for i in range(30)]
    )
    accepted = [r for r in responses if r.status_code == 200]
    assert len(accepted) == 10
    for response in responses:
        if response.status_code != 200:
            assert_error(response, 429, "queue_full", "max_jobs")
    with s3_like.client() as client:
        assert stats(client, name)["ready"] == 10


def test_concurrent_pushes_of_one_key_make_one_job(
    s3_like: BrokerProcess, request: pytest.FixtureRequest
) -> None:
    with s3_like.client() as client:
        name = make_queue(client, request)
    responses = concurrently(
        s3_like,
        [(f"/v1/queues/{name}/push", {"jobs": [{"payload": i, "key": "once"}]}) for i in range(50)],
    )
    bodies = [r.json() for r in responses]
    assert all(r.status_code == 200 for r in responses)
    assert len({b["ids"][0] for b in bodies}) == 1
    assert sum(1 for b in bodies if not b["duplicates"]) == 1
    with s3_like.client() as client:
        assert stats(client, name)["pushed"] == 1


def test_concurrent_claims_hand_each_job_out_once(
    s3_like: BrokerProcess, request: pytest.FixtureRequest
) -> None:
    with s3_like.client() as client:
        name = make_queue(client, request)
        ids = push(client, name, *({"payload": i} for i in range(30)))["ids"]
    responses = concurrently(
        s3_like, [(f"/v1/queues/{name}/claim", {"worker": f"w{i}", "max": 2}) for i in range(40)]
    )
    assert all(r.status_code == 200 for r in responses)
    claimed = [job for r in responses for job in r.json()["jobs"]]
    assert sorted(j["id"] for j in claimed) == sorted(ids)
    assert len({j["lease"] for j in claimed}) == 30
    acks = concurrently(
        s3_like, [(f"/v1/queues/{name}/ack", {"leases": [ref(j)]}) for j in claimed]
    )
    assert all(r.json()["results"][0]["ok"] for r in acks)
    with s3_like.client() as client:
        s = stats(client, name)
        assert (s["acked"], s["ready"], s["claimed"]) == (30, 0, 0)


def test_expired_lease_is_redelivered_and_old_lease_is_lost(http: httpx.Client, queue: str) -> None:
    (job_id,) = push(http, queue, {"payload": "slow"})["ids"]
    (first,) = claim(http, queue, lease_seconds=1)
    assert first["attempt"] == 1
    # Long-poll (not sleep): the claim returns as soon as the lease lapses.
    deadline = time.monotonic() + 15
    again: list[dict[str, Any]] = []
    while not again and time.monotonic() < deadline:
        again = claim(http, queue, wait_seconds=5)
    assert again, "the job was not re-delivered after its lease expired"
    (second,) = again
    assert second["id"] == job_id
    assert second["attempt"] == 2
    assert second["lease"] != first["lease"]
    assert settle(http, queue, "ack", ref(first)) == [
        {"id": job_id, "ok": False, "error": "lease_lost"}
    ]
    assert settle(http, queue, "heartbeat", ref(first))[0]["error"] == "lease_lost"
    assert settle(http, queue, "ack", ref(second)) == [{"id": job_id, "ok": True}]
    s = stats(http, queue)
    assert (s["expired"], s["acked"], s["claimed"]) == (1, 1, 0)


def test_nack_retry_dead_redrive_cycle(http: httpx.Client, request: pytest.FixtureRequest) -> None:
    name = make_queue(http, request, max_attempts=2, retry_delay_seconds=0)
    (job_id,) = push(http, name, {"payload": "p"})["ids"]
    (one,) = claim(http, name)
    assert one["attempt"] == 1
    assert settle(http, name, "nack", {**ref(one), "error": "first failure"})[0]["ok"]
    (ready,) = listed(http, name, "ready")
    assert ready["last_error"] == "first failure" and ready["attempts"] == 1

    (two,) = claim(http, name)
    assert (two["id"], two["attempt"]) == (job_id, 2)
    assert settle(http, name, "nack", {**ref(two), "error": "second failure"})[0]["ok"]
    assert listed(http, name, "ready") == []
    (dead,) = listed(http, name, "dead")
    assert dead["id"] == job_id and dead["last_error"] == "second failure"
    assert stats(http, name)["dead"] == 1

    redriven = http.post(f"/v1/queues/{name}/dead/redrive", json={"ids": [job_id]})
    assert redriven.json() == {"redriven": 1}
    (three,) = claim(http, name)
    assert (three["id"], three["attempt"]) == (job_id, 1)
    assert settle(http, name, "ack", ref(three))[0]["ok"]


def test_long_poll_returns_early_when_a_job_arrives(
    shared_broker: BrokerProcess, queue: str
) -> None:
    async def scenario() -> tuple[httpx.Response, float]:
        async with shared_broker.async_client() as aclient:

            async def poll() -> tuple[httpx.Response, float]:
                started = time.monotonic()
                response = await aclient.post(
                    f"/v1/queues/{queue}/claim", json={"worker": "w", "wait_seconds": 10}
                )
                return response, time.monotonic() - started

            waiting = asyncio.create_task(poll())
            await asyncio.sleep(0.5)  # let the claim start waiting (not a synchronisation)
            assert not waiting.done(), "the claim returned before any job was pushed"
            pushed = await aclient.post(
                f"/v1/queues/{queue}/push", json={"jobs": [{"payload": "wake"}]}
            )
            assert pushed.status_code == 200, pushed.text
            return await waiting

    response, elapsed = asyncio.run(scenario())
    assert response.status_code == 200, response.text
    jobs = response.json()["jobs"]
    assert [j["payload"] for j in jobs] == ["wake"]
    assert elapsed < 8, elapsed  # woke because of the push, not the 10 s wait


def test_long_poll_wakes_when_a_delayed_job_comes_due(http: httpx.Client, queue: str) -> None:
    push(http, queue, {"payload": "soon", "delay_seconds": 1})
    assert claim(http, queue) == []
    started = time.monotonic()
    jobs = claim(http, queue, wait_seconds=10)
    assert [j["payload"] for j in jobs] == ["soon"]
    assert time.monotonic() - started < 8


def test_abandoned_long_poll_does_not_swallow_a_job(
    shared_broker: BrokerProcess, http: httpx.Client, queue: str
) -> None:
    # A client gives up on its long poll (its timeout is shorter than the wait) ...
    with (
        httpx.Client(base_url=shared_broker.url, timeout=0.5) as impatient,
        pytest.raises(httpx.TimeoutException),
    ):
        impatient.post(f"/v1/queues/{queue}/claim", json={"worker": "gone", "wait_seconds": 10})
    # ... so the job pushed next must not be claimed on its behalf, invisible to everyone
    # until the lease lapses: the next worker gets it at once, as a first attempt.
    (job_id,) = push(http, queue, {"payload": "for a live worker"})["ids"]
    jobs = claim(http, queue, wait_seconds=2)
    assert [(j["id"], j["attempt"]) for j in jobs] == [(job_id, 1)], listed(http, queue, "claimed")


def test_long_poll_with_nothing_returns_empty_after_the_wait(
    http: httpx.Client, queue: str
) -> None:
    started = time.monotonic()
    assert claim(http, queue, wait_seconds=0.5) == []
    assert time.monotonic() - started >= 0.4


def test_a_deleted_queue_file_can_be_created_again(
    http: httpx.Client, queue: str, module_brokers: BrokerFactory
) -> None:
    push(http, queue, {"payload": "old"})
    (module_brokers.root_dir() / f"{queue}.json").unlink()
    response = http.post(f"/v1/queues/{queue}/push", json={"jobs": [{"payload": "new"}]})
    assert_error(response, 404, "queue_not_found", queue)
    created = http.put(f"/v1/queues/{queue}")
    assert created.status_code == 201, created.text
    assert push(http, queue, {"payload": "new"})["ids"] == ["1"]


def test_restarted_broker_resumes_from_the_queue_file(brokers: BrokerFactory) -> None:
    root = brokers.root()
    first = brokers.start(root)
    with first.client() as client:
        assert client.put("/v1/queues/q", json={"max_attempts": 3}).status_code == 201
        ids = push(client, "q", *({"payload": i, "key": f"k{i}"} for i in range(10)))["ids"]
        held = claim(client, "q", max=2)
        bury = claim(client, "q")
        settle(client, "q", "nack", {**ref(bury[0]), "dead": True, "error": "kept"})
        before = stats(client, "q")
    first.kill()
    # A corrupt file in the root does not stop the restarted broker from serving the rest.
    (brokers.root_dir() / "junk.json").write_bytes(GARBAGE)

    second = brokers.start(root, port=first.port)  # same address: takes over at once
    with second.client() as client:
        assert_all_corrupt(client, "junk")
        after = stats(client, "q")
        for field in ("ready", "claimed", "dead", "pushed", "nacked"):
            assert after[field] == before[field], (field, before, after)
        assert after["revision"] >= before["revision"]
        assert (
            client.get("/v1/queues/q/jobs", params={"state": "dead"}).json()["jobs"][0][
                "last_error"
            ]
            == "kept"
        )
        # Leases and keys survive the restart.
        assert settle(client, "q", "ack", *map(ref, held)) == [
            {"id": j["id"], "ok": True} for j in held
        ]
        again = push(client, "q", {"payload": "dup", "key": "k5"})
        assert again["duplicates"] == [ids[5]]
        rest = claim(client, "q", max=100)
        assert [j["id"] for j in rest] == ids[3:]
        config = client.put("/v1/queues/q").json()["config"]
        assert config["max_attempts"] == 3
    assert read_queue_file(brokers.root_dir(), "q")["broker"]["url"] == second.advertised
    assert (brokers.root_dir() / "junk.json").read_bytes() == GARBAGE
    assert "Traceback" not in second.log()


def _read_by_server(port: int) -> int:
    """Established connections to ``port`` whose bytes the server has all read
    (``/proc/net/tcp``: local port ``port``, state 01, receive queue empty)."""
    drained = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, queues = fields[1], fields[3], fields[4]
        if int(local.rpartition(":")[2], 16) == port and state == "01":
            drained += int(queues.partition(":")[2], 16) == 0
    return drained


def _push_raw(port: int, payload: int, sent: threading.Semaphore) -> tuple[int, str]:
    """One push on its own connection; ``sent`` is released once the whole request left."""
    body = json.dumps({"jobs": [{"payload": payload}]})
    conn = HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        try:
            conn.request("POST", "/v1/queues/q/push", body, {"Content-Type": "application/json"})
        finally:
            sent.release()
        answer = conn.getresponse()
        return answer.status, answer.read().decode()
    except (OSError, HTTPException) as exc:
        return 0, repr(exc)  # refused or closed before an answer
    finally:
        conn.close()


def test_sigterm_answers_every_push_in_flight_then_exits_0(brokers: BrokerFactory) -> None:
    # Writes of the queue file at least 2 s apart: the pushes below all wait for the
    # commit after the leadership one, so SIGTERM lands while every one is in flight.
    broker = brokers.start(brokers.root(query="latency=s3&min_write_interval_ms=2000"))
    with broker.client() as client:
        assert client.put("/v1/queues/q").status_code == 201
    n = 50
    sent = threading.Semaphore(0)
    with ThreadPoolExecutor(n) as pool:
        answers = [pool.submit(_push_raw, broker.port, i, sent) for i in range(n)]
        for _ in range(n):
            assert sent.acquire(timeout=30), "a push could not be sent"
        # Sent is not yet accepted: wait until the broker has read every request.
        wait_until(lambda: _read_by_server(broker.port) >= n, timeout=30, what="the broker reading")
        if read_queue_file(brokers.root_dir(), "q")["jobs"]:
            pytest.fail("the pushes committed before SIGTERM: the test proves nothing")
        code = broker.stop(timeout=60)
        outcomes = [answer.result() for answer in answers]
    log = broker.log()
    assert code == 0, (code, log)  # drained, not killed by the signal
    assert "Traceback" not in log and "timeout graceful shutdown" not in log, log
    assert [status for status, _ in outcomes] == [200] * n, outcomes
    answered = {json.loads(text)["ids"][0] for _, text in outcomes}
    state = read_queue_file(brokers.root_dir(), "q")
    assert {job["id"] for job in state["jobs"]} == answered
    assert sorted(job["payload"] for job in state["jobs"]) == list(range(n))
    # Drained first, then withdrew its URL: the next broker need not wait.
    assert (state["broker"]["url"], state["broker"]["heartbeat_ms"]) == ("", 0)


def assert_store_unavailable(response: httpx.Response, *mentions: str) -> None:
    assert_error(response, 503, "store_unavailable", *mentions)
    assert int(response.headers["retry-after"]) >= 1, response.headers


def test_store_outage_under_a_leading_broker_is_503_and_it_recovers(
    brokers: BrokerFactory,
) -> None:
    broker = brokers.start(brokers.root())
    root_dir = brokers.root_dir()
    with broker.client() as client:
        assert client.put("/v1/queues/q").status_code == 201
        first = push(client, "q", {"payload": "before"})["ids"]
        # The queue file turns into something no read or write gets through (a directory
        # in its place): the leader's cached state is of no use, every commit attempt fails.
        saved = root_dir / "q.json.saved"
        (root_dir / "q.json").rename(saved)
        (root_dir / "q.json").mkdir()
        try:
            for method, path, body in [
                ("POST", "push", {"jobs": [{"payload": "during"}]}),
                ("POST", "claim", {"worker": "w"}),
                ("GET", "stats", None),
            ]:
                response = client.request(method, f"/v1/queues/q/{path}", json=body)
                assert_store_unavailable(response, "q.json")
        finally:
            (root_dir / "q.json").rmdir()
            saved.rename(root_dir / "q.json")
        after = push(client, "q", {"payload": "after"})["ids"]  # the same broker, recovered
    payloads = [job["payload"] for job in read_queue_file(root_dir, "q")["jobs"]]
    assert payloads == ["before", "after"], payloads
    assert first != after
    assert "Traceback" not in broker.log()


def test_a_broker_on_a_failing_store_answers_503_from_the_start(brokers: BrokerFactory) -> None:
    root_dir = brokers.root_dir()
    healthy = brokers.root()
    assert brokers.run("init", "--root", healthy).returncode == 0
    # Every store call fails (injected 503s and timeouts): the broker still starts.
    broker = brokers.start(brokers.root(query="faults=1&seed=1"))
    with broker.client() as client:
        assert_store_unavailable(client.put("/v1/queues/other"), "injected")
        assert_store_unavailable(
            client.post("/v1/queues/queue/push", json={"jobs": [{"payload": 1}]})
        )
        assert_store_unavailable(client.get("/v1/queues/queue/stats"))
        assert_store_unavailable(client.get("/v1/queues"))
        assert client.get("/healthz").status_code == 200  # alive, just cut off from its store
    # (The PUT's write may have landed with its answer lost, an injected ambiguous write:
    # a 503 promises nothing either way, which is why a PUT may be retried.)
    assert read_queue_file(root_dir, "queue")["jobs"] == []
    assert "Traceback" not in broker.log()


def test_broker_configured_only_by_the_environment(brokers: BrokerFactory) -> None:
    """``OBQUE_ROOT``, ``OBQUE_TOKEN`` and ``OBQUE_ADVERTISE`` configure ``obque broker``
    without flags."""
    env_root = brokers.root("from-env")
    port = free_port()
    log_path = brokers.workdir / f"broker-env-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBQUE_")}
    advertised = "https://queue.example.com/obque"  # e.g. behind a reverse proxy
    env.update(OBQUE_ROOT=env_root, OBQUE_TOKEN="env-token", OBQUE_ADVERTISE=advertised)
    env.update(PYTHONUNBUFFERED="1")
    args = [OBQUE, "broker", "--port", str(port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=brokers.workdir,
            env=env,
        )
    broker = BrokerProcess(args, "127.0.0.1", port, None, "env-token", log_path, proc)
    brokers.started.append(broker)  # killed, and its log attached, like the others
    broker.wait_ready()
    with httpx.Client(base_url=broker.url, timeout=30) as anonymous:
        assert_error(anonymous.put("/v1/queues/q"), 401, "unauthorized")
        assert_error(anonymous.get("/v1/queues"), 401, "unauthorized")
    with broker.client() as client:
        assert client.put("/v1/queues/q").status_code == 201
        assert push(client, "q", {"payload": "env"})["ids"] == ["1"]
    state = read_queue_file(brokers.root_dir("from-env"), "q")
    assert [job["payload"] for job in state["jobs"]] == ["env"]
    assert state["broker"]["url"] == advertised
    assert not (brokers.workdir / ".obque").exists()  # not the default root
    assert broker.stop() == 0, broker.log()


# -- /metrics, parsed: what the broker reports after known work --------------------------------


@pytest.fixture(scope="module")
def quiet_broker(module_brokers: BrokerFactory) -> BrokerProcess:
    """A broker alone on its root, heartbeating every 40 s: its store requests and commit
    figures move only with what a test does (one test at a time)."""
    return module_brokers.start(module_brokers.root("quiet"), broker_timeout=120)


@pytest.fixture
def quiet(
    request: pytest.FixtureRequest, quiet_broker: BrokerProcess, module_brokers: BrokerFactory
) -> Iterator[httpx.Client]:
    attach_logs(request, module_brokers)
    with quiet_broker.client() as client:
        yield client


class Scrape:
    """One ``GET /metrics``, parsed by prometheus-client's own parser."""

    def __init__(self, http: httpx.Client) -> None:
        response = http.get("/metrics")
        assert response.status_code == 200, response.text
        self.content_type = response.headers["content-type"]
        self.samples = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }

    def __call__(self, name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        assert key in self.samples, (name, labels, sorted(k[0] for k in self.samples))
        return self.samples[key]


def test_metrics_count_commits_operations_and_jobs_of_known_work(
    quiet: httpx.Client, request: pytest.FixtureRequest
) -> None:
    name = make_queue(quiet, request)
    for i in range(20):
        push(quiet, name, {"payload": i})
    push(quiet, name, *({"payload": i} for i in range(5)))  # 5 jobs, one operation
    (held,) = claim(quiet, name)
    got = Scrape(quiet)
    assert got.content_type.startswith("text/plain; version=0.0.4")
    commits = got("obque_commits_total", queue=name)
    assert commits >= 22  # 21 pushes and a claim, one at a time: a commit each
    assert got("obque_ops_total", queue=name) == 22
    # The histograms saw every commit, and the operations each one carried.
    assert got("obque_commit_ops_count", queue=name) == commits
    assert got("obque_commit_ops_sum", queue=name) == 22
    assert got("obque_commit_ops_bucket", queue=name, le="1.0") == commits
    assert got("obque_commit_seconds_count", queue=name) == commits
    assert 0 < got("obque_commit_seconds_sum", queue=name) < commits * 5
    assert got("obque_commit_seconds_bucket", queue=name, le="+Inf") == commits
    # Jobs by state and the file's counters.
    assert got("obque_jobs", queue=name, state="ready") == 24
    assert got("obque_jobs", queue=name, state="claimed") == 1
    assert got("obque_events_total", queue=name, event="pushed") == 25
    assert got("obque_leader", queue=name) == 1
    assert got("obque_commit_conflicts_total", queue=name) == 0
    assert got("obque_store_requests_total", queue=name, kind="writes") >= commits
    assert got("obque_parked_claims", queue=name) == 0
    # The oldest ready job was pushed before the scrape; once none is ready, it is 0.
    assert got("obque_oldest_ready_age_seconds", queue=name) > 0
    claim(quiet, name, max=100)
    assert Scrape(quiet)("obque_oldest_ready_age_seconds", queue=name) == 0
    assert held["id"] == "1"


def test_the_broker_does_not_read_the_queue_file_before_each_write(
    quiet: httpx.Client, request: pytest.FixtureRequest
) -> None:
    name = make_queue(quiet, request)
    push(quiet, name, {"payload": "first"})  # the queue's engine exists and leads
    before = Scrape(quiet)
    for i in range(30):
        push(quiet, name, {"payload": i})
    after = Scrape(quiet)
    reads = [s("obque_store_requests_total", queue=name, kind="reads") for s in (before, after)]
    writes = [s("obque_store_requests_total", queue=name, kind="writes") for s in (before, after)]
    assert reads[1] == reads[0], reads  # the leader's cached state is the file
    assert writes[1] - writes[0] >= 30, writes


def parked(http: httpx.Client, name: str, n: int) -> bool:
    """Whether ``n`` long polls are parked on the queue (per the broker's /metrics)."""
    return Scrape(http)("obque_parked_claims", queue=name) == n


def test_a_parked_long_poll_makes_no_store_reads(
    quiet_broker: BrokerProcess, quiet: httpx.Client, request: pytest.FixtureRequest
) -> None:
    name = make_queue(quiet, request)
    push(quiet, name, {"payload": "engine up"})
    claim(quiet, name)

    async def scenario() -> tuple[list[float], list[Any]]:
        async with quiet_broker.async_client() as aclient:
            poll = asyncio.create_task(
                aclient.post(f"/v1/queues/{name}/claim", json={"worker": "w", "wait_seconds": 3})
            )
            await asyncio.to_thread(
                wait_until, lambda: parked(quiet, name, 1), timeout=10, what="the poll to park"
            )
            reads = [Scrape(quiet)("obque_store_requests_total", queue=name, kind="reads")]
            response = await poll
            assert response.status_code == 200, response.text
            reads.append(Scrape(quiet)("obque_store_requests_total", queue=name, kind="reads"))
            return reads, response.json()["jobs"]

    reads, jobs = asyncio.run(scenario())
    assert jobs == []  # nothing came: it waited its 3 s out ...
    assert reads[1] == reads[0], reads  # ... on an in-memory signal, not by polling the store
    assert parked(quiet, name, 0)


def test_a_nack_with_delay_0_wakes_a_parked_long_poll(
    quiet_broker: BrokerProcess, quiet: httpx.Client, request: pytest.FixtureRequest
) -> None:
    name = make_queue(quiet, request, lease_seconds=60)
    push(quiet, name, {"payload": "retry me"})
    (held,) = claim(quiet, name, lease_seconds=60)

    async def scenario() -> tuple[httpx.Response, float]:
        async with quiet_broker.async_client() as aclient:
            started = time.monotonic()
            poll = asyncio.create_task(
                aclient.post(f"/v1/queues/{name}/claim", json={"worker": "w2", "wait_seconds": 20})
            )
            await asyncio.to_thread(
                wait_until, lambda: parked(quiet, name, 1), timeout=10, what="the poll to park"
            )
            nacked = await aclient.post(
                f"/v1/queues/{name}/nack",
                json={"leases": [{"id": held["id"], "lease": held["lease"], "delay_seconds": 0}]},
            )
            assert nacked.json()["results"] == [{"id": held["id"], "ok": True}], nacked.text
            response = await poll
            return response, time.monotonic() - started

    response, elapsed = asyncio.run(scenario())
    assert response.status_code == 200, response.text
    (job,) = response.json()["jobs"]
    assert (job["id"], job["attempt"]) == (held["id"], 2)
    # Woken by the nack: the lease of the job it held lapses in 60 s and nothing else was
    # due, so without the wake-up it would have answered empty-handed after its 20 s.
    assert elapsed < 15, elapsed


def test_a_retried_keyed_push_on_a_full_queue_answers_its_id_not_429(
    http: httpx.Client, request: pytest.FixtureRequest
) -> None:
    """The retry of a keyed push whose first answer was lost must not meet queue_full:
    its job is there, so the broker answers its id (and the client returns it)."""
    name = make_queue(http, request, max_jobs=2)
    first = push(http, name, {"payload": 1, "key": "order-7"})
    push(http, name, {"payload": 2})  # the queue is full now
    again = push(http, name, {"payload": 1, "key": "order-7"})
    assert again["ids"] == first["ids"] and again["duplicates"] == first["ids"]
    response = http.post(f"/v1/queues/{name}/push", json={"jobs": [{"payload": 3}]})
    assert_error(response, 429, "queue_full", "max_jobs")
