"""Fault soak (SPEC §12): thousands of jobs through a broker whose store fails 10% of calls.

One ``obque broker`` process serves a root opened with ``?faults=0.1&seed=N``: a tenth of
its store calls fail as injected conflicts, 5xx errors, timeouts, or ambiguous writes
(the write lands, the answer is lost). Around it:

* producers push through ``Client`` -- single pushes with and without a key, batches
  mixing both, and deliberate re-pushes of a key;
* in-process consumers claim with short leases and abandon some claims (no ack, no
  heartbeat), so those leases lapse and the jobs come back;
* ``Worker`` subprocesses (heartbeats on) are SIGKILLed and restarted, each kill aimed at
  a worker in the middle of a job it logged (so the jobs it held come back when their
  leases lapse), every ~``kill_every_s``;
* some jobs fail their first attempt (nacked with backoff), and a few are *doomed*:
  every handler fails them, and they may be tried twice (``max_attempts=2``).

Checked at the end, from the queue file and from what every party recorded: every pushed
job was delivered and acked, but the doomed ones, which are exactly the dead letters
(each after its two attempts); none lost; no push duplicated (the client keys every
push); no job delivered again after an ack was answered ok; no (job, attempt) delivered
twice; and the queue's counters agree with what the workers saw: every claim ends in
exactly one ack, nack or expiry, so ``acked + nacked + expired`` is the number of claims,
and ``nacked`` and ``expired`` sit between what the parties saw for sure and that plus
what they could not confirm. The chaos must have happened: workers killed, the killed
ones having delivered jobs, some killed mid-job with those jobs delivered again, claims
abandoned. Duplicate deliveries are allowed (at-least-once); they are counted and split
by cause. Each run prints one
``fault-soak`` JSON line with its figures (``-rP`` shows it); docs/reliability.md quotes
them.

The short runs are in the default suite (file store and SeaweedFS); ``slow`` ones soak
longer.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytest.register_assert_rewrite("broker_proc")

from broker_proc import BrokerFactory, BrokerProcess, wait_until  # noqa: E402
from servers import StoreServer  # noqa: E402

from obque.client import Client  # noqa: E402
from obque.client.calls import PushItem  # noqa: E402
from obque.client.retry import RetryPolicy  # noqa: E402
from obque.core import ObqueError, QueueState, decode_state  # noqa: E402
from obque.store import open_store  # noqa: E402

pytest_plugins = ["broker_proc"]
pytestmark = [pytest.mark.integration]

QUEUE = "soak"
DEFAULT_MAX_ATTEMPTS = 10
#: Retries enough that a client never gives up on a push whose outcome it cannot know.
PATIENT = RetryPolicy(attempts=30, base_seconds=0.05, cap_seconds=2.0)

#: A Worker process: logs every delivery before handling it and every settlement after.
WORKER_SCRIPT = """
import json, random, sys, threading, time
from obque.client import Client, Worker
from obque.client.retry import RetryPolicy

uri, log_path, seed, lease = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
rng = random.Random(seed)
lock = threading.Lock()
log = open(log_path, "a", buffering=1)

def note(**fields):
    with lock:
        log.write(json.dumps(fields) + "\\n")

def handle(job):
    note(e="got", id=job.id, a=job.attempt, tag=job.payload["tag"])
    time.sleep(rng.uniform(0, 0.02))
    # Logged before the handler returns, so before the Worker sends its ack or nack.
    note(e="handled", id=job.id, a=job.attempt)
    if job.payload.get("doom") or (job.payload.get("fail") and job.attempt == 1):
        raise RuntimeError("planned failure")

def done(job, error):
    note(e=job.settled, id=job.id, a=job.attempt)

client = Client(uri, retry=RetryPolicy(attempts=30, cap_seconds=2.0))
Worker(client, handle, concurrency=4, lease_seconds=lease, grace_seconds=1, on_done=done).run()
"""


@dataclass(frozen=True)
class Plan:
    jobs: int
    producers: int = 4
    consumers: int = 2
    worker_processes: int = 2
    kill_every_s: float = 2.0
    lease_seconds: int = 2
    faults: float = 0.1
    seed: int = 7
    #: Share of in-process claims left to lapse.
    abandon: float = 0.05
    #: Share of jobs whose first attempt fails (nacked, retried after a backoff).
    fail_first: float = 0.05
    #: Share of jobs every handler fails, tried twice (they must end as dead letters).
    doomed: float = 0.01
    budget_s: float = 90.0


@dataclass
class Ledger:
    """What producers and in-process consumers saw (worker processes log to files)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    ids: dict[int, str] = field(default_factory=dict)  # tag -> id answered
    keyed: set[int] = field(default_factory=set)
    doomed: set[int] = field(default_factory=set)
    repushes: int = 0
    deliveries: list[tuple[str, int]] = field(default_factory=list)  # (id, attempt)
    acked: list[tuple[str, int]] = field(default_factory=list)
    ack_lost: int = 0
    nacked: list[tuple[str, int]] = field(default_factory=list)
    nack_lost: int = 0
    abandoned: list[tuple[str, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def note_ids(self, tags: list[int], ids: list[str]) -> None:
        with self.lock:
            for tag, job_id in zip(tags, ids, strict=True):
                known = self.ids.setdefault(tag, job_id)
                assert known == job_id, f"tag {tag} answered as {known} and as {job_id}"


@dataclass
class Soak:
    """One run: the broker, the parties around it, and what they recorded."""

    plan: Plan
    broker: BrokerProcess
    queue_uri: str
    workdir: Path
    ledger: Ledger = field(default_factory=Ledger)
    stop: threading.Event = field(default_factory=threading.Event)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    worker_logs: list[Path] = field(default_factory=list)
    kills: int = 0
    #: Worker logs of the processes killed, and the deliveries they were still handling
    #: (no ack or nack sent yet: those jobs can only come back by their lease lapsing).
    killed_logs: list[Path] = field(default_factory=list)
    stranded: set[tuple[str, int]] = field(default_factory=set)
    env: dict[str, str] = field(default_factory=dict)

    def client(self) -> Client:
        return Client(self.queue_uri, retry=PATIENT)

    def read(self) -> QueueState:
        store = open_store(self.queue_uri)
        snap = store.read()
        assert snap is not None, f"no queue file at {self.queue_uri}"
        return decode_state(snap.data, store.uri)

    # -- producers ------------------------------------------------------------------------

    def payload(self, tag: int, rng: random.Random) -> PushItem:
        plan = self.plan
        body: dict[str, Any] = {"tag": tag}
        max_attempts = None
        if rng.random() < plan.fail_first:
            body["fail"] = True
        if rng.random() < plan.doomed:
            body["doom"] = True
            max_attempts = 2
            with self.ledger.lock:
                self.ledger.doomed.add(tag)
        key = f"k-{tag}" if rng.random() < 0.5 else None
        return PushItem(body, key=key, max_attempts=max_attempts)

    def produce(self, index: int) -> None:
        rng = random.Random(self.plan.seed * 1000 + index)
        tags = list(range(index, self.plan.jobs, self.plan.producers))
        client = self.client()
        try:
            while tags:
                if rng.random() < 0.3:  # a batch mixing keyed and unkeyed jobs
                    chunk, tags = tags[:20], tags[20:]
                    items = [self.payload(t, rng) for t in chunk]
                    ids = client.push_many(items)
                else:
                    chunk, tags = tags[:1], tags[1:]
                    items = [self.payload(chunk[0], rng)]
                    item = items[0]
                    ids = [client.push(item.payload, key=item.key, max_attempts=item.max_attempts)]
                self.ledger.note_ids(chunk, ids)
                for tag, item, job_id in zip(chunk, items, ids, strict=True):
                    if item.key is None:
                        continue
                    with self.ledger.lock:
                        self.ledger.keyed.add(tag)
                    if rng.random() < 0.05:  # the same key again: the same job, not a new one
                        again = client.push(item.payload, key=item.key)
                        assert again == job_id, f"re-push of {item.key} made job {again}"
                        with self.ledger.lock:
                            self.ledger.repushes += 1
        except ObqueError as exc:  # the outcome is unknown: the soak cannot account for it
            with self.ledger.lock:
                self.ledger.errors.append(f"producer {index}: {exc!r}")
        finally:
            client.close()

    # -- in-process consumers ---------------------------------------------------------------

    def consume(self, index: int) -> None:
        rng = random.Random(self.plan.seed * 2000 + index)
        client = self.client()
        ledger = self.ledger
        try:
            while not self.stop.is_set():
                try:
                    jobs = client.claim(
                        f"c{index}", 5, lease_seconds=self.plan.lease_seconds, wait=1
                    )
                except ObqueError as exc:
                    with ledger.lock:
                        ledger.errors.append(f"consumer {index} claim: {exc!r}")
                    continue
                for job in jobs:
                    ref = (job.id, job.attempt)
                    with ledger.lock:
                        ledger.deliveries.append(ref)
                    if rng.random() < self.plan.abandon:
                        with ledger.lock:
                            ledger.abandoned.append(ref)
                        continue  # no ack, no heartbeat: the lease lapses
                    try:
                        doomed = job.payload.get("doom")
                        if doomed or (job.payload.get("fail") and job.attempt == 1):
                            landed = job.nack(error="planned failure")
                            with ledger.lock:
                                if landed:
                                    ledger.nacked.append(ref)
                                else:
                                    ledger.nack_lost += 1
                            continue
                        ok = job.ack()
                    except ObqueError as exc:
                        with ledger.lock:
                            ledger.errors.append(f"consumer {index} settle: {exc!r}")
                        continue
                    with ledger.lock:
                        if ok:
                            ledger.acked.append(ref)
                        else:
                            ledger.ack_lost += 1
        finally:
            client.close()

    # -- worker processes, killed and restarted ----------------------------------------------

    def start_worker(self) -> None:
        n = len(self.worker_logs)
        log = self.workdir / f"worker-{n}.jsonl"
        out = open(self.workdir / f"worker-{n}.out", "wb")  # noqa: SIM115 - the child owns it
        script = self.workdir / "soak_worker.py"
        args = [sys.executable, str(script), self.queue_uri, str(log)]
        args += [str(self.plan.seed * 3000 + n), str(self.plan.lease_seconds)]
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=self.env
        )
        out.close()
        self.workers.append(proc)
        self.worker_logs.append(log)

    def chaos(self) -> None:
        """Every ``kill_every_s`` (jittered), SIGKILL a worker in the middle of a job --
        one whose log shows a delivery it is still handling -- and start a new one. Until
        a kill has caught a handler running (the log is read again after the kill: the
        handler may have finished meanwhile), the next one comes at once."""
        rng = random.Random(self.plan.seed * 4000)
        pause = 0.0
        while not self.stop.wait(pause):
            victim = self.busy_worker(rng)
            if victim is None:
                pause = 0.1  # nobody mid-job right now: look again shortly
                continue
            proc, log = victim
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            self.kills += 1
            self.killed_logs.append(log)
            self.stranded |= handling(read_records(log))
            self.start_worker()
            pause = self.plan.kill_every_s * rng.uniform(0.5, 1.5) if self.stranded else 0.1

    def busy_worker(self, rng: random.Random) -> tuple[subprocess.Popen[bytes], Path] | None:
        busy = [
            (proc, log)
            for proc, log in zip(self.workers, self.worker_logs, strict=True)
            if proc.poll() is None and handling(read_records(log))
        ]
        return rng.choice(busy) if busy else None

    def stop_workers(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def worker_records(self, logs: list[Path] | None = None) -> list[dict[str, Any]]:
        return [
            r for path in (self.worker_logs if logs is None else logs) for r in read_records(path)
        ]


def read_records(path: Path) -> list[dict[str, Any]]:
    """One worker's log (``[]`` before it wrote any)."""
    records = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the line a SIGKILL cut short: that job was never acked
    return records


#: What a worker logs once a delivery is settled (or given up: "lost", "released").
SETTLED = ("acked", "nacked", "lost", "released")


def unsettled(records: list[dict[str, Any]]) -> set[tuple[str, int]]:
    """Deliveries a worker logged and has not (yet) logged a settlement for."""
    got = {(r["id"], r["a"]) for r in records if r["e"] == "got"}
    return got - {(r["id"], r["a"]) for r in records if r["e"] in SETTLED}


def handling(records: list[dict[str, Any]]) -> set[tuple[str, int]]:
    """Deliveries whose handler has not returned: no ack or nack was sent for them."""
    return unsettled(records) - {(r["id"], r["a"]) for r in records if r["e"] == "handled"}


def metric_values(broker: BrokerProcess, metric: str) -> dict[str, float]:
    """``{kind: value}`` of one labelled metric of the soak queue, from /metrics."""
    with broker.client() as http:
        text = http.get("/metrics").text
    return {
        sample.labels["kind"]: float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == metric and sample.labels.get("queue") == QUEUE
    }


def create_queue_through(broker: BrokerProcess, plan: Plan) -> None:
    config = {
        "lease_seconds": plan.lease_seconds,
        "max_attempts": DEFAULT_MAX_ATTEMPTS,
        "retry_delay_seconds": 0.2,
        "retry_delay_max_seconds": 1.0,
    }

    def created() -> bool:
        with broker.client() as http:
            answer = http.put(f"/v1/queues/{QUEUE}", json=config)
        # 503 store_unavailable: the injected faults hit the creating write; try again.
        assert answer.status_code in (200, 201, 503), answer.text
        return answer.status_code in (200, 201)

    wait_until(created, timeout=30, what="the soak queue to be created")


def run_soak(brokers: BrokerFactory, root_uri: str, queue_uri: str, plan: Plan) -> dict[str, Any]:
    broker = brokers.start(root_uri)
    create_queue_through(broker, plan)
    soak = Soak(plan, broker, queue_uri, brokers.workdir)
    soak.env = {k: v for k, v in os.environ.items() if not k.startswith("OBQUE_")}
    (soak.workdir / "soak_worker.py").write_text(WORKER_SCRIPT)

    def advertised() -> bool:
        record = soak.read().broker
        return record is not None and record.url == broker.advertised

    wait_until(advertised, timeout=30, what="the broker to advertise itself")

    started = time.monotonic()
    threads = [threading.Thread(target=soak.produce, args=(i,)) for i in range(plan.producers)]
    consumers = [threading.Thread(target=soak.consume, args=(i,)) for i in range(plan.consumers)]
    for _ in range(plan.worker_processes):
        soak.start_worker()
    chaos = threading.Thread(target=soak.chaos)
    for thread in [*threads, *consumers, chaos]:
        thread.start()
    try:
        for thread in threads:
            thread.join(plan.budget_s)
        pushed_s = time.monotonic() - started
        assert not soak.ledger.errors, soak.ledger.errors
        assert len(soak.ledger.ids) == plan.jobs, "a producer did not finish"

        def drained() -> bool:
            state = soak.read()
            return not state.jobs

        # A run with no worker killed mid-job would prove nothing about crashes.
        wait_until(lambda: soak.stranded, timeout=plan.budget_s, what="a kill mid-handler")

        wait_until(drained, timeout=plan.budget_s, what="every job to be acked", interval=0.5)
        elapsed = time.monotonic() - started
    finally:
        soak.stop.set()
        chaos.join(30)
        for thread in consumers:
            thread.join(30)
        soak.stop_workers()
    return check_and_measure(soak, pushed_s, elapsed)


def check_and_measure(soak: Soak, pushed_s: float, elapsed: float) -> dict[str, Any]:
    plan, ledger = soak.plan, soak.ledger
    assert not ledger.errors, f"a client gave up: {ledger.errors[:3]}"
    final = soak.read()
    records = soak.worker_records()
    deliveries = [*ledger.deliveries, *((r["id"], r["a"]) for r in records if r["e"] == "got")]
    acked = [*ledger.acked, *((r["id"], r["a"]) for r in records if r["e"] == "acked")]
    nacked = [*ledger.nacked, *((r["id"], r["a"]) for r in records if r["e"] == "nacked")]
    lost = ledger.ack_lost + sum(1 for r in records if r["e"] == "lost")

    # No push lost or duplicated: one job per tag, as many jobs as the queue counted.
    ids = set(ledger.ids.values())
    assert len(ids) == len(ledger.ids) == plan.jobs, "two tags were answered with one id"
    assert final.stats.pushed == plan.jobs, (
        f"the queue counted {final.stats.pushed} pushes for {plan.jobs} jobs: a retried push "
        "was applied twice"
    )
    assert final.next_seq - 1 == plan.jobs

    # Every job acked, except the doomed ones: dead letters, each after its two attempts.
    assert not final.jobs, f"{len(final.jobs)} jobs still in the queue"
    dead = {job.id: job for job in final.dead}
    doomed = {ledger.ids[tag] for tag in ledger.doomed}
    assert set(dead) == doomed, "dead letters are not exactly the jobs every handler failed"
    for job in dead.values():
        assert job.attempts == job.max_attempts == 2, f"job {job.id} dead after {job.attempts}"
    assert final.stats.dead == len(dead)
    assert final.stats.acked == plan.jobs - len(dead), "acks counted != jobs not dead"
    never_delivered = ids - set(dead) - {job_id for job_id, _ in deliveries}
    assert not never_delivered, f"acked without ever being delivered: {sorted(never_delivered)}"

    # At-least-once, never "after": no (job, attempt) twice, nothing after an ok ack.
    twice = [ref for ref, n in Counter(deliveries).items() if n > 1]
    assert not twice, f"(job, attempt) delivered twice: {twice[:5]}"
    acked_at = dict(acked)
    late = [(j, a) for j, a in deliveries if j in acked_at and a > acked_at[j]]
    assert not late, f"delivered again after an ack was answered ok: {late[:5]}"
    assert not set(acked_at) & set(dead), "a job both acked and dead"

    # The chaos happened: workers were killed after delivering jobs, some mid-job, and
    # jobs stranded by a kill were delivered again; consumers abandoned claims.
    worker_deliveries = [(r["id"], r["a"]) for r in records if r["e"] == "got"]
    killed_deliveries = [r for r in soak.worker_records(soak.killed_logs) if r["e"] == "got"]
    assert soak.kills > 0 and worker_deliveries and killed_deliveries, "no worker was killed"
    latest = {job_id: max(seen) for job_id, seen in _attempts(deliveries).items()}
    # A job whose handler a kill cut short had no ack or nack sent: it must have come back
    # when its lease lapsed -- delivered again, or dead if that was its last attempt.
    came_back = {(j, a) for j, a in soak.stranded if latest[j] > a}
    stuck = {(j, a) for j, a in soak.stranded - came_back if j not in dead}
    assert soak.stranded and not stuck, f"killed mid-handler, never came back: {stuck}"
    assert ledger.abandoned, "no claim was abandoned"

    # The counters agree with what the parties saw. Each claim ends in exactly one ack,
    # nack or expiry, and raised the job's attempt by one; an acked job's last attempt
    # is the one delivered and acked, a dead letter's count is in the file.
    claims = sum(latest[job_id] for job_id in ids - set(dead))
    claims += sum(job.attempts for job in dead.values())
    s = final.stats
    assert s.acked + s.nacked + s.expired == claims, (s, claims)
    # Settlements nobody could confirm: answered lease_lost (perhaps after landing),
    # released at shutdown, or cut off by a kill before the worker logged them.
    worker_unconfirmed = sum(1 for r in records if r["e"] in ("lost", "released"))
    worker_unconfirmed += sum(len(unsettled(read_records(log))) for log in soak.worker_logs)
    unconfirmed = ledger.nack_lost + ledger.ack_lost + worker_unconfirmed
    assert len(nacked) <= s.nacked <= len(nacked) + unconfirmed, (s, len(nacked), unconfirmed)
    # An expiry is a claim with no landed settlement: abandoned on purpose, unconfirmed,
    # or never delivered at all (a claim whose answer was lost).
    never_answered = claims - len(deliveries)
    assert len(ledger.abandoned) <= s.expired, (s, len(ledger.abandoned))
    assert s.expired <= len(ledger.abandoned) + unconfirmed + never_answered, (
        s,
        len(ledger.abandoned),
        unconfirmed,
        never_answered,
    )

    # Each delivery after a job's first is planned when the one before it was nacked or
    # abandoned on purpose, unplanned otherwise (a killed worker, a lapsed heartbeat, a
    # claim whose answer was lost).
    attempts = _attempts(deliveries)
    on_purpose = set(nacked) | set(ledger.abandoned)
    redeliveries = planned = 0
    for job_id, seen in attempts.items():
        for before in sorted(seen)[:-1]:
            redeliveries += 1
            planned += (job_id, before) in on_purpose
    faults = metric_values(soak.broker, "obque_store_faults_injected_total")
    requests = metric_values(soak.broker, "obque_store_requests_total")
    figures = {
        "jobs": plan.jobs,
        "keyed": len(ledger.keyed),
        "repushed_keys": ledger.repushes,
        "seconds": round(elapsed, 1),
        "push_seconds": round(pushed_s, 1),
        "deliveries": len(deliveries),
        "redeliveries": redeliveries,
        "redelivery_rate": round(redeliveries / plan.jobs, 4),
        "of_which_planned_nack_or_abandon": planned,
        "of_which_unplanned": redeliveries - planned,
        "unplanned_rate": round((redeliveries - planned) / plan.jobs, 4),
        "worker_kills": soak.kills,
        "worker_deliveries": len(worker_deliveries),
        "stranded_by_kills": len(soak.stranded),
        "stranded_delivered_again": len(came_back),
        "abandoned": len(ledger.abandoned),
        "claims_never_answered": never_answered,
        "acks_answered_lease_lost": lost,
        "dead_letters": len(dead),
        "expired": final.stats.expired,
        "commits": final.stats.commits,
        "faults_injected": {k: int(v) for k, v in faults.items()},
        "store_requests": {k: int(v) for k, v in requests.items()},
    }
    assert sum(faults.values()) > 0, "no faults were injected: is ?faults= applied?"
    print("fault-soak " + json.dumps(figures))
    return figures


def _attempts(deliveries: list[tuple[str, int]]) -> dict[str, list[int]]:
    by_job: dict[str, list[int]] = {}
    for job_id, attempt in deliveries:
        by_job.setdefault(job_id, []).append(attempt)
    return by_job


# -- the runs ------------------------------------------------------------------------------


@pytest.fixture
def seaweed_root(seaweedfs_s3: StoreServer) -> Iterator[str]:
    yield seaweedfs_s3.uri(f"soak-{uuid.uuid4().hex[:8]}/")


def file_run(brokers: BrokerFactory, plan: Plan) -> dict[str, Any]:
    root = brokers.root(query=f"faults={plan.faults}&seed={plan.seed}")
    queue = (brokers.root_dir() / f"{QUEUE}.json").resolve().as_uri()
    return run_soak(brokers, root, queue, plan)


def seaweed_run(brokers: BrokerFactory, root: str, plan: Plan) -> dict[str, Any]:
    faulty = f"{root}?faults={plan.faults}&seed={plan.seed}"
    return run_soak(brokers, faulty, f"{root}{QUEUE}.json", plan)


@pytest.mark.timeout(240)
def test_soak_file_store_with_faults(brokers: BrokerFactory) -> None:
    file_run(brokers, Plan(jobs=4000))


@pytest.mark.timeout(240)
def test_soak_seaweedfs_with_faults(brokers: BrokerFactory, seaweed_root: str) -> None:
    seaweed_run(brokers, seaweed_root, Plan(jobs=2000, seed=11))


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_long_soak_file_store_with_faults(brokers: BrokerFactory) -> None:
    file_run(brokers, Plan(jobs=20_000, producers=6, worker_processes=3, budget_s=900, seed=21))


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_long_soak_seaweedfs_with_faults(brokers: BrokerFactory, seaweed_root: str) -> None:
    plan = Plan(jobs=10_000, producers=6, worker_processes=3, budget_s=900, seed=23)
    seaweed_run(brokers, seaweed_root, plan)


def test_a_broker_starts_while_its_store_fails(brokers: BrokerFactory) -> None:
    """With seed 3 the very first store call -- the LIST of the root that adopts existing
    queues at startup -- fails. The broker must start anyway (it used to exit with
    "Application startup failed") and serve the queue, which it adopts later."""
    root = brokers.root(query="faults=0.5&seed=3")
    made = brokers.run("init", "--root", brokers.root(), "--queue", QUEUE)
    assert made.returncode == 0, made.stderr
    broker = brokers.start(root)
    assert "scanning the root failed" in broker.log()
    with broker.client() as http:
        wait_until(
            lambda: http.get(f"/v1/queues/{QUEUE}/stats").status_code == 200,
            timeout=30,
            what="the queue to be served",
        )


def test_metrics_count_injected_faults_by_kind(brokers: BrokerFactory) -> None:
    """The soak's fault figures come from /metrics: a ``?faults=`` root reports them."""
    broker = brokers.start(brokers.root(query="faults=0.5&seed=3"))
    with broker.client() as http:
        wait_until(
            lambda: http.put("/v1/queues/soak").status_code in (200, 201),
            timeout=30,
            what="the queue to be created",
        )
        for _ in range(20):
            http.post("/v1/queues/soak/push", json={"jobs": [{"payload": 1}]})
    faults = metric_values(broker, "obque_store_faults_injected_total")
    assert set(faults) == {"conflict", "unavailable", "timeout", "ambiguous"}
    assert sum(faults.values()) > 0


def test_a_root_without_faults_reports_none(brokers: BrokerFactory) -> None:
    broker = brokers.start(brokers.root())
    with broker.client() as http:
        assert http.put("/v1/queues/soak").status_code == 201
        assert "obque_store_faults_injected_total" not in http.get("/metrics").text
