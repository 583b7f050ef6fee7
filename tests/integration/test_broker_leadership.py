"""Broker advertisement, standby takeover and fencing (SPEC §6, §12) with real processes.

Several ``obque broker`` processes serve the same root at once. Each advertises its own
URL; the queue file's ``broker`` record says who leads, and everything the tests wait
for is read from that file or polled over HTTP.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

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

from obque.client import Client  # noqa: E402
from obque.commit import Committer  # noqa: E402
from obque.core import Advertise, BrokerRecord  # noqa: E402
from obque.store import open_store  # noqa: E402

pytest_plugins = ["broker_proc"]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

#: Short enough that takeovers happen within a test, long enough for a loaded 2-core box.
TIMEOUT = "1.5"
_names = itertools.count()


def record(root: Path, queue: str = "q") -> dict[str, Any]:
    """The queue file's ``broker`` record ({} when none is advertised)."""
    broker: dict[str, Any] | None = read_queue_file(root, queue).get("broker")
    return broker or {}


def led_by(root: Path, broker: BrokerProcess, queue: str = "q") -> dict[str, Any] | None:
    """The broker record if it names ``broker``, else None (for polling)."""
    current = record(root, queue)
    return current if current.get("url") == broker.advertised else None


def push_one(broker: BrokerProcess, payload: Any, queue: str = "q") -> httpx.Response:
    with broker.client() as client:
        return client.post(f"/v1/queues/{queue}/push", json={"jobs": [{"payload": payload}]})


def assert_not_leader(response: httpx.Response, leader_url: str) -> None:
    assert_error(response, 503, "not_leader", leader_url, broker=True)
    assert response.json()["broker"] == leader_url
    assert response.headers.get("retry-after")


def two_brokers(brokers: BrokerFactory, **options: Any) -> tuple[BrokerProcess, BrokerProcess]:
    """A leads queue ``q`` (created through it); B then starts on the same root as standby."""
    root = brokers.root()
    a = brokers.start(root, **options)
    with a.client() as client:
        assert client.put("/v1/queues/q").status_code == 201
    wait_until(lambda: led_by(brokers.root_dir(), a), timeout=10, what="A to advertise itself")
    port = free_port()  # B advertises a name of its own choosing (--advertise)
    b = brokers.start(root, port=port, advertise=f"http://localhost:{port}", **options)
    return a, b


# -- advertisement -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def standing_pair(module_brokers: BrokerFactory) -> tuple[BrokerProcess, BrokerProcess]:
    """A and B on one root for the whole module, A leading (default timeout: no takeover)."""
    return two_brokers(module_brokers)


@pytest.fixture
def pair(
    request: pytest.FixtureRequest,
    standing_pair: tuple[BrokerProcess, BrokerProcess],
    module_brokers: BrokerFactory,
) -> tuple[BrokerProcess, BrokerProcess, Path]:
    """The module's A and B, and their root directory."""
    attach_logs(request, module_brokers)
    a, b = standing_pair
    assert a.alive() and b.alive(), module_brokers.logs()
    return a, b, module_brokers.root_dir()


def new_queue_led_by(a: BrokerProcess, root: Path, name: str) -> None:
    """Create queue ``name`` through A and wait until its file advertises A."""
    with a.client() as client:
        assert client.put(f"/v1/queues/{name}").status_code == 201
    wait_until(lambda: led_by(root, a, name), timeout=10, what=f"A to lead {name!r}")


def test_first_broker_advertises_second_answers_not_leader(
    pair: tuple[BrokerProcess, BrokerProcess, Path],
) -> None:
    a, b, root = pair
    advertised = record(root)  # queue q existed when B started: B opened it at once
    assert advertised["url"] == a.advertised == a.url
    assert advertised["mode"] == "process"
    assert advertised["epoch"] >= 1
    assert advertised["id"]
    assert abs(advertised["heartbeat_ms"] - time.time() * 1000) < 60_000

    with b.client() as client:
        for verb, body in (
            ("push", {"jobs": [{"payload": 1}]}),
            ("claim", {"worker": "w"}),
            ("ack", {"leases": [{"id": "1", "lease": "x"}]}),
            ("dead/purge", None),
        ):
            assert_not_leader(client.post(f"/v1/queues/q/{verb}", json=body), a.advertised)
        # Reads need no leadership: the standby can still show the queue.
        assert client.get("/v1/queues/q/stats").json()["broker"]["url"] == a.advertised
    assert push_one(a, "via a").status_code == 200
    assert record(root)["url"] == a.advertised
    assert record(root)["epoch"] == advertised["epoch"]


def test_standby_cannot_change_settings_of_a_queue_it_does_not_lead(
    pair: tuple[BrokerProcess, BrokerProcess, Path],
) -> None:
    a, b, root = pair
    later = f"later-{next(_names)}"
    new_queue_led_by(a, root, later)  # made after B started (B opens it lazily)
    with b.client() as client:
        for name in ("q", later):
            response = client.put(f"/v1/queues/{name}", json={"max_attempts": 2})
            assert_not_leader(response, a.advertised)
            shown = client.put(f"/v1/queues/{name}")  # no change asked: a read, allowed
            assert shown.status_code == 200, shown.text
            assert shown.json()["config"]["max_attempts"] == 5
    for name in ("q", later):  # B wrote nothing: A still leads, settings unchanged
        assert read_queue_file(root, name)["config"]["max_attempts"] == 5
        assert record(root, name)["url"] == a.advertised
    with a.client() as client:
        changed = client.put(f"/v1/queues/{later}", json={"max_attempts": 2})
        assert changed.status_code == 200, changed.text
        assert changed.json()["config"]["max_attempts"] == 2


def test_pushes_through_both_brokers_lose_nothing(
    pair: tuple[BrokerProcess, BrokerProcess, Path],
) -> None:
    a, b, root = pair
    queue = f"busy-{next(_names)}"
    new_queue_led_by(a, root, queue)
    per_task, tasks = 10, 20
    redirects = 0

    async def producer(client: httpx.AsyncClient, start: BrokerProcess, task: int) -> list[str]:
        nonlocal redirects
        ids: list[str] = []
        for i in range(per_task):
            url = start.url
            for _ in range(10):
                response = await client.post(
                    f"{url}/v1/queues/{queue}/push", json={"jobs": [{"payload": [task, i]}]}
                )
                if response.status_code == 503 and response.json()["error"]["code"] == "not_leader":
                    redirects += 1
                    url = response.json()["broker"]  # retry where the queue file points
                    continue
                assert response.status_code == 200, response.text
                ids += response.json()["ids"]
                break
            else:
                pytest.fail(f"task {task} push {i} was never accepted")
        return ids

    async def run() -> list[list[str]]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            return await asyncio.gather(*(producer(client, (a, b)[t % 2], t) for t in range(tasks)))

    ids = [i for batch in asyncio.run(run()) for i in batch]
    total = per_task * tasks
    assert len(ids) == total and len(set(ids)) == total
    assert redirects >= total // 2  # every push that started at B was redirected
    state = read_queue_file(root, queue)
    assert len(state["jobs"]) == total
    assert state["stats"]["pushed"] == total
    payloads = sorted(tuple(job["payload"]) for job in state["jobs"])
    assert payloads == sorted((t, i) for t in range(tasks) for i in range(per_task))
    assert state["broker"]["url"] == a.advertised


def test_brokers_started_together_elect_exactly_one(brokers: BrokerFactory) -> None:
    root = brokers.root()
    made = brokers.run("init", "--root", root, "--queue", "q")
    assert made.returncode == 0, made.stderr
    assert not record(brokers.root_dir())  # `obque init` advertises no broker
    a = brokers.start(root, ready=False)
    b = brokers.start(root, ready=False)
    a.wait_ready()
    b.wait_ready()
    winner_url = wait_until(
        lambda: record(brokers.root_dir()).get("url"), timeout=10, what="a leader"
    )
    winner, loser = (a, b) if winner_url == a.advertised else (b, a)
    assert winner_url == winner.advertised
    assert push_one(winner, 1).status_code == 200
    assert_not_leader(push_one(loser, 2), winner.advertised)
    assert record(brokers.root_dir())["epoch"] == 1


# -- takeover --------------------------------------------------------------------------------


def test_standby_takes_over_when_the_leader_dies(brokers: BrokerFactory) -> None:
    a, b = two_brokers(brokers, broker_timeout=TIMEOUT)
    root = brokers.root_dir()
    before = record(root)
    assert push_one(a, "before").status_code == 200
    assert_not_leader(push_one(b, "refused"), a.advertised)

    a.kill()
    after = wait_until(lambda: led_by(root, b), timeout=15, what="B to take over")
    assert after["epoch"] > before["epoch"]
    assert after["id"] != before["id"]

    response = push_one(b, "after")
    assert response.status_code == 200, response.text
    with b.client() as client:
        jobs = client.get("/v1/queues/q/jobs").json()["jobs"]
        assert [j["payload"] for j in jobs] == ["before", "after"]
        assert client.get("/v1/queues/q/stats").json()["broker"]["url"] == b.advertised


def test_restart_at_the_same_address_takes_over_at_once(brokers: BrokerFactory) -> None:
    root = brokers.root()
    a = brokers.start(root, broker_timeout="30")
    with a.client() as client:
        assert client.put("/v1/queues/q").status_code == 201
    assert push_one(a, "one").status_code == 200
    before = wait_until(lambda: led_by(brokers.root_dir(), a), timeout=10, what="A to lead")
    a.kill()

    # Same address, so it need not wait out the 300 s heartbeat timeout of the dead one:
    # a broker that may not take a queue answers 503 not_leader at once.
    again = brokers.start(root, port=a.port, broker_timeout="300")
    response = push_one(again, "two")
    assert response.status_code == 200, response.text
    after = record(brokers.root_dir())
    assert after["url"] == a.advertised
    assert after["epoch"] == before["epoch"] + 1
    assert after["id"] != before["id"]
    assert len(read_queue_file(brokers.root_dir(), "q")["jobs"]) == 2


def test_a_cleanly_stopped_broker_withdraws_its_url(brokers: BrokerFactory) -> None:
    root = brokers.root()
    a = brokers.start(root, broker_timeout="300")
    with a.client() as client:
        assert client.put("/v1/queues/q").status_code == 201
    assert push_one(a, "one").status_code == 200
    before = wait_until(lambda: led_by(brokers.root_dir(), a), timeout=10, what="A to lead")
    a.stop()  # SIGTERM: uvicorn drains, the lifespan closes the engines

    # The epoch stays (fencing keeps counting up); the URL and the heartbeat go.
    released = record(brokers.root_dir())
    assert (released["url"], released["heartbeat_ms"]) == ("", 0)
    assert (released["id"], released["epoch"]) == (before["id"], before["epoch"])

    # Clients of the file commit in-process again instead of failing against a dead URL.
    with Client((brokers.root_dir() / "q.json").as_uri()) as local:
        local.push("in-process")
    assert len(read_queue_file(brokers.root_dir(), "q")["jobs"]) == 2

    # A broker elsewhere takes over at once, not after the 300 s heartbeat timeout (one
    # that may not take the queue answers 503 not_leader).
    b = brokers.start(root, broker_timeout="300")
    response = push_one(b, "two")
    assert response.status_code == 200, response.text
    after = record(brokers.root_dir())
    assert (after["url"], after["epoch"]) == (b.advertised, before["epoch"] + 1)


# -- fencing --------------------------------------------------------------------------------


def usurp(root_uri: str, url: str, heartbeat_ahead_s: float = 0.0) -> dict[str, Any]:
    """Advertise another broker in ``q.json`` with a newer epoch, as a new leader would.

    ``heartbeat_ahead_s`` dates its heartbeat into the future: a leader that keeps
    heartbeating, without a thread here rewriting the file."""
    store = open_store(root_uri.rstrip("/") + "/q.json")
    committer = Committer(store)
    state = committer.refresh()
    assert state.broker is not None
    newer = BrokerRecord(
        url=url,
        mode="process",
        id="b-usurper",
        epoch=state.broker.epoch + 1,
        heartbeat_ms=int((time.time() + heartbeat_ahead_s) * 1000),
    )
    committed, _ = committer.commit([Advertise(newer)])
    return {"revision": committed.revision, "epoch": newer.epoch}


def test_a_broker_fenced_by_a_newer_epoch_stops_committing(brokers: BrokerFactory) -> None:
    root_uri = brokers.root()
    # A short timeout makes A's writer wake every 0.5 s: plenty of chances to misbehave.
    a = brokers.start(root_uri, broker_timeout=TIMEOUT)
    path = brokers.root_dir() / "q.json"
    with a.client() as client:
        assert client.put("/v1/queues/q").status_code == 201
        assert push_one(a, "kept").status_code == 200
        wait_until(lambda: led_by(brokers.root_dir(), a), timeout=10, what="A to lead")

        other = "http://127.0.0.1:9/newer-broker"
        forced = usurp(root_uri, other, heartbeat_ahead_s=60)
        frozen = path.read_bytes()

        # A does not re-read before writing: its next write conflicts, re-reads, is fenced.
        assert_not_leader(push_one(a, "lost?"), other)
        assert path.read_bytes() == frozen
        for verb, body in (
            ("push", {"jobs": [{"payload": 2}]}),
            ("claim", {"worker": "w"}),
            ("nack", {"leases": [{"id": "1", "lease": "x"}]}),
            ("dead/redrive", None),
        ):
            assert_not_leader(client.post(f"/v1/queues/q/{verb}", json=body), other)
        assert_not_leader(client.put("/v1/queues/q", json={"max_attempts": 2}), other)

        # And it stays fenced: its writer wakes several times meanwhile and writes nothing.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            assert path.read_bytes() == frozen
            time.sleep(0.1)
        state = read_queue_file(brokers.root_dir(), "q")
        assert state["revision"] == forced["revision"]
        assert state["broker"]["id"] == "b-usurper"
        assert state["broker"]["epoch"] == forced["epoch"]
        assert [j["payload"] for j in state["jobs"]] == ["kept"]
        metrics = client.get("/metrics").text
        assert 'obque_leader{queue="q"} 0' in metrics


def test_a_fenced_broker_takes_over_again_when_the_newer_one_goes_silent(
    brokers: BrokerFactory,
) -> None:
    root_uri = brokers.root()
    a = brokers.start(root_uri, broker_timeout=TIMEOUT)
    root = brokers.root_dir()
    with a.client() as client:
        assert client.put("/v1/queues/q").status_code == 201
    mine = wait_until(lambda: led_by(root, a), timeout=10, what="A to lead")
    forced = usurp(root_uri, "http://127.0.0.1:9/gone")  # never heartbeats again

    # A's next heartbeat finds the newer epoch and fences A; once that broker's heartbeat
    # is older than the timeout, A claims the queue afresh, above the newer epoch.
    back = wait_until(lambda: led_by(root, a), timeout=15, what="A to take over again")
    assert back["epoch"] == forced["epoch"] + 1
    assert back["id"] == mine["id"]
    response = push_one(a, "after")
    assert response.status_code == 200, response.text
    assert [j["payload"] for j in read_queue_file(root, "q")["jobs"]] == ["after"]


def test_a_paused_leader_is_fenced_on_resume_and_loses_nothing(brokers: BrokerFactory) -> None:
    a, b = two_brokers(brokers, broker_timeout=TIMEOUT)
    root = brokers.root_dir()
    assert push_one(a, "a-1").status_code == 200

    a.proc.send_signal(signal.SIGSTOP)  # alive but silent: its heartbeat goes stale
    try:
        wait_until(lambda: led_by(root, b), timeout=15, what="B to take over from paused A")
        assert push_one(b, "b-1").status_code == 200
    finally:
        a.proc.send_signal(signal.SIGCONT)

    # A still believes it leads; its first commit attempt finds B's epoch and fences it.
    assert_not_leader(push_one(a, "a-2"), b.advertised)
    assert push_one(b, "b-2").status_code == 200
    wait_until(lambda: not a.alive() or led_by(root, b), timeout=5, what="B to stay leader")
    state = read_queue_file(root, "q")
    assert [j["payload"] for j in state["jobs"]] == ["a-1", "b-1", "b-2"]
    assert state["broker"]["url"] == b.advertised
    with a.client() as client:
        assert 'obque_leader{queue="q"} 0' in client.get("/metrics").text


def log_events(broker: BrokerProcess) -> list[dict[str, Any]]:
    """The broker's structured log lines (JSON, one per line; the CLI's banner is not)."""
    return [json.loads(line) for line in broker.log().splitlines() if line.startswith("{")]


def test_fencing_is_logged_as_a_structured_line(brokers: BrokerFactory) -> None:
    root_uri = brokers.root()
    a = brokers.start(root_uri, broker_timeout=TIMEOUT)
    with a.client() as client:
        assert client.put("/v1/queues/q").status_code == 201
    mine = wait_until(lambda: led_by(brokers.root_dir(), a), timeout=10, what="A to lead")
    other = "http://127.0.0.1:9/newer-broker"
    usurp(root_uri, other, heartbeat_ahead_s=60)
    assert_not_leader(push_one(a, "lost?"), other)

    def fenced() -> dict[str, Any] | None:
        lines = [e for e in log_events(a) if e.get("event") == "leader_fenced"]
        return lines[0] if lines else None

    line = wait_until(fenced, timeout=10, what="the fencing line in A's log")
    assert (line["queue"], line["leader"], line["epoch"]) == ("q", other, mine["epoch"])
    assert (line["level"], line["logger"]) == ("warning", "obque.commit")
    assert other in line["msg"]
    assert a.stop() in (0, -signal.SIGTERM)
    events = log_events(a)
    # Every line the process logged is JSON with the same four keys first.
    assert all(list(e)[:4] == ["ts", "level", "logger", "msg"] for e in events), events
    taken = [e for e in events if e.get("event") == "leader_acquired"]
    assert [(e["queue"], e["url"], e["epoch"]) for e in taken] == [("q", a.advertised, 1)]
    # Fenced once, not again on every wake of its writer; it never claims to release.
    assert [e.get("event") for e in events].count("leader_fenced") == 1
    assert not [e for e in events if e.get("event") == "leader_released"]
