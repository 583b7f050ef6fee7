"""Stateful property tests: the queue against a small reference model (SPEC section 12).

Two machines share the rules and the model. ``ApplyMachine`` drives the pure
``apply``; ``CommitterMachine`` drives ``Committer`` on a ``mem://`` store that injects
conflicts, 5xx errors, timeouts and ambiguous writes into 20% of calls. Both check, after
every step, that every pushed job is in exactly one place, that claims follow FIFO order
among ready jobs, that stale leases change nothing, that each commit adds exactly one
revision, that keyed pushes never make a second live job for a key, and that the stats
counters match the model.

Set ``OBQUE_STATEFUL_PROFILE=obque-stateful-explore`` for a longer, randomised run.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from obque.commit import Committer, cas, create_queue
from obque.core import (
    Ack,
    Claim,
    ClaimResult,
    Configure,
    CountResult,
    Heartbeat,
    ItemResult,
    ItemsResult,
    LeaseRef,
    Nack,
    NackItem,
    NewJob,
    Op,
    Purge,
    Push,
    PushResult,
    QueueConfig,
    QueueState,
    Redrive,
    Result,
    apply,
    decode_state,
    retry_delay_ms,
)
from obque.store import AmbiguousWrite, Backend, Snapshot, Store, StoreUnavailable, open_store
from obque.store.memory import MemoryBackend

settings.register_profile(
    "obque-stateful",
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    derandomize=True,
    database=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "obque-stateful-explore",
    max_examples=500,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
PROFILE = settings.get_profile(os.environ.get("OBQUE_STATEFUL_PROFILE", "obque-stateful"))

START_MS = 1_700_000_000_000
CONFIG: dict[str, object] = {
    "lease_seconds": 10,
    "max_attempts": 3,
    "retry_delay_seconds": 1,
    "retry_delay_max_seconds": 4,
    "dead_retention": 3,
    "dedup_seconds": 30,
}
QUEUE_CONFIG = Configure.of(CONFIG).applied_to(QueueConfig())
UNKNOWN_ID = "999999"
#: Stands for "some text saying why": the model does not predict the machine's wording.
ANY_ERROR = "<any error>"


# -- the reference model --------------------------------------------------------------


@dataclass
class ModelJob:
    id: str
    payload: bytes
    key: str | None
    max_attempts: int | None
    ready_ms: int
    attempts: int = 0
    lease: str | None = None
    worker: str | None = None
    expires_ms: int = 0
    last_error: str | None = None
    #: live, dead, acked, purged (from the dead letters) or dropped (dead_retention)
    fate: str = "live"


@dataclass
class Model:
    """What the queue should hold, written as plainly as possible: lists scanned in full."""

    config: QueueConfig
    now: int = START_MS
    jobs: dict[str, ModelJob] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # live jobs, FIFO
    dead: list[str] = field(default_factory=list)  # oldest first
    #: key -> (id, time) of the last keyed job that left the live set
    gone_keys: dict[str, tuple[str, int]] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    next_seq: int = 1
    leases: list[tuple[str, str]] = field(default_factory=list)  # every lease handed out
    #: Must the current commit write (True), must it not (False), or may it (None)?
    changed: bool | None = False

    def count(self, name: str, n: int = 1) -> None:
        self.stats[name] = self.stats.get(name, 0) + n

    def live(self) -> list[ModelJob]:
        return [self.jobs[i] for i in self.order]

    def claimed(self) -> list[ModelJob]:
        return [job for job in self.live() if job.lease is not None]

    def ready(self) -> list[ModelJob]:
        return [job for job in self.live() if job.lease is None and job.ready_ms <= self.now]

    def live_with_key(self, key: str) -> set[str]:
        return {job.id for job in self.live() if job.key == key}

    def stale_leases(self) -> list[tuple[str, str]]:
        return [(i, lease) for i, lease in self.leases if self.jobs[i].lease != lease]

    def limit(self, job: ModelJob) -> int:
        return job.max_attempts or self.config.max_attempts

    def missing(self, job_id: str) -> str:
        return "lease_lost" if int(job_id) < self.next_seq else "not_found"

    # -- a commit -----------------------------------------------------------------------

    def mark(self, changed: bool | None = True) -> None:
        if changed or self.changed is False:
            self.changed = changed

    def begin_commit(self) -> None:
        self.changed = False
        for job in self.claimed():
            if job.expires_ms < self.now:
                self.mark()
                self.count("expired")
                if job.attempts >= self.limit(job):
                    self.bury(job)
                else:
                    job.lease, job.ready_ms = None, self.now

    def leave(self, job: ModelJob, fate: str) -> None:
        self.order.remove(job.id)
        job.fate, job.lease = fate, None
        if job.key is not None and not self.live_with_key(job.key):
            self.gone_keys[job.key] = (job.id, self.now)

    def bury(self, job: ModelJob) -> None:
        self.leave(job, "dead")
        job.last_error = job.last_error or ANY_ERROR
        self.dead.append(job.id)
        self.count("dead")
        while len(self.dead) > self.config.dead_retention:
            self.jobs[self.dead.pop(0)].fate = "dropped"
            self.count("dead_dropped")

    def push(self, new: Sequence[NewJob], result: Result) -> None:
        assert isinstance(result, PushResult), result
        assert len(result.ids) == len(new)
        duplicates = []
        for job, got in zip(new, result.ids, strict=True):
            if job.key is not None and (holders := self.live_with_key(job.key)):
                assert got in holders, f"key {job.key!r} is live as {holders}, got {got}"
                duplicates.append(got)
                continue
            seen = self.gone_keys.get(job.key) if job.key is not None else None
            if seen is not None and seen[1] >= self.now - self.config.dedup_seconds * 1000:
                assert got == seen[0], f"key {job.key!r} recently held by {seen[0]}, got {got}"
                duplicates.append(got)
                continue
            assert got == str(self.next_seq), f"expected a new job {self.next_seq}, got {got}"
            self.next_seq += 1
            self.jobs[got] = ModelJob(
                got, bytes(job.payload), job.key, job.max_attempts, self.now + job.delay_ms
            )
            self.order.append(got)
            self.count("pushed")
            self.mark()
        assert list(result.duplicates) == duplicates

    def claim(self, op: Claim, result: Result) -> None:
        assert isinstance(result, ClaimResult), result
        expected = [job.id for job in self.ready()[: op.max]]
        assert [job.id for job in result.jobs] == expected, "claims must follow FIFO order"
        lease_ms = op.lease_ms or self.config.lease_seconds * 1000
        for got in result.jobs:
            job = self.jobs[got.id]
            job.attempts += 1
            job.lease, job.worker, job.expires_ms = got.lease, op.worker, self.now + lease_ms
            assert (got.attempt, got.lease_expires_ms) == (job.attempts, job.expires_ms)
            assert bytes(got.payload) == job.payload
            assert (got.id, got.lease) not in self.leases, "a lease token was reused"
            self.leases.append((got.id, got.lease))
            self.mark()

    def held(self, job_id: str, lease: str) -> ModelJob | ItemResult:
        job = self.jobs.get(job_id)
        if job is None or job.fate != "live":
            return ItemResult(job_id, False, self.missing(job_id))
        if job.lease != lease:
            return ItemResult(job_id, False, "lease_lost")
        self.mark()
        return job

    def heartbeat(self, op: Heartbeat) -> list[ItemResult]:
        out = []
        for ref in op.leases:
            job = self.held(ref.id, ref.lease)
            if isinstance(job, ModelJob):
                job.expires_ms = self.now + (op.lease_ms or self.config.lease_seconds * 1000)
                job = ItemResult(job.id, True, lease_expires_ms=job.expires_ms)
            out.append(job)
        return out

    def ack(self, op: Ack) -> list[ItemResult]:
        out = []
        for ref in op.leases:
            job = self.held(ref.id, ref.lease)
            if isinstance(job, ModelJob):
                self.leave(job, "acked")
                self.count("acked")
                job = ItemResult(job.id, True)
            out.append(job)
        return out

    def nack(self, op: Nack) -> list[ItemResult]:
        out = []
        for item in op.items:
            job = self.held(item.id, item.lease)
            if isinstance(job, ModelJob):
                self.count("nacked")
                if item.error is not None:
                    job.last_error = item.error
                if item.dead or job.attempts >= self.limit(job):
                    self.bury(job)
                else:
                    c = self.config
                    delay = item.delay_ms
                    if delay is None:
                        delay = retry_delay_ms(
                            job.attempts, c.retry_delay_seconds, c.retry_delay_max_seconds
                        )
                    job.lease, job.ready_ms = None, self.now + delay
                job = ItemResult(job.id, True)
            out.append(job)
        return out

    def take_dead(self, ids: tuple[str, ...] | None, fate: str) -> list[ModelJob]:
        taken = [self.jobs[i] for i in self.dead if ids is None or i in ids]
        # Naming only letters that are not there may or may not count as a change.
        self.mark(True if taken else (None if self.dead else False))
        for job in taken:
            self.dead.remove(job.id)
            job.fate = fate
        return taken

    def redrive(self, ids: tuple[str, ...] | None) -> int:
        taken = self.take_dead(ids, "live")
        for job in taken:
            job.attempts, job.lease, job.ready_ms = 0, None, self.now
            self.order.append(job.id)
        self.count("redriven", len(taken))
        return len(taken)

    def purge(self, ids: tuple[str, ...] | None) -> int:
        taken = self.take_dead(ids, "purged")
        self.count("purged", len(taken))
        return len(taken)

    def check_results(self, ops: Sequence[Op], results: Sequence[Result]) -> None:
        assert len(results) == len(ops)
        for op, result in zip(ops, results, strict=True):
            match op:
                case Push():
                    self.push(op.jobs, result)
                case Claim():
                    self.claim(op, result)
                case Heartbeat():
                    assert_items(result, self.heartbeat(op))
                case Ack():
                    assert_items(result, self.ack(op))
                case Nack():
                    assert_items(result, self.nack(op))
                case Redrive():
                    assert result == CountResult(self.redrive(op.ids))
                case Purge():
                    assert result == CountResult(self.purge(op.ids))
                case _:
                    raise AssertionError(f"the model does not know {op!r}")


def assert_items(result: Result, expected: list[ItemResult]) -> None:
    assert isinstance(result, ItemsResult), result
    assert list(result.results) == expected


def same_error(real: str | None, model: str | None) -> bool:
    return bool(real) if model == ANY_ERROR else real == model


def check_state(state: QueueState, model: Model, last_commit_ms: int) -> None:
    """The real state holds exactly what the model says."""
    # Every pushed job is in exactly one place.
    live, dead = set(state.jobs), [job.id for job in state.dead]
    assert not live & set(dead)
    assert len(dead) == len(set(dead))
    for job in model.jobs.values():
        where = ("live",) * (job.id in live) + ("dead",) * (job.id in dead)
        assert where == ((job.fate,) if job.fate in ("live", "dead") else ()), (job.id, where)
    assert live | set(dead) <= set(model.jobs)

    assert list(state.jobs) == model.order, "live jobs out of FIFO order"
    assert dead == model.dead
    for real in [*state.jobs.values(), *state.dead]:
        want = model.jobs[real.id]
        assert bytes(real.payload) == want.payload
        assert (real.key, real.max_attempts, real.attempts) == (
            want.key,
            want.max_attempts,
            want.attempts,
        ), real.id
        assert real.ready_ms == want.ready_ms, real.id
        assert same_error(real.last_error, want.last_error), (real.id, real.last_error)
        if real.claim is None:
            assert want.lease is None, real.id
        else:
            assert (real.claim.lease, real.claim.worker, real.claim.expires_ms) == (
                want.lease,
                want.worker,
                want.expires_ms,
            ), real.id

    # Keys: each key of a live job is held by a live job carrying it, and no other keys.
    live_keys = {job.key for job in state.jobs.values() if job.key is not None}
    assert set(state.keys) == live_keys
    for key, holder in state.keys.items():
        assert state.jobs[holder].key == key

    # Remembered keys are pruned once they stop deduplicating.
    horizon = last_commit_ms - model.config.dedup_seconds * 1000
    for name, entry in state.applied.items():
        if name.startswith("k:"):
            assert entry.at_ms >= horizon, f"{name} outlived dedup_seconds"

    counters = msgspec.structs.asdict(state.stats)
    assert counters == {name: model.stats.get(name, 0) for name in counters}
    # Both machines start from a state whose revision equals its number of commits.
    assert state.revision == model.stats.get("commits", 0)


# -- the machines ---------------------------------------------------------------------

DELAYS = st.sampled_from([None, None, 0, 0.5, 1, 5])
KEYS = st.sampled_from([None, None, "a", "b", "c"])
PICK = st.integers(0, 1000)


class QueueMachine(RuleBasedStateMachine):
    """Rules and checks shared by both machines; subclasses say how a batch commits."""

    state: QueueState
    model: Model
    last_commit_ms: int

    def __init__(self) -> None:
        super().__init__()
        self.payloads = 0

    def commit_batch(self, ops: list[Op]) -> tuple[QueueState, list[Result]]:
        raise NotImplementedError

    def commit(self, *ops: Op) -> list[Result]:
        """One commit; its revision grows by one exactly when it changes the queue."""
        before = self.state
        self.model.begin_commit()
        state, results = self.commit_batch(list(ops))
        grew = state.revision - before.revision
        assert grew in (0, 1), f"revision {before.revision} -> {state.revision}: applied twice?"
        self.model.check_results(ops, results)
        allowed = {True: {1}, False: {0}, None: {0, 1}}[self.model.changed]
        assert grew in allowed, f"revision {before.revision} -> {state.revision}"
        if grew:
            self.model.count("commits")
            self.last_commit_ms = self.model.now
        self.state = state
        return results

    def pick(self, jobs: Sequence[Any], index: int) -> Any:
        return jobs[index % len(jobs)]

    # -- rules --------------------------------------------------------------------------

    @rule(
        jobs=st.lists(
            st.tuples(KEYS, DELAYS, st.sampled_from([None, None, 1, 5])), min_size=1, max_size=3
        )
    )
    def push(self, jobs: list[tuple[str | None, float | None, int | None]]) -> None:
        new = []
        for key, delay, max_attempts in jobs:
            self.payloads += 1
            new.append(NewJob.of({"n": self.payloads}, key, delay, max_attempts))
        keys_before = {job.key for job in self.state.jobs.values() if job.key is not None}
        [result] = self.commit(Push.of(new))
        assert isinstance(result, PushResult)
        created = [i for i in result.ids if i not in result.duplicates]
        for job_id in created:
            assert self.state.jobs[job_id].key not in keys_before, "second live job for a key"

    @rule(
        n=st.integers(1, 5),
        lease=st.sampled_from([None, None, 1, 5, 20]),
        worker=st.sampled_from(["w1", "w2"]),
    )
    def claim(self, n: int, lease: int | None, worker: str) -> None:
        self.commit(Claim.of(worker, n, lease))

    @precondition(lambda self: self.model.claimed())
    @rule(index=PICK, lease=st.sampled_from([None, 3, 30]))
    def heartbeat(self, index: int, lease: int | None) -> None:
        job = self.pick(self.model.claimed(), index)
        self.commit(Heartbeat.of([LeaseRef.of(job.id, job.lease)], lease))

    @precondition(lambda self: self.model.claimed())
    @rule(index=PICK, noise=st.booleans())
    def ack(self, index: int, noise: bool) -> None:
        """Ack a held lease, with stale and unknown items in the batch when ``noise``."""
        job = self.pick(self.model.claimed(), index)
        refs = [LeaseRef.of(job.id, job.lease)]
        if noise:
            stale = [LeaseRef.of(i, lease) for i, lease in self.model.stale_leases()[-2:]]
            refs = [*stale, LeaseRef.of(UNKNOWN_ID, "made-up"), *refs]
        self.commit(Ack.of(refs))

    @precondition(lambda self: self.model.stale_leases())
    @rule(index=PICK, kind=st.sampled_from(["ack", "nack", "heartbeat"]))
    def use_stale_lease(self, index: int, kind: str) -> None:
        """A stale worker answers lease_lost and changes nothing."""
        job_id, lease = self.pick(self.model.stale_leases(), index)
        ref = LeaseRef.of(job_id, lease)
        ops: dict[str, Op] = {
            "ack": Ack.of([ref]),
            "nack": Nack.of([NackItem.of(job_id, lease, delay_seconds=0, dead=True)]),
            "heartbeat": Heartbeat.of([ref], 600),
        }
        op = ops[kind]
        [result] = self.commit(op)
        assert isinstance(result, ItemsResult)
        assert [r.ok for r in result.results] == [False]

    @precondition(lambda self: self.model.claimed())
    @rule(
        index=PICK,
        delay=st.sampled_from([None, None, 0, 2]),
        dead=st.sampled_from([False, False, False, True]),
        error=st.sampled_from([None, "boom", "bang"]),
    )
    def nack(self, index: int, delay: int | None, dead: bool, error: str | None) -> None:
        job = self.pick(self.model.claimed(), index)
        self.commit(Nack.of([NackItem.of(job.id, job.lease, delay, error, dead)]))

    @precondition(lambda self: self.model.claimed())
    @rule(index=PICK, n=st.integers(1, 3))
    def nack_then_claim(self, index: int, n: int) -> None:
        """A job nacked with delay 0 keeps its FIFO place for a claim in the same commit."""
        job = self.pick(self.model.claimed(), index)
        self.commit(
            Claim.of("w-early", 1),
            Nack.of([NackItem.of(job.id, job.lease, delay_seconds=0)]),
            Claim.of("w-late", n),
        )

    @rule(ms=st.sampled_from([1, 499, 1000, 2000, 5000, 10_000, 10_001, 31_000]))
    def advance_time(self, ms: int) -> None:
        self.model.now += ms

    @rule()
    def empty_commit(self) -> None:
        self.commit()

    def dead_ids(self, indexes: list[int] | None) -> tuple[str, ...] | None:
        if indexes is None:
            return None
        dead = self.model.dead
        picked = {dead[i % len(dead)] for i in indexes} if dead else set()
        return (*sorted(picked), UNKNOWN_ID)

    @precondition(lambda self: self.model.dead)
    @rule(indexes=st.none() | st.lists(PICK, max_size=2))
    def redrive(self, indexes: list[int] | None) -> None:
        self.commit(Redrive(self.dead_ids(indexes)))

    @precondition(lambda self: self.model.dead)
    @rule(indexes=st.none() | st.lists(PICK, max_size=2))
    def purge(self, indexes: list[int] | None) -> None:
        self.commit(Purge(self.dead_ids(indexes)))

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def state_matches_model(self) -> None:
        check_state(self.state, self.model, self.last_commit_ms)


class ApplyMachine(QueueMachine):
    """The pure state machine, one ``apply`` per commit."""

    def __init__(self) -> None:
        super().__init__()
        self.model = Model(QUEUE_CONFIG)
        self.state = QueueState.new("q", QUEUE_CONFIG)
        self.last_commit_ms = START_MS

    def commit_batch(self, ops: list[Op]) -> tuple[QueueState, list[Result]]:
        nonce = f"nonce-{self.state.revision}".encode()
        return apply(self.state, ops, self.model.now, nonce)


class CommitterMachine(QueueMachine):
    """``Committer`` on a store that fails 20% of calls (reproducibly, from ``seed``)."""

    @initialize(seed=st.integers(0, 2**32 - 1))
    def open_queue(self, seed: int) -> None:
        bucket = f"stateful-{uuid.uuid4().hex}"
        self.model = Model(QUEUE_CONFIG)
        clock = self.clock
        _, self.state = create_queue(open_store(f"mem://{bucket}"), "q", CONFIG, clock=clock)
        self.model.count("commits")  # creating the file is the first commit
        self.last_commit_ms = START_MS
        self.clean = open_store(f"mem://{bucket}")
        self.nonces = 0
        self.committer = Committer(
            open_store(f"mem://{bucket}?faults=0.2&seed={seed}"),
            clock=clock,
            entropy=self.entropy,
            max_unavailable=1000,
        )

    def clock(self) -> float:
        # Half a millisecond in, so int(clock() * 1000) is exactly model.now.
        return (self.model.now + 0.5) / 1000

    def entropy(self, n: int) -> bytes:
        self.nonces += 1
        return self.nonces.to_bytes(n, "big")

    def commit_batch(self, ops: list[Op]) -> tuple[QueueState, list[Result]]:
        state, results = self.committer.commit(ops)
        snap = self.clean.read()
        assert snap is not None
        assert decode_state(snap.data, self.clean.uri) == state, "stored file != answered state"
        return state, results


def test_apply_against_the_model() -> None:
    run_state_machine_as_test(ApplyMachine, settings=PROFILE)


class NoBackoffTime:
    """``time`` for the committer without its retry backoff sleeps: with 20% faults
    they would be most of this test's run time, and the store is in memory."""

    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

    @staticmethod
    def sleep(seconds: float) -> None:
        del seconds


def test_committer_with_faults_against_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cas, "time", NoBackoffTime)
    # Shrinking replays faulty runs for minutes; the unshrunk steps are readable enough.
    no_shrink = settings(PROFILE, phases=[Phase.explicit, Phase.reuse, Phase.generate])
    run_state_machine_as_test(CommitterMachine, settings=no_shrink)


# -- a fault the random run may or may not hit, pinned down ---------------------------


class ScriptedBackend(Backend):
    """In-memory objects whose next write can land but lose its answer, after which the
    next ``failing_reads`` reads fail."""

    def __init__(self) -> None:
        self.inner = MemoryBackend(f"scripted-{uuid.uuid4().hex}")
        self.lose_next_answer = False
        self.failing_reads = 0

    def get(self, key: str) -> Snapshot | None:
        if self.failing_reads:
            self.failing_reads -= 1
            raise StoreUnavailable("injected read failure")
        return self.inner.get(key)

    def put(self, key: str, data: bytes, expected: str | None) -> str:
        token = self.inner.put(key, data, expected)
        if self.lose_next_answer:
            self.lose_next_answer = False
            self.failing_reads = 2
            raise AmbiguousWrite("injected: the write landed, its answer was lost")
        return token

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def list(self, prefix: str) -> list[str]:
        return self.inner.list(prefix)

    def uri(self, key: str) -> str:
        return self.inner.uri(key)


@pytest.fixture
def scripted() -> tuple[ScriptedBackend, Committer]:
    backend = ScriptedBackend()
    store = Store(backend, "queue.json")

    def clock() -> float:
        return START_MS / 1000

    create_queue(store, "q", CONFIG, clock=clock)
    return backend, Committer(store, clock=clock)


def commit_after_lost_answer(
    backend: ScriptedBackend, committer: Committer, op: Op
) -> tuple[QueueState, list[Result]]:
    """Commit ``op`` through a write that lands but whose answer and the two reads that
    try to confirm it all fail."""
    revision = committer.refresh().revision
    backend.lose_next_answer = True
    state, results = committer.commit([op])
    assert state.revision == revision + 1, "the batch was applied twice"
    return state, results


def test_ack_whose_write_landed_unconfirmed_is_answered_ok(
    scripted: tuple[ScriptedBackend, Committer],
) -> None:
    backend, committer = scripted
    committer.commit([Push.of([NewJob.of("x")])])
    _, [claimed] = committer.commit([Claim.of("w")])
    assert isinstance(claimed, ClaimResult)
    [job] = claimed.jobs

    state, [result] = commit_after_lost_answer(
        backend, committer, Ack.of([LeaseRef.of(job.id, job.lease)])
    )
    assert result == ItemsResult((ItemResult(job.id, True),))
    assert state.stats.acked == 1


def test_unkeyed_push_whose_write_landed_unconfirmed_is_pushed_once(
    scripted: tuple[ScriptedBackend, Committer],
) -> None:
    backend, committer = scripted
    state, [result] = commit_after_lost_answer(
        backend, committer, Push.of([NewJob.of("only once")])
    )
    assert isinstance(result, PushResult)
    assert list(state.jobs) == list(result.ids) == ["1"]


def test_claim_whose_write_landed_unconfirmed_hands_out_only_the_answered_jobs(
    scripted: tuple[ScriptedBackend, Committer],
) -> None:
    backend, committer = scripted
    committer.commit([Push.of([NewJob.of("a"), NewJob.of("b")])])
    state, [result] = commit_after_lost_answer(backend, committer, Claim.of("w"))
    assert isinstance(result, ClaimResult)
    held = [job.id for job in state.jobs.values() if job.claim is not None]
    assert held == [job.id for job in result.jobs]
