"""Large payloads spilled to their own objects: written at push, read at claim, deleted
when their job leaves -- against the real stores, an in-process engine, the intent path
and a broker process over HTTP."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

# broker_proc is also loaded as a plugin (its fixtures); rewrite its asserts first.
pytest.register_assert_rewrite("broker_proc")

from broker_proc import BrokerFactory, assert_error  # noqa: E402

from obque.broker.queues import QueueRegistry  # noqa: E402
from obque.broker.settings import BrokerSettings  # noqa: E402
from obque.commit import IntentEngine, IntentSettings, QueueEngine, create_queue  # noqa: E402
from obque.commit.payloads import PREFIX, Payloads  # noqa: E402
from obque.core import (  # noqa: E402
    Ack,
    Claim,
    ClaimResult,
    Configure,
    Conflict,
    LeaseRef,
    Nack,
    NackItem,
    NewJob,
    OpError,
    Purge,
    Push,
    PushResult,
    StoreUnavailable,
)
from obque.store import Backend, Snapshot, Store, open_store  # noqa: E402
from obque.store.memory import MemoryBackend  # noqa: E402
from obque.store.shaping import FaultBackend  # noqa: E402

pytest_plugins = ["broker_proc"]
pytestmark = pytest.mark.timeout(120)

BIG = 20_000  # above the default spill_payload_bytes (16 KiB)

STORES = [
    "mem",
    "file",
    pytest.param("seaweedfs", marks=pytest.mark.integration),
    pytest.param("fakegcs", marks=pytest.mark.integration),
]
SERVER_FIXTURES = {"seaweedfs": "seaweedfs_s3", "fakegcs": "fake_gcs"}


def big_payload(tag: str, size: int = BIG) -> dict[str, Any]:
    return {"tag": tag, "blob": "x" * size}


@pytest.fixture
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    kind = getattr(request, "param", "file")
    unique = f"spill-{uuid.uuid4().hex[:12]}"
    if kind == "mem":
        yield f"mem://{unique}/q.json"
        MemoryBackend.forget(unique)
    elif kind == "file":
        yield f"file://{tmp_path}/q.json"
    else:
        yield request.getfixturevalue(SERVER_FIXTURES[kind]).uri(f"{unique}/q.json")


@pytest.fixture
def store(store_uri: str) -> Iterator[Store]:
    opened = open_store(store_uri)
    create_queue(opened, "q")
    yield opened
    opened.close()


@pytest.fixture
def engine(store: Store) -> Iterator[QueueEngine]:
    made = QueueEngine(store)
    yield made
    made.close()


def objects(store: Store) -> list[str]:
    return store.children(PREFIX)


def file_doc(store: Store) -> dict[str, Any]:
    snap = store.read()
    assert snap is not None
    doc: dict[str, Any] = json.loads(snap.data)
    return doc


def eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Deletes run in the background after a commit: wait for them (not a timing check)."""
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, f"timed out waiting until {what}"
        time.sleep(0.05)


def push(engine: QueueEngine, *jobs: NewJob) -> PushResult:
    result = engine.run(Push.of(jobs))
    assert isinstance(result, PushResult), result
    return result


def claim(engine: QueueEngine, n: int = 10) -> ClaimResult:
    result = engine.run(Claim("w", max=n))
    assert isinstance(result, ClaimResult)
    return result


@pytest.mark.parametrize("store_uri", STORES, indirect=True)
def test_big_payloads_live_beside_the_file_until_their_job_is_acked(
    engine: QueueEngine, store: Store
) -> None:
    small = {"tag": "small"}
    result = push(
        engine, NewJob.of(big_payload("a")), NewJob.of(small), NewJob.of(big_payload("b"))
    )

    doc = file_doc(store)
    by_id = {j["id"]: j for j in doc["jobs"]}
    a, s, b = (by_id[i] for i in result.ids)
    assert a["payload"] is None and a["spilled"].startswith(PREFIX)
    assert b["payload"] is None and b["spilled"] != a["spilled"]
    assert s["payload"] == small and "spilled" not in s
    assert len(json.dumps(doc)) < 2_000  # the file holds names, not 40 KB of payload
    assert sorted(objects(store)) == sorted([a["spilled"], b["spilled"]])
    spilled = store.child(a["spilled"]).read()
    assert spilled is not None and json.loads(spilled.data) == big_payload("a")

    # A second engine (another process) has no cache: it reads the objects.
    other = QueueEngine(open_store(store.uri))
    try:
        got = claim(other, 3)
        payloads = {j.id: msgspec.json.decode(j.payload) for j in got.jobs}
        assert payloads == {
            result.ids[0]: big_payload("a"),
            result.ids[1]: small,
            result.ids[2]: big_payload("b"),
        }
        assert all(j.spilled is None for j in got.jobs)
        assert other.payloads.stats.fetched == 2

        first = next(j for j in got.jobs if j.id == result.ids[0])
        other.run(Ack((LeaseRef(first.id, first.lease),)))
        eventually(lambda: objects(store) == [b["spilled"]], "the acked job's object is gone")
    finally:
        other.close()


def test_the_pushing_process_answers_claims_from_memory(engine: QueueEngine) -> None:
    push(engine, NewJob.of(big_payload("a")))
    got = claim(engine)
    assert msgspec.json.decode(got.jobs[0].payload) == big_payload("a")
    assert engine.payloads.stats.cache_hits == 1 and engine.payloads.stats.fetched == 0


def test_a_duplicate_push_leaves_no_object_behind(engine: QueueEngine, store: Store) -> None:
    first = push(engine, NewJob.of(big_payload("one"), key="k"))
    again = push(engine, NewJob.of(big_payload("two"), key="k"))
    assert again.duplicates == first.ids
    kept = file_doc(store)["jobs"][0]["spilled"]
    eventually(lambda: objects(store) == [kept], "the duplicate's object is deleted")
    got = claim(engine)
    assert msgspec.json.decode(got.jobs[0].payload) == big_payload("one")


def test_a_refused_push_deletes_what_it_spilled(engine: QueueEngine, store: Store) -> None:
    engine.run(Configure.of({"max_jobs": 1}))
    push(engine, NewJob.of({"small": 1}))
    refused = engine.run(Push.of([NewJob.of(big_payload("late"))]))
    assert isinstance(refused, OpError) and refused.code == "queue_full"
    eventually(lambda: objects(store) == [], "the refused push's object is deleted")


def test_a_payload_over_the_limit_is_refused_before_anything_is_written(
    engine: QueueEngine, store: Store
) -> None:
    engine.run(Configure.of({"max_payload_bytes": 30_000}))
    refused = engine.run(Push.of([NewJob.of(big_payload("huge", 40_000))]))
    assert isinstance(refused, OpError) and refused.code == "payload_too_large"
    assert "40" in refused.message and "max_payload_bytes of 30000" in refused.message
    assert objects(store) == []
    assert engine.payloads.stats.spilled == 0


def test_the_threshold_is_a_queue_setting(engine: QueueEngine, store: Store) -> None:
    engine.run(Configure.of({"spill_payload_bytes": 50_000}))
    push(engine, NewJob.of(big_payload("inline")))
    assert objects(store) == []
    assert file_doc(store)["jobs"][0]["payload"] == big_payload("inline")
    engine.run(Configure.of({"spill_payload_bytes": 1024}))
    push(engine, NewJob.of(big_payload("tiny-threshold", 2000)))
    assert len(objects(store)) == 1


def test_dead_letters_keep_their_payload_until_purged(engine: QueueEngine, store: Store) -> None:
    ids = push(engine, NewJob.of(big_payload("a")), NewJob.of(big_payload("b"))).ids
    got = claim(engine)
    engine.run(Nack(tuple(NackItem(j.id, j.lease, dead=True) for j in got.jobs)))
    assert len(objects(store)) == 2
    dead = engine.read_state().dead
    assert [d.id for d in dead] == list(ids) and all(d.spilled for d in dead)

    engine.run(Purge((ids[0],)))
    eventually(lambda: objects(store) == [dead[1].spilled], "the purged job's object is gone")
    # Dropped by dead_retention: gone too.
    engine.run(Configure.of({"dead_retention": 1}))
    third = push(engine, NewJob.of(big_payload("c"))).ids[0]
    got = claim(engine)
    engine.run(Nack((NackItem(third, got.jobs[0].lease, dead=True),)))
    kept = engine.read_state().dead
    assert [d.id for d in kept] == [third]
    eventually(lambda: objects(store) == [kept[0].spilled], "the dropped dead job's object")


def test_a_failed_spill_answers_unavailable_and_keeps_nothing(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/q.json")
    create_queue(store, "q")
    faulty = Store(FaultBackend(store.backend, rate=1.0, seed=1), store.key)
    payloads = Payloads(faulty)
    config = QueueEngine(store).read_state().config
    with pytest.raises(StoreUnavailable):
        payloads.spill(Push.of([NewJob.of(big_payload("x"))]), config)
    payloads.close()
    assert objects(store) == []


def test_sweep_deletes_only_old_unnamed_objects(engine: QueueEngine, store: Store) -> None:
    push(engine, NewJob.of(big_payload("live")))
    live = objects(store)
    old = f"{PREFIX}{1_000_000_000_000:013d}-{'0' * 16}.json"
    young = f"{PREFIX}{int(time.time() * 1000):013d}-{'1' * 16}.json"
    for name in (old, young):
        store.child(name).write(b'{"orphan":true}', None)
    state = engine.read_state()
    assert engine.payloads.sweep(state, min_age_s=600) == 1
    assert sorted(objects(store)) == sorted([*live, young])
    # A job's object is never swept, however old.
    assert engine.payloads.sweep(state, min_age_s=-60) == 1
    assert objects(store) == live


def test_names_outside_the_payload_folder_are_never_read_or_deleted(
    engine: QueueEngine, store: Store
) -> None:
    assert engine.payloads.fetch(["../q.json", "payloads/../../q.json"]) == {}
    engine.payloads.release(["../q.json"])
    engine.payloads.close()
    assert store.read() is not None


class LosesQueueWrites(Backend):
    """A real store whose first queue-file writes lose their compare-and-set, as when
    other Lambda environments are writing: the intent engine switches to intents."""

    def __init__(self, inner: Backend, queue_key: str, losses: int) -> None:
        self.inner = inner
        self.queue_key = queue_key
        self.losses = losses

    def get(self, key: str) -> Snapshot | None:
        return self.inner.get(key)

    def put(self, key: str, data: bytes, expected: str | None) -> str:
        if key == self.queue_key and self.losses > 0:
            self.losses -= 1
            raise Conflict("another environment wrote first")
        return self.inner.put(key, data, expected)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def list(self, prefix: str) -> list[str]:
        return self.inner.list(prefix)

    def uri(self, key: str) -> str:
        return self.inner.uri(key)


INTENT_STORES = ["file", pytest.param("seaweedfs", marks=pytest.mark.integration)]


@pytest.mark.parametrize("store_uri", INTENT_STORES, indirect=True)
def test_the_intent_path_carries_names_not_payloads(store: Store) -> None:
    contended = Store(LosesQueueWrites(store.backend, store.key, losses=2), store.key)
    writer = IntentEngine(contended, settings=IntentSettings(window_s=0.01))
    try:
        result = writer.run(Push.of([NewJob.of(big_payload("i"))]))
        assert isinstance(result, PushResult)
        assert writer.intents_written == 1  # it went through an intent object
        assert len(objects(store)) == 1
        got = writer.run(Claim("w", max=1))
        assert isinstance(got, ClaimResult)
        assert msgspec.json.decode(got.jobs[0].payload) == big_payload("i")
        writer.run(Ack((LeaseRef(got.jobs[0].id, got.jobs[0].lease),)))
        # A function instance may be frozen once it answers: the delete is done by then.
        assert objects(store) == []
    finally:
        writer.close()


# -- through a broker process ----------------------------------------------------------------


@pytest.mark.integration
def test_a_broker_spills_serves_lists_and_deletes_big_payloads(brokers: BrokerFactory) -> None:
    root = brokers.root()
    broker = brokers.start(root)
    payload = big_payload("http", 100_000)
    with broker.client() as http:
        assert http.put("/v1/queues/big", json={"spill_payload_bytes": 4096}).status_code == 201
        pushed = http.post("/v1/queues/big/push", json={"jobs": [{"payload": payload}]})
        assert pushed.status_code == 200, pushed.text
        folder = brokers.root_dir() / "big.json.d" / "payloads"
        assert len(list(folder.iterdir())) == 1
        assert (brokers.root_dir() / "big.json").stat().st_size < 2_000

        listed = http.get("/v1/queues/big/jobs", params={"state": "ready"})
        assert listed.status_code == 200 and listed.json()["jobs"][0]["payload"] == payload

        jobs = http.post("/v1/queues/big/claim", json={"worker": "w"}).json()["jobs"]
        assert jobs[0]["payload"] == payload
        lease = {"id": jobs[0]["id"], "lease": jobs[0]["lease"]}
        acked = http.post("/v1/queues/big/ack", json={"leases": [lease]})
        assert acked.json()["results"][0]["ok"] is True
        eventually(lambda: not any(folder.iterdir()), "the acked job's object is gone")

        too_low = http.put("/v1/queues/big", json={"spill_payload_bytes": 10})
        assert_error(too_low, 400, "invalid_request", "spill_payload_bytes")


def test_a_leading_broker_sweeps_orphans_of_the_queues_it_leads(tmp_path: Path) -> None:
    root = f"file://{tmp_path}/"
    leader = QueueRegistry(BrokerSettings(root=root, advertise="http://127.0.0.1:9"))
    follower = QueueRegistry(BrokerSettings(root=root, mode="serverless"))
    try:
        asyncio.run(leader.create("q", {}))
        engine = asyncio.run(leader.get("q"))
        asyncio.run(engine.arun(Push.of([NewJob.of(big_payload("kept"))])))
        assert engine.leadership is not None and engine.leadership.is_leader
        store = open_store(f"{root}q.json")
        kept = objects(store)
        orphan = f"{PREFIX}{1_000_000_000_000:013d}-{'0' * 16}.json"
        store.child(orphan).write(b"{}", None)

        asyncio.run(follower.get("q"))
        assert follower.sweep_payloads() == 0  # not the leader: its state may be stale
        assert leader.sweep_payloads() == 1
        assert objects(store) == kept
    finally:
        leader.close()
        follower.close()
