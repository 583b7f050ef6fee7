"""Two writers on one queue at once (SPEC §6, §12): nothing lost, the stale one fenced.

* Two long-running brokers serve the same root at the same time: B starts while A is
  alive and busy, with a ``--broker-timeout`` so short that A's heartbeat already counts
  as stale, and takes the queue over. Every push that was answered must be in the queue
  exactly once (and then acked exactly once); A must be fenced by its next commit: its
  next write request answers ``503 not_leader`` naming B, and it never writes again. The
  clients, which all started on A, finish on B.
* Whichever broker leads is paused (SIGSTOP) past the timeout, again and again, so the
  queue changes hands back and forth and each resumed leader meets a newer epoch: still
  nothing lost, and epochs only grow.
* A serverless writer -- the Lambda handler, fed Function URL events in-process, one
  event loop per execution environment -- beside a long-running broker. The serverless
  side takes no leadership; both commit by compare-and-set and retry on conflicts, so
  nothing is lost either way, and the broker stays the advertised leader.

A watcher thread reads the queue file every few milliseconds and keeps every revision it
sees with the broker record it names; figures are printed as one ``split-brain`` JSON
line per test (``-rP``). The takeover runs on the file store and on SeaweedFS (S3, whose
compare-and-set is a conditional PUT rather than a lock and a rename).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import re
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytest.register_assert_rewrite("broker_proc")

from broker_proc import (  # noqa: E402
    BrokerFactory,
    BrokerProcess,
    assert_error,
    free_port,
    wait_until,
)
from lambda_events import function_url_event, to_response  # noqa: E402
from servers import StoreServer  # noqa: E402

from obque.broker.aws import build_handler  # noqa: E402
from obque.broker.settings import BrokerSettings  # noqa: E402
from obque.client import Client  # noqa: E402
from obque.client.retry import RetryPolicy  # noqa: E402
from obque.core import ObqueError  # noqa: E402
from obque.store import open_store  # noqa: E402

pytest_plugins = ["broker_proc"]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

QUEUE = "q"
PATIENT = RetryPolicy(attempts=40, base_seconds=0.05, cap_seconds=1.0)


# -- watching the file ------------------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """Where the brokers' root and the queue file live: a directory or a bucket prefix."""

    root: str
    queue_uri: str
    read: Callable[[], bytes]
    #: How often the watcher reads the file (a GET costs more than a local read).
    interval: float = 0.002


def file_place(brokers: BrokerFactory) -> Place:
    path = brokers.root_dir() / f"{QUEUE}.json"
    return Place(brokers.root(), path.resolve().as_uri(), path.read_bytes)


def s3_place(server: StoreServer) -> Place:
    root = server.uri(f"split-{uuid.uuid4().hex[:8]}/")
    store = open_store(f"{root}{QUEUE}.json")

    def read() -> bytes:
        snap = store.read()
        assert snap is not None, f"no queue file under {root}"
        return snap.data

    return Place(root, f"{root}{QUEUE}.json", read, interval=0.02)


@dataclass
class Watcher:
    """Reads ``q.json`` in a loop; keeps (revision, broker id, epoch) of every revision seen."""

    place: Place
    seen: dict[int, tuple[str, int]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> Watcher:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def run(self) -> None:
        while not self.stop.wait(self.place.interval):
            self.look()

    def look(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.place.read())
        record = doc.get("broker") or {}
        self.seen.setdefault(doc["revision"], (record.get("id", ""), record.get("epoch", 0)))
        return doc

    def close(self) -> list[tuple[int, str, int]]:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(10)
        self.look()
        return [(rev, *self.seen[rev]) for rev in sorted(self.seen)]


def assert_fenced_history(history: list[tuple[int, str, int]]) -> int:
    """Epochs never go down, a broker id keeps one epoch, and once an epoch is seen no
    revision names an older one; returns how many leaders the file named."""
    epochs: dict[str, int] = {}
    highest = 0
    for revision, broker_id, epoch in history:
        if not broker_id:
            continue
        assert epoch >= highest, f"revision {revision} names epoch {epoch} after {highest}"
        if broker_id in epochs and epochs[broker_id] != epoch:
            # The same broker may take the queue back, but only above every epoch seen.
            assert epoch > epochs[broker_id], (revision, broker_id, epoch)
        epochs[broker_id] = epoch
        highest = epoch
    return len({epoch for _, _, epoch in history if epoch})


# -- load through clients -----------------------------------------------------------------------


@dataclass
class Load:
    """Producers and consumers through ``Client``: every answer is recorded."""

    queue_uri: str
    producers: int = 4
    consumers: int = 2
    #: Seconds each producer waits between pushes (0: as fast as answers come).
    pause: float = 0.0
    ids: dict[str, str] = field(default_factory=dict)  # tag -> id
    done_at: list[float] = field(default_factory=list)  # monotonic time of each answered push
    acked: Counter[str] = field(default_factory=Counter)
    deliveries: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop_pushing: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for i in range(self.producers):
            self.threads.append(threading.Thread(target=self.produce, args=(i,)))
        for i in range(self.consumers):
            self.threads.append(threading.Thread(target=self.consume, args=(i,)))
        for thread in self.threads:
            thread.start()
        return self

    def produce(self, index: int) -> None:
        client = Client(self.queue_uri, retry=PATIENT)
        n = 0
        try:
            while not self.stop_pushing.is_set():
                n += 1
                tag = f"p{index}-{n}"
                key = f"k-{tag}" if n % 2 else None  # unkeyed ones get the client's ~key
                job_id = client.push({"tag": tag}, key=key)
                with self.lock:
                    self.ids[tag] = job_id
                    self.done_at.append(time.monotonic())
                if self.pause:
                    self.stop_pushing.wait(self.pause)
        except ObqueError as exc:
            with self.lock:
                self.errors.append(f"producer {index}: {exc!r}")
        finally:
            client.close()

    def consume(self, index: int) -> None:
        client = Client(self.queue_uri, retry=PATIENT)
        try:
            while not self.stop.is_set():
                for job in client.claim(f"c{index}", 10, lease_seconds=5, wait=0.5):
                    with self.lock:
                        self.deliveries[job.payload["tag"]] += 1
                    if job.ack():
                        with self.lock:
                            self.acked[job.payload["tag"]] += 1
        except ObqueError as exc:
            with self.lock:
                self.errors.append(f"consumer {index}: {exc!r}")
        finally:
            client.close()

    def pushed(self) -> int:
        with self.lock:
            return len(self.ids)

    def finish(self, drained: Callable[[], bool], timeout: float = 60) -> None:
        self.stop_pushing.set()
        try:
            wait_until(drained, timeout=timeout, what="every job to be acked", interval=0.2)
        finally:
            self.stop.set()
            for thread in self.threads:
                thread.join(60)
        assert not self.errors, self.errors

    def longest_stall(self, start: float, end: float) -> float:
        """The longest time no push was answered, from ``start`` to the last answer
        before ``end``."""
        times = sorted(t for t in self.done_at if start <= t <= end)
        return max(b - a for a, b in itertools.pairwise([start, *times]))


def assert_no_lost_update(load: Load, doc: dict[str, Any], extra_tags: int = 0) -> None:
    """Every answered push is in the queue exactly once and was acked exactly once."""
    ids = list(load.ids.values())
    assert len(set(ids)) == len(ids), "two pushes were answered with one id"
    total = len(ids) + extra_tags
    assert doc["stats"]["pushed"] == total, (doc["stats"], total)
    assert doc["next_seq"] - 1 == total
    assert not doc["jobs"] and not doc["dead"], "jobs left over"
    assert doc["stats"]["acked"] == total
    twice = [tag for tag, n in load.acked.items() if n > 1]
    assert not twice, f"acked twice: {twice[:5]}"
    assert set(load.acked) >= set(load.ids), "an answered push was never delivered and acked"


def metric(broker: BrokerProcess, name: str, labels: str = "") -> float:
    with broker.client() as http:
        text = http.get("/metrics").text
    wanted = {"queue": QUEUE, **dict(re.findall(r'(\w+)="([^"]*)"', labels))}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == wanted:
                return float(sample.value)
    raise AssertionError(f"{name}{wanted} not in /metrics")


def writes_of(broker: BrokerProcess) -> float:
    return metric(broker, "obque_store_requests_total", 'kind="writes"')


def start_leader(
    brokers: BrokerFactory, place: Place | None = None, **options: Any
) -> tuple[BrokerProcess, Watcher]:
    place = place or file_place(brokers)
    a = brokers.start(place.root, **options)
    with a.client() as http:
        assert http.put(f"/v1/queues/{QUEUE}", json={"lease_seconds": 5}).status_code == 201
    watcher = Watcher(place)
    wait_until(
        lambda: (watcher.look().get("broker") or {}).get("url") == a.advertised,
        timeout=15,
        what="A to advertise itself",
    )
    return a, watcher.start()


def queue_uri(brokers: BrokerFactory) -> str:
    return (brokers.root_dir() / f"{QUEUE}.json").resolve().as_uri()


def drained(watcher: Watcher) -> Callable[[], bool]:
    return lambda: not watcher.look()["jobs"]


# -- two long-running brokers ----------------------------------------------------------------


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.slow)])
def place(request: pytest.FixtureRequest, brokers: BrokerFactory) -> Place:
    """The file store, or a prefix of the SeaweedFS bucket (its variables applied, so
    the brokers started after this inherit them)."""
    if request.param == "file":
        return file_place(brokers)
    server: StoreServer = request.getfixturevalue("seaweedfs_s3")
    return s3_place(server)


def test_a_second_broker_takes_over_a_busy_queue_and_fences_the_first(
    brokers: BrokerFactory, place: Place
) -> None:
    # A heartbeats every 10 s; B calls a heartbeat older than 0.6 s stale, so B takes the
    # queue while A is alive and committing. A (timeout 30 s) never takes it back.
    a, watcher = start_leader(brokers, place, broker_timeout="30")
    load = Load(place.queue_uri).start()
    wait_until(lambda: load.pushed() >= 200, timeout=60, what="200 pushes through A")
    a_epoch = watcher.look()["broker"]["epoch"]

    port = free_port()
    started = time.monotonic()
    b = brokers.start(
        place.root, port=port, advertise=f"http://localhost:{port}", broker_timeout="0.6"
    )
    record = wait_until(
        lambda: (r := watcher.look()["broker"])["url"] == b.advertised and r,
        timeout=30,
        what="B to take over",
    )
    took_over = time.monotonic()
    assert record["epoch"] == a_epoch + 1

    # A's next write request: 503 not_leader naming B, and A writes nothing from then on.
    with a.client() as http:
        answer = http.post(f"/v1/queues/{QUEUE}/push", json={"jobs": [{"payload": "late"}]})
    assert_error(answer, 503, "not_leader", b.advertised, broker=True)
    assert answer.json()["broker"] == b.advertised
    a_writes = writes_of(a)
    assert metric(a, "obque_leader") == 0

    pushed_at_takeover = load.pushed()
    wait_until(
        lambda: load.pushed() >= pushed_at_takeover + 300, timeout=60, what="300 pushes via B"
    )
    load.finish(drained(watcher))
    history = watcher.close()
    doc = watcher.look()

    assert_no_lost_update(load, doc)
    assert writes_of(a) == a_writes, "A wrote after it was fenced"
    # The clients, which all started on A, converged on B: it carried the rest.
    assert metric(b, "obque_ops_total") >= 300
    b_revisions = [rev for rev, broker_id, _ in history if broker_id == record["id"]]
    a_after = [rev for rev, broker_id, _ in history if broker_id != record["id"]]
    assert b_revisions and max(a_after) < min(b_revisions), "A's record after B's epoch"
    assert assert_fenced_history(history) == 2
    figures = {
        "test": "takeover",
        "store": place.root.partition(":")[0],
        "pushed": len(load.ids),
        "takeover_s": round(took_over - started, 2),
        "longest_push_stall_s": round(load.longest_stall(started, took_over + 10), 2),
        "revisions_seen": len(history),
        "revisions": doc["revision"],
    }
    print("split-brain " + json.dumps(figures))


def test_a_long_poll_parked_on_the_fenced_broker_moves_to_the_new_one(
    brokers: BrokerFactory,
) -> None:
    """A worker long-polls A on an empty queue (a 20 s wait). B takes the queue and a job
    is pushed through B. A finds out it is fenced at its next heartbeat (every 1 s with a
    3 s timeout); the parked poll must then end at once with not_leader, so the worker
    goes to B -- not sit out the rest of its 20 s on a broker that can never serve it."""
    a, watcher = start_leader(brokers, broker_timeout="3")
    got: list[Any] = []
    parked = _sockets(a)

    def work() -> None:
        with Client(queue_uri(brokers), retry=PATIENT) as client:
            while not got:
                got.extend(job.payload for job in client.claim("w", 1, wait=20))

    worker = threading.Thread(target=work)
    worker.start()
    try:
        wait_until(lambda: _sockets(a) > parked, timeout=30, what="the poll to park on A")
        port = free_port()
        b = brokers.start(
            brokers.root(), port=port, advertise=f"http://localhost:{port}", broker_timeout="0.6"
        )
        wait_until(
            lambda: watcher.look()["broker"]["url"] == b.advertised, timeout=30, what="B to lead"
        )
        with b.client() as http:
            pushed = http.post(f"/v1/queues/{QUEUE}/push", json={"jobs": [{"payload": "x"}]})
        assert pushed.status_code == 200, pushed.text
        at = time.monotonic()
        # Well inside the 20 s the poll would otherwise hold on A.
        wait_until(lambda: got, timeout=12, what="the worker to get the job via B")
        moved = round(time.monotonic() - at, 2)
        print("split-brain " + json.dumps({"test": "parked-poll", "moved_s": moved}))
    finally:
        got.append("stop")
        worker.join(60)
    watcher.close()


def holds_flock(pid: int) -> bool:
    """Does process ``pid`` hold a ``flock`` (the file store's lock, taken per write)?"""
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" not in fields and "FLOCK" in fields and str(pid) in fields[4:5]:
            return True
    return False


def _sockets(broker: BrokerProcess) -> int:
    """Sockets the broker process holds open (a parked long poll adds one)."""
    count = 0
    for name in os.listdir(f"/proc/{broker.pid}/fd"):
        try:
            count += os.readlink(f"/proc/{broker.pid}/fd/{name}").startswith("socket:")
        except OSError:
            continue  # closed meanwhile
    return count


def test_leaders_paused_in_turn_lose_nothing(brokers: BrokerFactory) -> None:
    """A GC pause or a frozen VM, over and over: whichever broker leads is stopped
    (SIGSTOP) for longer than the 0.5 s timeout, so the other takes the queue; then it
    resumes -- still believing it leads, with requests in flight -- and is fenced."""
    a, watcher = start_leader(brokers, broker_timeout="0.5")
    port = free_port()
    b = brokers.start(
        brokers.root(), port=port, advertise=f"http://localhost:{port}", broker_timeout="0.5"
    )
    by_url = {a.advertised: a, b.advertised: b}
    load = Load(queue_uri(brokers), producers=4, consumers=2).start()
    stop = threading.Event()
    pauses = 0

    def pause_leaders() -> None:
        nonlocal pauses
        while not stop.wait(0.8):
            leader = by_url[watcher.look()["broker"]["url"]]
            leader.proc.send_signal(signal.SIGSTOP)
            try:
                if holds_flock(leader.pid):
                    # Stopped mid-write: the file store's directory lock would hold the
                    # other broker's takeover until this one resumes. Try again.
                    continue
                stop.wait(1.2)
                pauses += 1
            finally:
                leader.proc.send_signal(signal.SIGCONT)

    pauser = threading.Thread(target=pause_leaders)
    pauser.start()
    try:
        wait_until(lambda: pauses >= 6 and load.pushed() >= 600, timeout=120, what="6 pauses")
    finally:
        stop.set()
        pauser.join(10)
    load.finish(drained(watcher), timeout=90)
    history = watcher.close()
    doc = watcher.look()
    assert_no_lost_update(load, doc)
    leaders = assert_fenced_history(history)
    # Every pause hands the queue over (one may be missed if the watcher never saw it).
    assert leaders >= pauses, f"{pauses} pauses, but the queue changed hands {leaders - 1} times"
    print(
        "split-brain "
        + json.dumps(
            {
                "test": "paused-leaders",
                "pushed": len(load.ids),
                "pauses": pauses,
                "epochs_seen": leaders,
                "revisions": doc["revision"],
            }
        )
    )


# -- a serverless writer beside a long-running broker -------------------------------------------


@dataclass
class LambdaContext:
    """What the handler reads of Lambda's context: the time left."""

    deadline: float

    def get_remaining_time_in_millis(self) -> int:
        return int((self.deadline - time.monotonic()) * 1000)


@dataclass
class Environment:
    """One Lambda execution environment: its own handler (a cold start) and event loop,
    one request at a time."""

    root: str
    handler: Any = None

    def call(self, method: str, path: str, body: Any) -> Any:
        if self.handler is None:
            self.handler = build_handler(BrokerSettings(root=self.root, mode="serverless"))
        event = function_url_event(method, path, body)
        answer = self.handler(event, LambdaContext(time.monotonic() + 30))
        response = to_response(event, answer)
        return response.status_code, response.json()


@dataclass
class LambdaSide:
    """Lambda execution environments pushing keyed jobs; what they were answered."""

    root: str
    load: Load
    tags: list[str] = field(default_factory=list)
    unavailable: int = 0  # 503 answers (retried with the same key)

    def produce(self, index: int, count: int, deadline: float) -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())  # mangum runs on the thread's loop
        env = Environment(self.root)
        rng = random.Random(index)
        try:
            for n in range(count):
                tag = f"l{index}-{n}"
                job: dict[str, Any] = {"payload": {"tag": tag}, "key": f"lk-{tag}"}
                while time.monotonic() < deadline:
                    status, body = env.call("POST", f"/v1/queues/{QUEUE}/push", {"jobs": [job]})
                    if status == 200:
                        with self.load.lock:
                            self.load.ids[tag] = body["ids"][0]
                            self.tags.append(tag)
                        break
                    # 503 store_unavailable: its CAS kept losing; retry with the same key.
                    assert status == 503, body
                    with self.load.lock:
                        self.unavailable += 1
                    time.sleep(rng.uniform(0.01, 0.05))
                else:
                    return
        finally:
            asyncio.get_event_loop().close()
            asyncio.set_event_loop(None)


@pytest.mark.parametrize(
    "pause",
    [0.05, pytest.param(0.0, marks=pytest.mark.slow, id="unpaced")],
)
def test_a_lambda_writer_beside_a_process_broker_loses_nothing(
    brokers: BrokerFactory, pause: float
) -> None:
    # broker_timeout 1.5: the broker's idle heartbeat every 0.5 s is the latest it notices
    # commits made beside it (its cache is refreshed by the conflict its next write meets).
    a, watcher = start_leader(brokers, broker_timeout="1.5")
    leader = dict(watcher.look()["broker"])
    # Paced broker-side producers keep the default run short. Unpaced, the broker commits
    # flat out and wins most compare-and-set races against the Lambda's longer
    # read-modify-write: the Lambda calls take several times longer (docs/reliability.md).
    load = Load(queue_uri(brokers), producers=3, consumers=2, pause=pause).start()
    side = LambdaSide(brokers.root(), load)
    per_env, envs = 40, 4
    deadline = time.monotonic() + 60
    lambdas = [
        threading.Thread(target=side.produce, args=(i, per_env, deadline)) for i in range(envs)
    ]
    started = time.monotonic()
    for thread in lambdas:
        thread.start()
    for thread in lambdas:
        thread.join(90)
    lambda_seconds = time.monotonic() - started
    # Paced, every Lambda push is answered; unpaced, the Lambda side must still progress.
    wanted = per_env * envs if pause else 1
    assert len(side.tags) >= wanted, f"the Lambda side was answered only {len(side.tags)} times"
    wait_until(lambda: load.pushed() >= 200 + len(side.tags), timeout=60, what="broker pushes")
    load.finish(drained(watcher), timeout=90)
    history = watcher.close()
    doc = watcher.look()

    assert_no_lost_update(load, doc)
    assert set(side.tags) <= set(load.acked), "a push answered by Lambda was not acked"
    # The serverless side wrote revisions but never took leadership.
    record = doc["broker"]
    assert (record["id"], record["epoch"], record["url"]) == (
        leader["id"],
        leader["epoch"],
        a.advertised,
    )
    assert assert_fenced_history(history) == 1
    assert metric(a, "obque_leader") == 1
    conflicts = metric(a, "obque_store_requests_total", 'kind="conflicts"')
    assert conflicts > 0, "the broker never met the Lambda's writes"
    # An intent whose caller gave up may be left behind; it must never have been applied.
    intents = brokers.root_dir() / f"{QUEUE}.json.d" / "intents"
    leftover = [p.stem for p in intents.iterdir()] if intents.exists() else []
    assert not [i for i in leftover if f"i:{i}" in doc["applied"]], "a folded intent was kept"
    print(
        "split-brain "
        + json.dumps(
            {
                "test": "lambda-beside-broker",
                "pause_s": pause,
                "lambda_seconds": round(lambda_seconds, 1),
                "pushed": len(load.ids),
                "via_lambda": len(side.tags),
                "lambda_503": side.unavailable,
                "broker_conflicts": int(conflicts),
                "intents_left": len(leftover),
                "revisions": doc["revision"],
            }
        )
    )
