"""A long poll hears every push that lands after its claim was answered empty.

The race: the claim's commit answers "nothing", then -- before the claimer parks -- a
push commits and the writer looks for parked polls to wake. Had the claimer registered
its wait only after the empty answer, that wake found nobody, and with the job ready
there was no due time for a timer either: the poll waited out its whole wait with a
job ready. These tests put a push commit exactly in that gap, deterministically, by
wrapping the engine's ``run``/``arun`` around the claim.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator

import pytest

from obque.commit import Committer, QueueEngine, create_queue
from obque.core import Claim, ClaimResult, NewJob, Op, Push, PushResult, Result
from obque.store import Store
from obque.store.memory import MemoryBackend

#: Far longer than the hang guard: a poll that missed the wake would outlast the guard.
WAIT_S = 120.0
#: Only proves "did not hang"; the poll is expected back at once.
HANG_GUARD_S = 15.0


@pytest.fixture
def engine() -> Iterator[QueueEngine]:
    bucket = f"wake-{uuid.uuid4().hex[:8]}"
    store = Store(MemoryBackend(bucket), "q.json")
    create_queue(store, "q")
    # Trusting its cache (as a broker's leader does), the engine's long polls never
    # re-read the file on a timer: only a commit's wake can end their wait early.
    engine = QueueEngine(store, committer=Committer(store, trust_cache=True))
    try:
        yield engine
    finally:
        engine.close()
        MemoryBackend.forget(bucket)


def _empty_claim(op: Op, result: Result) -> bool:
    return isinstance(op, Claim) and isinstance(result, ClaimResult) and not result.jobs


def test_a_push_landing_after_the_empty_claim_wakes_the_poll(
    engine: QueueEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_run = engine.run
    pushed: list[PushResult] = []

    def run(op: Op, timeout: float | None = None) -> Result:
        result = real_run(op, timeout)
        if _empty_claim(op, result) and not pushed:
            # The claim is answered but its caller has not parked yet: commit a push.
            landed = real_run(Push.of([NewJob.of("in the gap")]))
            assert isinstance(landed, PushResult)
            pushed.append(landed)
        return result

    monkeypatch.setattr(engine, "run", run)
    answers: list[ClaimResult] = []
    poll = threading.Thread(
        target=lambda: answers.append(engine.claim(Claim.of("w"), WAIT_S)), daemon=True
    )
    poll.start()
    poll.join(HANG_GUARD_S)
    if poll.is_alive():
        pytest.fail("the long poll missed the push that landed after its empty claim")
    [answer] = answers
    assert [job.id for job in answer.jobs] == list(pushed[0].ids)
    assert engine.parked_claims == 0


def test_an_async_push_landing_after_the_empty_claim_wakes_the_poll(
    engine: QueueEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_arun = engine.arun
    pushed: list[PushResult] = []

    async def arun(op: Op) -> Result:
        result = await real_arun(op)
        if _empty_claim(op, result) and not pushed:
            landed = await real_arun(Push.of([NewJob.of("in the gap")]))
            assert isinstance(landed, PushResult)
            pushed.append(landed)
        return result

    monkeypatch.setattr(engine, "arun", arun)

    async def poll() -> ClaimResult:
        return await asyncio.wait_for(engine.aclaim(Claim.of("w"), WAIT_S), HANG_GUARD_S)

    try:
        answer = asyncio.run(poll())
    except TimeoutError:
        pytest.fail("the async long poll missed the push that landed after its empty claim")
    assert [job.id for job in answer.jobs] == list(pushed[0].ids)
    assert engine.parked_claims == 0


def test_a_poll_counts_as_parked_only_once_its_claim_found_nothing(
    engine: QueueEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``parked_claims`` (the broker's ``obque_parked_claims``) counts waiting polls,
    not polls whose claim is still in flight."""
    real_run = engine.run
    in_flight: list[int] = []

    def run(op: Op, timeout: float | None = None) -> Result:
        in_flight.append(engine.parked_claims)
        return real_run(op, timeout)

    monkeypatch.setattr(engine, "run", run)
    engine.run(Push.of([NewJob.of("ready")]))
    answer = engine.claim(Claim.of("w"), WAIT_S)
    assert len(answer.jobs) == 1
    assert in_flight == [0, 0]


def test_a_delayed_push_while_a_poll_waits_wakes_it_when_the_job_comes_due(
    engine: QueueEngine,
) -> None:
    """The poll parked on an empty queue with no timer (nothing was due). A job pushed
    with a short delay leaves nothing ready, but its due time is earlier than the poll's
    own deadline: the poll must re-arm for it instead of sleeping through its wait."""
    answers: list[ClaimResult] = []
    poll = threading.Thread(
        target=lambda: answers.append(engine.claim(Claim.of("w"), WAIT_S)), daemon=True
    )
    poll.start()
    deadline = threading.Event()
    while engine.parked_claims == 0 and not deadline.wait(0.01):
        pass  # until the poll's claim found nothing and it parked
    landed = engine.run(Push.of([NewJob.of("soon", delay_seconds=0.3)]))
    assert isinstance(landed, PushResult)
    poll.join(HANG_GUARD_S)
    if poll.is_alive():
        pytest.fail("the parked poll slept through a delayed job that came due")
    [answer] = answers
    assert [job.id for job in answer.jobs] == list(landed.ids)
    assert engine.parked_claims == 0
