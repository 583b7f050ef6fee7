"""``Client`` and ``AsyncClient`` against real ``obque broker`` processes and in-process
queues (SPEC §6, §8).

The job lifecycle tests are one contract run against every way a client reaches a queue:
a queue file that advertises a broker, a broker URL with a queue name, a ``file://``
queue served in-process, and a ``mem://`` queue. Resolution, hand-over, broker failover
and store fault tests start their own brokers.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import itertools
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

# broker_proc is also loaded as a plugin (its fixtures and report hook); have its asserts
# rewritten before the import below, as pytest does for plugins.
pytest.register_assert_rewrite("broker_proc")

from broker_proc import (  # noqa: E402
    BrokerFactory,
    BrokerProcess,
    attach_logs,
    read_queue_file,
    wait_until,
)
from servers import StoreServer  # noqa: E402

from obque.client import AsyncClient, AsyncJob, Client, PushItem, RetryPolicy  # noqa: E402
from obque.commit import create_queue  # noqa: E402
from obque.core import InvalidRequest, QueueNotFound  # noqa: E402
from obque.store import open_store  # noqa: E402

pytest_plugins = ["broker_proc"]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

_serial = itertools.count()

#: Rides out a broker restart or takeover (several seconds) without failing a call.
PATIENT = RetryPolicy(attempts=60, base_seconds=0.05, cap_seconds=0.5)


# -- helpers ---------------------------------------------------------------------------------


def queue_uri(root_dir: Path, name: str) -> str:
    return (root_dir / f"{name}.json").resolve().as_uri()


def make_queue(root_dir: Path, name: str = "q", **config: object) -> str:
    """Create ``ROOT/NAME.json`` directly in the store; returns its URI."""
    uri = queue_uri(root_dir, name)
    created, _ = create_queue(open_store(uri), name, dict(config))
    assert created
    return uri


def advertised(root_dir: Path, name: str) -> str | None:
    broker = read_queue_file(root_dir, name).get("broker") or {}
    url: str | None = broker.get("url")
    return url


def wait_advertised(root_dir: Path, name: str, broker: BrokerProcess) -> None:
    wait_until(
        lambda: advertised(root_dir, name) == broker.advertised,
        timeout=20,
        what=f"{broker} to advertise itself in {name}.json",
    )


def sample(broker: BrokerProcess, name: str, **labels: str) -> float:
    """One sample of the broker's /metrics, parsed (0 when absent)."""
    text = httpx.get(f"{broker.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return 0.0


def metric(broker: BrokerProcess, name: str, queue: str) -> float:
    """One per-queue sample from the broker's /metrics (0 when absent)."""
    return sample(broker, name, queue=queue)


def metric_kind(broker: BrokerProcess, kind: str, queue: str = "q") -> float:
    """The broker's store requests of one kind (reads, writes, errors, conflicts...)."""
    return sample(broker, "obque_store_requests_total", queue=queue, kind=kind)


def ops_through(broker: BrokerProcess, queue: str) -> float:
    """Operations this broker committed for ``queue``: proof a client went through it."""
    return metric(broker, "obque_ops_total", queue)


def payloads(jobs: list[dict[str, Any]]) -> list[Any]:
    return [job["payload"] for job in jobs]


def now_ms() -> int:
    return int(time.time() * 1000)


# -- where the queue is: the contract's parameter ---------------------------------------------


@pytest.fixture(scope="module")
def shared_broker(module_brokers: BrokerFactory) -> BrokerProcess:
    return module_brokers.start(module_brokers.root("shared"))


@dataclass
class QueueUnderTest:
    """A fresh queue and how a client names it in one of the ways it can be reached."""

    mode: str
    name: str
    target: str
    queue: str | None = None
    broker: BrokerProcess | None = None
    opened: list[Client] = field(default_factory=list)

    def client(self, **options: Any) -> Client:
        client = Client(self.target, self.queue, **options)
        self.opened.append(client)
        return client

    def aclient(self, **options: Any) -> AsyncClient:
        return AsyncClient(self.target, self.queue, **options)

    def close(self) -> None:
        for client in self.opened:
            client.close()


MODES = ["broker-file", "broker-url", "embedded-file", "mem"]


@pytest.fixture(params=MODES)
def where(
    request: pytest.FixtureRequest,
    module_brokers: BrokerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[QueueUnderTest]:
    for variable in ("OBQUE_URL", "OBQUE_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    mode: str = request.param
    name = f"c{next(_serial)}"
    if mode.startswith("broker"):
        broker: BrokerProcess = request.getfixturevalue("shared_broker")
        attach_logs(request, module_brokers)
        response = httpx.put(f"{broker.url}/v1/queues/{name}", json={}, timeout=10)
        assert response.status_code == 201, response.text
        root_dir = module_brokers.root_dir("shared")
        wait_advertised(root_dir, name, broker)
        if mode == "broker-file":
            under = QueueUnderTest(mode, name, queue_uri(root_dir, name), broker=broker)
        else:
            under = QueueUnderTest(mode, name, broker.url, queue=name, broker=broker)
    elif mode == "embedded-file":
        under = QueueUnderTest(mode, name, make_queue(tmp_path, name))
    else:
        uri = f"mem://obque-test-{name}-{id(tmp_path)}/{name}.json"
        create_queue(open_store(uri), name)
        under = QueueUnderTest(mode, name, uri)
    try:
        yield under
    finally:
        under.close()


# -- the job lifecycle, in every mode ----------------------------------------------------------


def test_push_claim_ack(where: QueueUnderTest) -> None:
    q = where.client()
    assert q.queue == where.name
    first = q.push({"video": "a.mp4"})
    rest = q.push_many([{"n": 1}, PushItem({"n": 2}, key="two"), "three"])
    ids = [first, *rest]
    assert len(set(ids)) == 4

    claimed = q.claim("w1", max=10)
    assert [j.id for j in claimed] == ids  # FIFO
    assert [j.payload for j in claimed] == [{"video": "a.mp4"}, {"n": 1}, {"n": 2}, "three"]
    assert all(j.attempt == 1 and j.settled is None for j in claimed)
    assert q.stats()["claimed"] == 4
    assert [j["id"] for j in q.list_jobs("claimed")] == ids
    assert all("lease" not in j for j in q.list_jobs("claimed"))

    assert all(j.ack() for j in claimed)
    assert [j.settled for j in claimed] == ["acked"] * 4
    assert claimed[0].ack() is False  # already acked: the lease is gone
    assert claimed[0].settled == "lost"
    stats = q.stats()
    assert (stats["pushed"], stats["acked"], stats["ready"], stats["claimed"]) == (4, 4, 0, 0)
    assert stats["name"] == where.name
    assert q.claim("w1") == []


def test_keys_deduplicate(where: QueueUnderTest) -> None:
    q = where.client()
    job_id = q.push({"video": "a.mp4"}, key="upload-a")
    assert q.push({"video": "other"}, key="upload-a") == job_id
    assert q.push_many([PushItem(1, key="upload-a"), PushItem(2, key="upload-b")])[0] == job_id
    (job,) = q.claim("w1")
    assert job.ack()
    # An acked key still deduplicates for the queue's dedup window.
    assert q.push({"video": "again"}, key="upload-a") == job_id
    assert q.stats()["pushed"] == 2


def test_nack_retry_dead_letters_redrive_purge(where: QueueUnderTest) -> None:
    q = where.client()
    a, b, c = q.push_many(["a", "b", "c"])
    ja, jb, jc = q.claim("w1", max=3)
    assert ja.nack(delay=0, error="try again")
    assert jb.nack(delay=600, error="later please")
    assert jc.nack(dead=True, error="poison")
    assert [ja.settled, jb.settled, jc.settled] == ["nacked"] * 3

    (ready,) = q.list_jobs("ready")
    assert (ready["id"], ready["attempts"], ready["last_error"]) == (a, 1, "try again")
    (delayed,) = q.list_jobs("delayed")
    assert (delayed["id"], delayed["last_error"]) == (b, "later please")
    assert delayed["ready_ms"] > now_ms() + 500_000
    (dead,) = q.dead()
    assert (dead["id"], dead["last_error"], dead["payload"]) == (c, "poison", "c")

    (again,) = q.claim("w2")
    assert (again.id, again.attempt) == (a, 2)
    assert again.ack()

    assert q.redrive([c]) == 1
    assert q.dead() == []
    (redriven,) = q.list_jobs("ready")
    assert redriven["id"] == c
    (jc,) = q.claim("w1")
    assert jc.nack(dead=True, error="still poison")
    assert q.purge() == 1
    assert q.redrive() == 0
    stats = q.stats()
    assert (stats["dead"], stats["ready"], stats["delayed"], stats["acked"]) == (0, 0, 1, 1)


def test_heartbeat_extends_the_lease(where: QueueUnderTest) -> None:
    q = where.client()
    q.push("x")
    (job,) = q.claim("w1", lease_seconds=5)
    assert job.lease_expires_ms <= now_ms() + 5_500
    assert job.heartbeat(lease_seconds=120)
    assert job.lease_expires_ms >= now_ms() + 100_000
    (listed,) = q.list_jobs("claimed")
    assert listed["lease_expires_ms"] == job.lease_expires_ms
    assert job.ack()
    assert job.heartbeat() is False


def test_background_heartbeats_hold_a_lease(where: QueueUnderTest) -> None:
    q = where.client()
    q.push_many(["held", "dropped"])
    (held,) = q.claim("w1", lease_seconds=3, heartbeat=True)
    (dropped,) = q.claim("w2", lease_seconds=3)
    first_expiry = held.lease_expires_ms
    # Wait past both leases: only the heartbeated one is still claimed.
    wait_until(
        lambda: q.stats()["expired"] >= 1 and now_ms() > first_expiry + 1500,
        timeout=15,
        what="the unheartbeated lease to lapse",
    )
    assert held.lease_expires_ms > first_expiry
    assert dropped.ack() is False
    assert held.ack() is True
    assert q.stats()["expired"] == 1


def test_heartbeats_renew_the_claimed_lease_length(where: QueueUnderTest) -> None:
    """A lease claimed longer than the queue's default keeps its length when heartbeated
    (renewing with the default would shorten it and make every later round due at once)."""
    q = where.client()
    q.configure(lease_seconds=2)
    q.push("long job")
    (job,) = q.claim("w1", lease_seconds=10, heartbeat=True)
    first_expiry = job.lease_expires_ms
    wait_until(lambda: job.lease_expires_ms > first_expiry, timeout=20, what="a heartbeat")
    assert job.lease_expires_ms / 1000 - time.time() > 6  # renewed for 10 s, not 2 s
    revision = q.stats()["revision"]
    time.sleep(1.5)  # a window to count commits in: the next renewal is ~3 s away
    # At most a broker's own leadership heartbeat: no heartbeat every loop round.
    assert q.stats()["revision"] - revision <= 1
    assert job.ack()


def test_with_job_acks_or_nacks_with_the_error(where: QueueUnderTest) -> None:
    q = where.client()
    ok_id = q.push({"ok": True})
    bad_id = q.push({"ok": False})
    fatal_id = q.push({"ok": False}, max_attempts=1)
    seen: list[str] = []
    for job in q.jobs("w1", wait=1):
        with contextlib.suppress(ValueError), job:
            seen.append(job.id)
            if not job.payload["ok"]:
                raise ValueError(f"cannot handle {job.id}")
        if len(seen) == 3:
            break
    assert seen == [ok_id, bad_id, fatal_id]

    (retried,) = q.list_jobs("delayed") or q.list_jobs("ready")
    assert retried["id"] == bad_id
    assert retried["last_error"] == f"ValueError: cannot handle {bad_id}"
    (dead,) = q.dead()
    assert dead["id"] == fatal_id
    assert dead["last_error"] == f"ValueError: cannot handle {fatal_id}"
    stats = q.stats()
    assert (stats["acked"], stats["nacked"], stats["claimed"]) == (1, 2, 0)


def test_jobs_iterates_in_order_and_settles(where: QueueUnderTest) -> None:
    q = where.client()
    ids = q.push_many([{"n": n} for n in range(7)])
    got: list[int] = []
    for job in q.jobs("w1", batch=3, wait=1):
        with job:
            got.append(job.payload["n"])
        if len(got) == 7:
            break
    assert got == list(range(7))
    assert q.stats()["acked"] == len(ids)


def long_poll(q: Client, producer: Client, wait: float) -> float:
    """Seconds a claim waiting up to ``wait`` took to get a job ``producer`` pushed at 0.5 s."""
    timer = threading.Timer(0.5, lambda: producer.push("late"))
    timer.start()
    try:
        started = time.monotonic()
        jobs = q.claim("w1", wait=wait)
        waited = time.monotonic() - started
    finally:
        timer.join()
    assert [j.payload for j in jobs] == ["late"]
    assert jobs[0].ack()
    return waited


def test_claim_long_polls(where: QueueUnderTest) -> None:
    q = where.client()
    assert 0.3 < long_poll(q, q, wait=10) < 5  # pushed from another thread, same client
    started = time.monotonic()
    assert q.claim("w1", wait=0.5) == []
    assert time.monotonic() - started >= 0.4


def test_claim_long_poll_wakes_for_another_clients_push(
    where: QueueUnderTest, request: pytest.FixtureRequest
) -> None:
    assert 0.3 < long_poll(where.client(), where.client(), wait=4) < 3


def test_configure(where: QueueUnderTest) -> None:
    q = where.client()
    config = q.configure(lease_seconds=60, max_attempts=2)
    assert (config["lease_seconds"], config["max_attempts"]) == (60, 2)
    q.push("x")
    (job,) = q.claim("w1")
    assert now_ms() + 50_000 < job.lease_expires_ms <= now_ms() + 61_000
    with pytest.raises(InvalidRequest, match="lease_seconds"):
        q.configure(lease_seconds=0)


def test_async_client_surface(where: QueueUnderTest) -> None:
    async def main() -> None:
        async with where.aclient() as q:
            assert q.queue == where.name
            first = await q.push({"n": 0}, key="zero")
            assert await q.push({"n": 0}, key="zero") == first
            ids = [first, *await q.push_many([{"n": 1}, PushItem({"n": 2}, delay_seconds=600)])]
            assert len(set(ids)) == 3

            (job,) = await q.claim("w1", lease_seconds=5)
            assert (job.id, job.payload, job.attempt) == (first, {"n": 0}, 1)
            assert await job.heartbeat(lease_seconds=60)
            assert job.lease_expires_ms > now_ms() + 50_000
            assert await job.nack(delay=0, error="again")

            seen: list[AsyncJob] = []
            async with contextlib.aclosing(q.jobs("w2", wait=1)) as stream:
                async for job in stream:
                    with contextlib.suppress(RuntimeError):
                        async with job:
                            seen.append(job)
                            if job.payload["n"] == 1:
                                raise RuntimeError("no ones")
                    if len(seen) == 2:
                        break
            assert [(j.id, j.attempt, j.settled) for j in seen] == [
                (first, 2, "acked"),
                (ids[1], 1, "nacked"),
            ]
            delayed = await q.list_jobs("delayed")
            assert {j["id"]: j.get("last_error") for j in delayed} == {
                ids[1]: "RuntimeError: no ones",
                ids[2]: None,
            }

            (late,) = [j for j in delayed if j["id"] == ids[1]]
            assert late["attempts"] == 1
            config = await q.configure(max_attempts=1)
            assert config["max_attempts"] == 1
            stats = await q.stats()
            assert (stats["pushed"], stats["acked"], stats["nacked"]) == (3, 1, 2)
            assert await q.dead() == []
            assert await q.redrive() == 0
            assert await q.purge(["no-such-id"]) == 0

    asyncio.run(main())


def test_async_dead_letters(where: QueueUnderTest) -> None:
    async def main() -> None:
        async with where.aclient() as q:
            (job_id,) = await q.push_many(["poison"])
            (job,) = await q.claim("w1")
            assert await job.nack(dead=True, error="bad input")
            (dead,) = await q.dead()
            assert (dead["id"], dead["last_error"]) == (job_id, "bad input")
            assert await q.redrive([job_id]) == 1
            (job,) = await q.claim("w1")
            assert job.attempt == 1  # redrive resets attempts
            assert await job.nack(dead=True)
            assert await q.purge([job_id]) == 1
            assert (await q.stats())["dead"] == 0

    asyncio.run(main())


def test_mixed_clients_share_one_queue(where: QueueUnderTest) -> None:
    """A second sync client and an async one see what the first pushed."""
    first, second = where.client(), where.client()
    a = first.push("from first")
    b = second.push("from second")

    async def consume() -> list[str]:
        async with where.aclient() as q:
            jobs = await q.claim("w1", max=5)
            for job in jobs:
                await job.ack()
            return [j.id for j in jobs]

    assert asyncio.run(consume()) == [a, b]
    assert first.stats()["acked"] == 2
    assert second.stats()["acked"] == 2


# -- resolution ------------------------------------------------------------------------------


def test_queue_file_resolves_to_its_broker(brokers: BrokerFactory) -> None:
    root_dir = brokers.root_dir()
    uri = make_queue(root_dir, "emails")
    broker = brokers.start(brokers.root())
    wait_advertised(root_dir, "emails", broker)
    revision = read_queue_file(root_dir, "emails")["revision"]
    assert ops_through(broker, "emails") == 0

    with Client(uri) as q:
        ids = [q.push({"to": f"user{i}@example.com"}) for i in range(3)]
        stats = q.stats()
    assert stats["broker"]["url"] == broker.url
    assert stats["pushed"] == 3
    assert ops_through(broker, "emails") == 3
    assert read_queue_file(root_dir, "emails")["revision"] > revision

    async def main() -> str:
        async with AsyncClient(uri) as q:
            return await q.push("async")

    ids.append(asyncio.run(main()))
    assert ops_through(broker, "emails") == 4
    assert len(set(ids)) == 4


def test_broker_url_with_a_queue_name(brokers: BrokerFactory) -> None:
    root_dir = brokers.root_dir()
    make_queue(root_dir, "emails")
    make_queue(root_dir, "queue")
    broker = brokers.start(brokers.root())

    with Client(broker.url, queue="emails") as q:
        q.push(1)
    with Client(broker.url + "/") as q:  # the default queue is "queue"
        assert q.queue == "queue"
        q.push(2)
        q.push(3)
    assert (ops_through(broker, "emails"), ops_through(broker, "queue")) == (1, 2)

    slow_retries = RetryPolicy(attempts=3, base_seconds=10, cap_seconds=10)
    started = time.monotonic()
    with (
        Client(broker.url, queue="missing", retry=slow_retries) as q,
        pytest.raises(QueueNotFound, match="missing"),
    ):
        q.push(1)
    assert time.monotonic() - started < 4  # not retried (a retry would wait 5 s or more)

    async def main() -> None:
        async with AsyncClient(broker.url, queue="emails") as q:
            assert (await q.stats())["pushed"] == 1
        async with AsyncClient(broker.url, queue="nope") as q:
            with pytest.raises(QueueNotFound, match="nope"):
                await q.stats()

    asyncio.run(main())
    with pytest.raises(InvalidRequest, match="queue name"):
        Client(broker.url, queue="Not A Name")


def test_obque_url_overrides_resolution(
    brokers: BrokerFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root_dir = brokers.root_dir()
    make_queue(root_dir, "emails")
    broker = brokers.start(brokers.root())
    monkeypatch.setenv("OBQUE_URL", broker.url)
    # The file named here does not exist; OBQUE_URL says where to go, and the queue is
    # still the one the file names.
    elsewhere = (tmp_path / "nowhere" / "emails.json").as_uri()
    with Client(elsewhere) as q:
        assert q.queue == "emails"
        q.push("overridden")
    assert ops_through(broker, "emails") == 1

    # direct=True ignores OBQUE_URL: it commits to the file itself.
    with Client(queue_uri(root_dir, "emails"), direct=True) as q:
        q.push("direct")
        assert q.stats()["pushed"] == 2
    assert ops_through(broker, "emails") == 1


def test_embedded_file_queue_commits_to_the_file(tmp_path: Path) -> None:
    uri = make_queue(tmp_path, "local")
    with Client(uri) as a, Client(uri) as b:
        a.push("from a")
        b.push("from b")
        assert read_queue_file(tmp_path, "local")["revision"] == 3
        assert read_queue_file(tmp_path, "local").get("broker") is None
        assert payloads(a.list_jobs()) == ["from a", "from b"]
        assert a.stats()["pushed"] == b.stats()["pushed"] == 2
        (job,) = b.claim("w1")
        assert job.payload == "from a"
        assert job.ack()
        assert a.stats()["acked"] == 1
    assert [j["payload"] for j in read_queue_file(tmp_path, "local")["jobs"]] == ["from b"]


def test_embedded_queue_must_exist(tmp_path: Path) -> None:
    uri = (tmp_path / "absent.json").as_uri()
    with Client(uri) as q, pytest.raises(QueueNotFound, match="obque init"):
        q.push(1)
    with Client(f"mem://obque-absent-{id(tmp_path)}/q.json") as q, pytest.raises(QueueNotFound):
        q.push(1)


def test_embedded_client_hands_over_to_a_new_broker(brokers: BrokerFactory) -> None:
    root_dir = brokers.root_dir()
    uri = make_queue(root_dir, "q")
    with Client(uri, retry=PATIENT) as q:
        before = q.push("in-process")
        broker = brokers.start(brokers.root())
        wait_advertised(root_dir, "q", broker)
        after = q.push("through the broker")
        assert ops_through(broker, "q") == 1
        assert payloads(q.list_jobs()) == ["in-process", "through the broker"]
        assert q.stats()["broker"]["url"] == broker.url
    assert before != after


# -- queue files in object stores ---------------------------------------------------------------


def advertised_at(uri: str) -> str | None:
    """The broker URL the queue object at ``uri`` advertises."""
    snap = open_store(uri).read()
    if snap is None:
        return None
    url: str | None = (json.loads(snap.data).get("broker") or {}).get("url")
    return url


@pytest.mark.parametrize("server", ["seaweedfs_s3", "fake_gcs"], ids=["s3", "gs"])
def test_cloud_queue_file_resolves_to_its_broker(
    request: pytest.FixtureRequest, brokers: BrokerFactory, server: str
) -> None:
    """``Client("s3://…")`` / ``Client("gs://…")`` reads the object, finds the broker
    serving that root, and every operation goes through it."""
    store: StoreServer = request.getfixturevalue(server)  # env applied: brokers inherit it
    prefix = f"client-{uuid.uuid4().hex[:8]}"
    uri = store.uri(f"{prefix}/emails.json")
    assert uri.startswith(f"{store.scheme}://")
    created, _ = create_queue(open_store(uri), "emails")
    assert created
    broker = brokers.start(store.uri(f"{prefix}/"))
    wait_until(
        lambda: advertised_at(uri) == broker.advertised,
        timeout=30,
        what=f"{broker} to advertise itself in {uri}",
    )

    with Client(uri) as q:
        assert q.queue == "emails"
        ids = [q.push({"n": n}) for n in range(3)]
        (job,) = q.claim("w1")
        assert job.payload == {"n": 0}
        assert job.ack()
        stats = q.stats()

    async def apush() -> str:
        async with AsyncClient(uri) as aq:
            return await aq.push("async")

    ids.append(asyncio.run(apush()))
    assert len(set(ids)) == 4
    assert stats["broker"]["url"] == broker.url
    assert (stats["pushed"], stats["acked"]) == (3, 1)
    # Pushes, the claim and the ack were all committed by the broker, not in-process.
    assert ops_through(broker, "emails") == 6
    in_store = json.loads(open_store(uri).read().data)  # type: ignore[union-attr]
    assert sorted(j["id"] for j in in_store["jobs"]) == sorted(ids[1:])


def test_cloud_queue_without_a_broker_is_one_clear_error(seaweedfs_s3: StoreServer) -> None:
    """An s3:// queue nobody serves is not served in-process behind the user's back: the
    error names the object and the ways out (a broker, or ``direct=True``)."""
    uri = seaweedfs_s3.uri(f"client-{uuid.uuid4().hex[:8]}/lonely.json")
    create_queue(open_store(uri), "lonely")
    with Client(uri) as q, pytest.raises(InvalidRequest) as raised:
        q.push(1)
    message = raised.value.message
    assert "\n" not in message
    assert f"{uri} advertises no broker" in message
    assert "obque broker" in message and "direct=True" in message
    # As the message says: direct=True commits to the object from this process.
    with Client(uri, direct=True) as q:
        q.push("direct")
        assert q.stats()["pushed"] == 1
    assert advertised_at(uri) is None


# -- failover and faults ------------------------------------------------------------------------


@dataclass
class Pusher:
    """Pushes from one ``Client`` on a thread until stopped, recording every id."""

    push: Callable[[int], str]
    ids: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def run(self) -> None:
        for n in itertools.count():
            if self.stop.is_set():
                return
            try:
                self.ids.append(self.push(n))
            except BaseException as exc:  # reported by the test
                self.errors.append(exc)
                return

    def start(self) -> Pusher:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def wait_for(self, count: int, timeout: float) -> None:
        wait_until(
            lambda: len(self.ids) >= count or self.errors,
            timeout=timeout,
            what=f"{count} pushes (have {len(self.ids)})",
        )
        assert not self.errors, self.errors

    def finish(self) -> list[str]:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(60)
        assert not self.thread.is_alive()
        assert not self.errors, self.errors
        return self.ids


def test_failover_to_a_standby_loses_no_push(brokers: BrokerFactory) -> None:
    root_dir = brokers.root_dir()
    uri = make_queue(root_dir, "q")
    first = brokers.start(brokers.root())
    wait_advertised(root_dir, "q", first)

    with Client(uri, retry=PATIENT) as q:
        keyed = Pusher(lambda n: q.push({"n": n, "keyed": True}, key=f"k-{n}")).start()
        plain = Pusher(lambda n: q.push({"n": n})).start()
        keyed.wait_for(20, timeout=30)
        plain.wait_for(20, timeout=30)
        first.kill()
        during = len(keyed.ids) + len(plain.ids)
        second = brokers.start(brokers.root(), broker_timeout=1.0)
        wait_advertised(root_dir, "q", second)
        keyed.wait_for(len(keyed.ids) + 20, timeout=30)
        plain.wait_for(len(plain.ids) + 20, timeout=30)
        ids = keyed.finish() + plain.finish()
        stats = q.stats()

    assert len(ids) > during
    assert len(set(ids)) == len(ids)
    assert stats["pushed"] == len(ids)
    assert stats["broker"]["url"] == second.url
    assert ops_through(second, "q") >= len(ids) - during
    in_file = read_queue_file(root_dir, "q")
    assert sorted(j["id"] for j in in_file["jobs"]) == sorted(ids)
    keyed_ns = [j["payload"]["n"] for j in in_file["jobs"] if "keyed" in j["payload"]]
    assert sorted(keyed_ns) == list(range(len(keyed_ns)))


def test_the_default_policy_rides_out_a_crash_failover(brokers: BrokerFactory) -> None:
    """No retry policy given: a push sent while the leader is dead waits for the standby
    (default --broker-timeout 10 s: it takes over 10-13 s after the crash) and lands once."""
    root_dir = brokers.root_dir()
    uri = make_queue(root_dir, "q")
    first = brokers.start(brokers.root())
    wait_advertised(root_dir, "q", first)
    standby = brokers.start(brokers.root())  # waits while the leader's heartbeat is fresh
    with Client(uri) as q:
        ids = [q.push({"n": n}) for n in range(3)]
        assert ops_through(first, "q") == 3
        first.kill()
        # Sent while the dead broker is still advertised (the standby waits 10 s for its
        # heartbeat to age): refused, re-read, retried until the standby leads.
        assert advertised(root_dir, "q") == first.advertised
        ids.append(q.push({"n": 3}))
        ids.append(q.push({"n": 4}, key="after-the-crash"))
        stats = q.stats()
    assert advertised(root_dir, "q") == standby.url
    assert stats["broker"]["url"] == standby.url
    assert ops_through(standby, "q") == 2
    assert len(set(ids)) == len(ids) == 5
    assert stats["pushed"] == 5
    in_file = read_queue_file(root_dir, "q")
    assert sorted(j["id"] for j in in_file["jobs"]) == sorted(ids)


def test_client_follows_not_leader_to_the_new_broker(brokers: BrokerFactory) -> None:
    """A broker that lost the queue answers 503 not_leader; the client re-reads the queue
    file and goes to the new one (no failure, no duplicate)."""
    root_dir = brokers.root_dir()
    uri = make_queue(root_dir, "q")
    first = brokers.start(brokers.root())
    wait_advertised(root_dir, "q", first)
    with Client(uri, retry=PATIENT) as q:
        ids = [q.push({"n": n}) for n in range(3)]
        # A standby with a short timeout takes over while the first broker still runs
        # (its heartbeats are 10 s / 3 apart): the first is fenced at its next commit.
        second = brokers.start(brokers.root(), broker_timeout=1.0)
        wait_advertised(root_dir, "q", second)
        assert first.alive()
        ids += [q.push({"n": n}) for n in range(3, 6)]
        stats = q.stats()
    assert len(set(ids)) == 6
    assert stats["pushed"] == 6
    assert stats["broker"]["url"] == second.url
    assert ops_through(second, "q") == 3
    assert ops_through(first, "q") == 3


def test_async_client_rides_out_a_failover(brokers: BrokerFactory) -> None:
    root_dir = brokers.root_dir()
    uri = make_queue(root_dir, "q")
    first = brokers.start(brokers.root())
    wait_advertised(root_dir, "q", first)

    async def main() -> tuple[list[str], dict[str, Any]]:
        async with AsyncClient(uri, retry=PATIENT) as q:
            ids = [await q.push({"n": n}) for n in range(10)]
            first.kill()
            second = await asyncio.to_thread(brokers.start, brokers.root(), broker_timeout=1.0)
            pushes = asyncio.gather(*(q.push({"n": n}) for n in range(10, 30)))
            ids += await pushes
            stats = await q.stats()
            assert stats["broker"]["url"] == second.url
            return ids, stats

    ids, stats = asyncio.run(main())
    assert len(set(ids)) == len(ids) == 30
    assert stats["pushed"] == 30


# Seeds whose first draws spare the broker's startup (listing the root, reading and
# advertising in the queue file): a fault there stops the broker (reported separately).
@pytest.mark.parametrize("seed", [3, 5, 10])
def test_store_faults_never_duplicate_a_push(brokers: BrokerFactory, seed: int) -> None:
    root_dir = brokers.root_dir()
    uri = make_queue(root_dir, "q")
    broker = brokers.start(brokers.root(query=f"faults=0.2&seed={seed}"))
    wait_advertised(root_dir, "q", broker)
    keys = [f"key-{n}" for n in range(30)]

    with Client(uri, retry=PATIENT) as q:

        def push_plain(worker: int) -> list[str]:
            return [q.push({"worker": worker, "n": n}) for n in range(15)]

        def push_keyed(worker: int) -> list[str]:
            mine = keys[worker::2]
            # Each key twice: the second push must answer the first one's id.
            return [q.push({"key": k}, key=k) for k in mine + mine]

        results: list[list[str]] = []
        threads = [
            threading.Thread(target=lambda w=w: results.append(push_plain(w))) for w in range(4)
        ] + [threading.Thread(target=lambda w=w: results.append(push_keyed(w))) for w in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(results) == len(threads)
        batch = q.push_many([{"batch": n} for n in range(40)])
        stats = q.stats()

    in_file = read_queue_file(root_dir, "q")
    jobs = in_file["jobs"]
    plain = [j for j in jobs if "worker" in j["payload"]]
    keyed = [j for j in jobs if "key" in j["payload"]]
    batched = [j for j in jobs if "batch" in j["payload"]]
    assert len(plain) == 4 * 15
    assert sorted(j["payload"]["key"] for j in keyed) == sorted(keys)
    assert sorted(j["id"] for j in batched) == sorted(batch)
    all_ids = [i for r in results for i in r]
    assert len(set(all_ids)) == 60 + 30
    assert stats["pushed"] == len(jobs) == 60 + 30 + 40
    assert len({j["id"] for j in jobs}) == len(jobs)
    # Faults were injected and survived: failed store calls and spurious conflicts.
    assert metric_kind(broker, "errors") + metric_kind(broker, "conflicts") > 5


class LossyProxy:
    """An HTTP proxy in front of a broker that loses a seeded fraction of exchanges:
    half answer 502 without forwarding, half forward and then hang up without answering
    (the broker committed; the client never hears). Counts what it did."""

    def __init__(self, upstream: str, rate: float, seed: int) -> None:
        self.upstream = upstream
        self.rate = rate
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts = {"forwarded": 0, "refused": 0, "lost": 0}
        self.http = httpx.Client(base_url=upstream, timeout=60)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.relay(b"")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.relay(body)

            do_PUT = do_POST

            def relay(self, body: bytes) -> None:
                fate = proxy.draw() if self.command == "POST" else "forwarded"
                if fate == "refused":
                    self.answer(502, b"<html>502 Bad Gateway</html>", "text/html")
                    return
                upstream = proxy.http.request(
                    self.command,
                    self.path,
                    content=body,
                    headers={"Content-Type": "application/json"},
                )
                if fate == "lost":
                    self.close_connection = True  # hang up: no status line at all
                    return
                self.answer(upstream.status_code, upstream.content, "application/json")

            def answer(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def draw(self) -> str:
        with self.lock:
            roll = self.rng.random()
            fate = (
                "forwarded"
                if roll >= self.rate
                else ("refused" if roll < self.rate / 2 else "lost")
            )
            self.counts[fate] += 1
            return fate

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)
        self.http.close()


@dataclass(frozen=True)
class CountingPolicy(RetryPolicy):
    """A retry policy that records each retry it grants."""

    granted: list[float] = field(default_factory=list, compare=False, hash=False)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        wait = super().delay(attempt, retry_after)
        self.granted.append(wait)
        return wait


@pytest.mark.parametrize("seed", [1, 2])
def test_lost_answers_never_duplicate_a_push(brokers: BrokerFactory, seed: int) -> None:
    """Between client and broker, 30 % of pushes fail: refused (nothing happened) or
    answered by a hang-up after the broker committed. Every retry repeats the push's key,
    so each push lands exactly once."""
    root_dir = brokers.root_dir()
    make_queue(root_dir, "q")
    broker = brokers.start(brokers.root())
    proxy = LossyProxy(broker.url, rate=0.3, seed=seed)
    policy = CountingPolicy(attempts=30, base_seconds=0.01, cap_seconds=0.1)
    try:
        with Client(proxy.url, queue="q", retry=policy) as q:
            plain = [q.push({"n": n}) for n in range(60)]
            keyed = [q.push({"k": n}, key=f"key-{n}") for n in range(20)]
            keyed_again = [q.push({"k": n}, key=f"key-{n}") for n in range(20)]
            batch = q.push_many([{"b": n} for n in range(50)])

        async def apush() -> list[str]:
            async with AsyncClient(proxy.url, queue="q", retry=policy) as aq:
                return list(await asyncio.gather(*(aq.push({"a": n}) for n in range(30))))

        concurrent = asyncio.run(apush())
    finally:
        proxy.close()

    assert proxy.counts["lost"] >= 5 and proxy.counts["refused"] >= 5, proxy.counts
    assert len(policy.granted) >= proxy.counts["lost"] + proxy.counts["refused"]
    assert keyed_again == keyed
    ids = plain + keyed + batch + concurrent
    assert len(set(ids)) == len(ids) == 60 + 20 + 50 + 30
    in_file = read_queue_file(root_dir, "q")
    assert in_file["stats"]["pushed"] == len(in_file["jobs"]) == len(ids)
    assert sorted(j["id"] for j in in_file["jobs"]) == sorted(ids)


def test_lost_claim_answers_are_delivered_again(brokers: BrokerFactory) -> None:
    """A claim whose answer is lost leaves its jobs claimed by nobody who knows; they come
    back when the lease lapses (at-least-once), so every job is still handled."""
    root_dir = brokers.root_dir()
    make_queue(root_dir, "q")
    broker = brokers.start(brokers.root())
    proxy = LossyProxy(broker.url, rate=0.3, seed=3)
    policy = CountingPolicy(attempts=30, base_seconds=0.01, cap_seconds=0.1)
    try:
        with (
            Client(broker.url, queue="q") as direct,
            Client(proxy.url, queue="q", retry=policy) as q,
        ):
            ids = direct.push_many([{"n": n} for n in range(15)])
            handled: set[str] = set()

            def all_acked() -> bool:
                for job in q.claim("w1", max=4, lease_seconds=1, wait=1):
                    handled.add(job.id)
                    job.ack()  # False when its answer was lost after it landed
                return bool(direct.stats()["acked"] == len(ids))

            wait_until(all_acked, timeout=60, what="every job to be acked")
            stats = direct.stats()
    finally:
        proxy.close()
    assert proxy.counts["lost"] > 0, proxy.counts
    assert handled == set(ids)
    assert (stats["ready"], stats["claimed"], stats["delayed"], stats["dead"]) == (0, 0, 0, 0)
