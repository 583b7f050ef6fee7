"""Every rule of SPEC section 4, checked on the pure state machine with explicit times.

Each test drives ``apply(state, ops, now_ms, nonce)`` directly: no clock, no store. A
commit's nonce defaults to one derived from the revision, so lease tokens differ between
commits the way random nonces make them differ in production.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import msgspec
import pytest

from obque.core import (
    Ack,
    Advertise,
    BrokerRecord,
    Claim,
    ClaimedJob,
    ClaimResult,
    ConfigResult,
    Configure,
    CountResult,
    Heartbeat,
    Intent,
    IntentResult,
    InvalidRequest,
    ItemResult,
    ItemsResult,
    LeaseRef,
    Nack,
    NackItem,
    NewJob,
    Op,
    OpError,
    Purge,
    Push,
    PushResult,
    QueueConfig,
    QueueState,
    Redrive,
    Result,
    apply,
    decode_state,
    encode_state,
    lease_token,
)
from obque.core import admission as admission_module
from obque.core import cursor as cursor_module
from obque.core import machine as machine_module

T0 = 1_700_000_000_000
SECOND = 1000


# -- helpers --------------------------------------------------------------------------


def queue(**config: Any) -> QueueState:
    return QueueState.new("q", QueueConfig(**config))


def commit(
    state: QueueState, *ops: Op, now: int = T0, nonce: bytes | None = None
) -> tuple[QueueState, list[Result]]:
    """One commit; the nonce defaults to one unique per revision."""
    nonce = nonce if nonce is not None else f"nonce-{state.revision}".encode()
    return apply(state, list(ops), now, nonce)


def as_push(result: Result) -> PushResult:
    assert isinstance(result, PushResult), result
    return result


def answer(result: Result) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A push's ids and duplicates."""
    pushed = as_push(result)
    return pushed.ids, pushed.duplicates


def as_claimed(result: Result) -> tuple[ClaimedJob, ...]:
    assert isinstance(result, ClaimResult), result
    return result.jobs


def as_items(result: Result) -> tuple[ItemResult, ...]:
    assert isinstance(result, ItemsResult), result
    return result.results


def as_count(result: Result) -> int:
    assert isinstance(result, CountResult), result
    return result.count


def push(
    state: QueueState, *payloads: Any, now: int = T0, **options: Any
) -> tuple[QueueState, list[str]]:
    """Push one job per payload in one operation; return the ids answered."""
    state, [result] = commit(state, Push.of([NewJob.of(p, **options) for p in payloads]), now=now)
    return state, list(as_push(result).ids)


def claim(
    state: QueueState,
    n: int = 1,
    *,
    now: int = T0,
    worker: str = "w",
    lease_seconds: float | None = None,
) -> tuple[QueueState, tuple[ClaimedJob, ...]]:
    state, [result] = commit(state, Claim.of(worker, n, lease_seconds), now=now)
    return state, as_claimed(result)


def ack(state: QueueState, job: ClaimedJob, *, now: int = T0) -> tuple[QueueState, ItemResult]:
    state, [result] = commit(state, Ack.of([LeaseRef.of(job.id, job.lease)]), now=now)
    [item] = as_items(result)
    return state, item


def nack(
    state: QueueState, job: ClaimedJob, *, now: int = T0, **options: Any
) -> tuple[QueueState, ItemResult]:
    state, [result] = commit(state, Nack.of([NackItem.of(job.id, job.lease, **options)]), now=now)
    [item] = as_items(result)
    return state, item


def ids(jobs: tuple[ClaimedJob, ...]) -> list[str]:
    return [job.id for job in jobs]


def dead_ids(state: QueueState) -> list[str]:
    return [job.id for job in state.dead]


def ok(job_id: str, **fields: Any) -> ItemResult:
    return ItemResult(job_id, True, **fields)


def failed(job_id: str, error: str) -> ItemResult:
    return ItemResult(job_id, False, error)


def without_commit_counters(data: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = msgspec.json.decode(data)
    doc.pop("revision")
    doc["stats"].pop("commits")
    return doc


# -- push -----------------------------------------------------------------------------


def test_push_assigns_increasing_ids_in_fifo_order() -> None:
    state, first = push(queue(), "a", "b", "c")
    state, second = push(state, "d", "e", now=T0 + 5)

    assert first == ["1", "2", "3"]
    assert second == ["4", "5"]
    assert list(state.jobs) == ["1", "2", "3", "4", "5"]
    assert [bytes(job.payload) for job in state.jobs.values()] == [
        b'"a"',
        b'"b"',
        b'"c"',
        b'"d"',
        b'"e"',
    ]
    assert state.jobs["4"].enqueued_ms == state.jobs["4"].ready_ms == T0 + 5
    assert state.jobs["1"].attempts == 0 and state.jobs["1"].claim is None
    assert state.next_seq == 6
    assert state.stats.pushed == 5


def test_claim_order_follows_push_order() -> None:
    state, pushed = push(queue(), *range(7))
    state, got = claim(state, 7)
    assert ids(got) == pushed


@pytest.mark.parametrize("size", [0, 1001])
def test_push_batch_outside_1_to_1000_is_rejected(size: int) -> None:
    with pytest.raises(InvalidRequest, match="1000") as caught:
        Push.of([NewJob.of(i) for i in range(size)])
    assert str(size) in str(caught.value)


def test_push_batch_of_1000_is_accepted() -> None:
    state, pushed = push(queue(), *range(1000))
    assert len(pushed) == len(state.jobs) == 1000
    assert pushed[-1] == "1000"


def test_same_key_twice_in_one_push_creates_one_job() -> None:
    state, [result] = commit(
        queue(), Push.of([NewJob.of("first", key="k"), NewJob.of("second", key="k")])
    )
    assert answer(result) == (("1", "1"), ("1",))
    assert list(state.jobs) == ["1"]
    assert bytes(state.jobs["1"].payload) == b'"first"'
    assert state.stats.pushed == 1


def test_keyed_push_across_commits_returns_the_live_job() -> None:
    state, first = push(queue(), "a", key="k")
    state, [result] = commit(state, Push.of([NewJob.of("b", key="k"), NewJob.of("c")]), now=T0 + 1)
    assert answer(result) == (("1", "2"), ("1",))
    assert first == ["1"]
    assert list(state.jobs) == ["1", "2"]
    assert state.stats.pushed == 2


def test_keyed_push_while_the_job_is_claimed_is_a_duplicate() -> None:
    state, _ = push(queue(), "a", key="k")
    state, [_held] = claim(state)
    state, [result] = commit(state, Push.of([NewJob.of("again", key="k")]))
    assert as_push(result).duplicates == ("1",)
    assert list(state.jobs) == ["1"]


def test_keyed_push_after_ack_is_a_duplicate_within_dedup_seconds() -> None:
    state, _ = push(queue(dedup_seconds=60), "a", key="k")
    state, [job] = claim(state)
    state, _ = ack(state, job, now=T0 + SECOND)

    state, [result] = commit(
        state, Push.of([NewJob.of("again", key="k")]), now=T0 + SECOND + 60 * SECOND - 1
    )
    assert answer(result) == (("1",), ("1",))
    assert state.jobs == {}
    assert state.stats.pushed == 1


def test_keyed_push_after_dedup_seconds_creates_a_new_job() -> None:
    state, _ = push(queue(dedup_seconds=60), "a", key="k")
    state, [job] = claim(state)
    state, _ = ack(state, job, now=T0 + SECOND)

    state, [result] = commit(
        state, Push.of([NewJob.of("again", key="k")]), now=T0 + SECOND + 60 * SECOND + 1
    )
    assert answer(result) == (("2",), ())
    assert list(state.jobs) == ["2"]
    assert state.stats.pushed == 2
    # And the new job deduplicates from now on.
    state, [result] = commit(state, Push.of([NewJob.of("third", key="k")]), now=T0 + 90 * SECOND)
    assert as_push(result).duplicates == ("2",)


def test_keyed_push_after_dead_letter_is_a_duplicate_within_dedup_seconds() -> None:
    state, _ = push(queue(dedup_seconds=60), "a", key="k")
    state, [job] = claim(state)
    state, _ = nack(state, job, dead=True)
    state, [result] = commit(state, Push.of([NewJob.of("again", key="k")]), now=T0 + 30 * SECOND)
    assert answer(result) == (("1",), ("1",))
    assert state.jobs == {}


def test_applied_key_is_pruned_once_dedup_seconds_have_passed() -> None:
    state, _ = push(queue(dedup_seconds=10), "a", key="k")
    state, [job] = claim(state)
    state, _ = ack(state, job)
    assert "k:k" in state.applied

    # Pruning happens in commits that write something, such as a push.
    state, _ = push(state, "x", now=T0 + 10 * SECOND)
    assert "k:k" in state.applied
    state, _ = push(state, "y", now=T0 + 10 * SECOND + 1)
    assert "k:k" not in state.applied


def test_expired_key_stops_deduplicating_even_before_it_is_pruned() -> None:
    state, _ = push(queue(dedup_seconds=10), "a", key="k")
    state, [job] = claim(state)
    state, _ = ack(state, job)
    # No commit has written since: the entry is still in the file, but too old.
    assert "k:k" in state.applied
    state, [result] = commit(state, Push.of([NewJob.of("b", key="k")]), now=T0 + 11 * SECOND)
    assert answer(result) == (("2",), ())


def test_keyed_push_never_creates_a_second_live_job_for_a_key_a_live_job_carries() -> None:
    # A keyed job dies; after its key stopped deduplicating a new job takes the key, and
    # the dead one is redriven: it must not bring a second live holder of key "k".
    def holders(state: QueueState) -> list[str]:
        return [j.id for j in state.jobs.values() if j.key == "k"]

    state, _ = push(queue(dedup_seconds=10, max_attempts=1), "old", key="k")
    state, [job] = claim(state)
    state, _ = nack(state, job, dead=True)
    later = T0 + 20 * SECOND
    state, _ = push(state, "new", key="k", now=later)
    state, [result] = commit(state, Redrive(), now=later)
    assert as_count(result) == 1
    assert holders(state) == ["2"]
    assert state.jobs["1"].key is None  # redriven, without the key the live job holds
    assert decode_state(encode_state(state), "q") == state

    # While "2" is live, the key deduplicates to it; once it is acked and the key has
    # stopped deduplicating, a push makes exactly one new holder.
    state, [result] = commit(state, Push.of([NewJob.of("dup", key="k")]), now=later)
    assert answer(result) == (("2",), ("2",))
    state, [holder] = claim(state, now=later)
    assert holder.id == "2"  # the redriven job went to the tail
    state, _ = ack(state, holder, now=later)
    assert holders(state) == []
    third = Push.of([NewJob.of("third", key="k")])
    state, [result] = commit(state, third, now=later + 11 * SECOND)
    assert holders(state) == [answer(result)[0][0]] == ["3"]


def test_unkeyed_pushes_never_deduplicate() -> None:
    state, pushed = push(queue(), "same", "same")
    state, again = push(state, "same")
    assert pushed + again == ["1", "2", "3"]


# -- delay ----------------------------------------------------------------------------


def test_delayed_job_is_claimable_only_once_now_reaches_ready_ms() -> None:
    state, _ = push(queue(), "later", delay_seconds=5)
    assert state.jobs["1"].ready_ms == T0 + 5 * SECOND
    assert state.counts(T0) == {"ready": 0, "delayed": 1, "claimed": 0, "dead": 0}

    state, got = claim(state, now=T0 + 5 * SECOND - 1)
    assert got == ()
    state, got = claim(state, now=T0 + 5 * SECOND)
    assert ids(got) == ["1"]


def test_earlier_job_still_delayed_does_not_block_later_ready_jobs() -> None:
    state, _ = push(queue(), "delayed", delay_seconds=5)
    state, _ = push(state, "now")
    state, got = claim(state, 5)
    assert ids(got) == ["2"]
    state, got = claim(state, 5, now=T0 + 5 * SECOND)
    assert ids(got) == ["1"]


# -- claim ----------------------------------------------------------------------------


def test_claim_takes_up_to_max_earliest_ready_jobs() -> None:
    state, _ = push(queue(), *range(5))
    state, got = claim(state, 3)
    assert ids(got) == ["1", "2", "3"]
    state, got = claim(state, 5)
    assert ids(got) == ["4", "5"]
    state, got = claim(state, 5)
    assert got == ()


def test_claim_sets_a_lease_and_increments_attempts() -> None:
    state, _ = push(queue(lease_seconds=30), {"x": 1})
    state, [got] = claim(state, worker="worker-7", now=T0 + 3)

    job = state.jobs["1"]
    assert job.attempts == 1
    assert job.claim is not None
    assert job.claim.worker == "worker-7"
    assert job.claim.lease == got.lease and got.lease
    assert job.claim.expires_ms == got.lease_expires_ms == T0 + 3 + 30 * SECOND
    assert job.claim.heartbeat_ms == T0 + 3
    assert got.attempt == 1
    assert bytes(got.payload) == b'{"x":1}'
    assert state.counts(T0 + 3) == {"ready": 0, "delayed": 0, "claimed": 1, "dead": 0}


def test_claim_with_its_own_lease_seconds() -> None:
    state, _ = push(queue(lease_seconds=30), "a")
    state, [got] = claim(state, lease_seconds=7)
    assert got.lease_expires_ms == T0 + 7 * SECOND


def test_claim_skips_delayed_and_claimed_jobs() -> None:
    state, _ = push(queue(), "a")
    state, _ = push(state, "b", delay_seconds=60)
    state, _ = push(state, "c")
    state, first = claim(state)
    state, second = claim(state, 3)
    assert ids(first) == ["1"]
    assert ids(second) == ["3"]


def test_claims_in_one_commit_never_hand_out_a_job_twice() -> None:
    state, _ = push(queue(), *range(4))
    state, results = commit(state, Claim.of("a", 3), Claim.of("b", 3))
    assert ids(as_claimed(results[0])) == ["1", "2", "3"]
    assert ids(as_claimed(results[1])) == ["4"]
    assert state.jobs["4"].claim is not None and state.jobs["4"].claim.worker == "b"


@pytest.mark.parametrize("size", [0, 101])
def test_claim_max_outside_1_to_100_is_rejected(size: int) -> None:
    with pytest.raises(InvalidRequest, match="100"):
        Claim.of("w", size)


def test_claim_max_100_is_accepted() -> None:
    state, _ = push(queue(), *range(150))
    state, got = claim(state, 100)
    assert len(got) == 100


# -- heartbeat ------------------------------------------------------------------------


def test_heartbeat_extends_the_lease() -> None:
    state, _ = push(queue(lease_seconds=30), "a")
    state, [job] = claim(state)
    later = T0 + 20 * SECOND
    state, [result] = commit(state, Heartbeat.of([LeaseRef.of(job.id, job.lease)]), now=later)

    assert as_items(result) == (ok("1", lease_expires_ms=later + 30 * SECOND),)
    claim_record = state.jobs["1"].claim
    assert claim_record is not None
    assert claim_record.expires_ms == later + 30 * SECOND
    assert claim_record.heartbeat_ms == later
    assert claim_record.lease == job.lease
    # Past the original expiry, the job is still held.
    state, _ = commit(state, now=T0 + 45 * SECOND)
    assert state.jobs["1"].claim is not None
    assert state.stats.expired == 0


def test_heartbeat_with_its_own_lease_seconds() -> None:
    state, _ = push(queue(lease_seconds=30), "a")
    state, [job] = claim(state)
    state, [result] = commit(
        state, Heartbeat.of([LeaseRef.of(job.id, job.lease)], lease_seconds=120), now=T0 + 1
    )
    assert as_items(result)[0].lease_expires_ms == T0 + 1 + 120 * SECOND


# -- ack ------------------------------------------------------------------------------


def test_ack_removes_the_job() -> None:
    state, _ = push(queue(), "a", "b")
    state, [job] = claim(state)
    state, result = ack(state, job)
    assert result == ok("1")
    assert list(state.jobs) == ["2"]
    assert state.dead == ()
    assert state.stats.acked == 1


def test_ack_twice_answers_lease_lost_the_second_time() -> None:
    state, _ = push(queue(), "a")
    state, [job] = claim(state)
    state, _ = ack(state, job)
    state, result = ack(state, job)
    assert result == failed("1", "lease_lost")
    assert state.stats.acked == 1


@pytest.mark.parametrize("kind", ["ack", "nack", "heartbeat"])
def test_stale_lease_answers_lease_lost_and_changes_nothing(kind: str) -> None:
    state, _ = push(queue(lease_seconds=10), "a", "b")
    state, [old] = claim(state)
    # The lease lapses and another worker claims the job again.
    state, [new] = claim(state, now=T0 + 10 * SECOND + 1, worker="other")
    assert new.id == old.id and new.lease != old.lease

    ref = LeaseRef.of(old.id, old.lease)
    ops: dict[str, Op] = {
        "ack": Ack.of([ref]),
        "nack": Nack.of([NackItem.of(old.id, old.lease, delay_seconds=0)]),
        "heartbeat": Heartbeat.of([ref]),
    }
    op = ops[kind]
    after, [result] = commit(state, op, now=T0 + 11 * SECOND)

    assert as_items(result) == (failed(old.id, "lease_lost"),)
    assert encode_state(after) == encode_state(state)


def test_lease_of_another_job_answers_lease_lost() -> None:
    state, _ = push(queue(), "a", "b")
    state, [one, two] = claim(state, 2)
    state, [result] = commit(state, Ack.of([LeaseRef.of(one.id, two.lease)]))
    assert as_items(result) == (failed("1", "lease_lost"),)
    assert list(state.jobs) == ["1", "2"]


@pytest.mark.parametrize("kind", ["ack", "nack", "heartbeat"])
def test_unknown_id_answers_not_found(kind: str) -> None:
    state, _ = push(queue(), "a")
    ref = LeaseRef.of("999", "no-such-lease")
    ops: dict[str, Op] = {
        "ack": Ack.of([ref]),
        "nack": Nack.of([NackItem.of("999", "no-such-lease")]),
        "heartbeat": Heartbeat.of([ref]),
    }
    op = ops[kind]
    after, [result] = commit(state, op)
    assert as_items(result) == (failed("999", "not_found"),)
    assert encode_state(after) == encode_state(state)


def test_bad_ack_in_a_batch_does_not_abort_the_good_one() -> None:
    state, _ = push(queue(), "a", "b")
    state, [one, two] = claim(state, 2)
    state, [result] = commit(
        state,
        Ack.of(
            [
                LeaseRef.of("999", "nope"),
                LeaseRef.of(one.id, "stale-lease"),
                LeaseRef.of(two.id, two.lease),
            ]
        ),
    )
    assert as_items(result) == (
        failed("999", "not_found"),
        failed("1", "lease_lost"),
        ok("2"),
    )
    assert list(state.jobs) == ["1"]
    assert state.stats.acked == 1


def test_bad_items_in_heartbeat_and_nack_batches_do_not_abort_the_good_ones() -> None:
    state, _ = push(queue(lease_seconds=30), "a", "b")
    state, [one, two] = claim(state, 2)
    now = T0 + 5 * SECOND
    state, [beat, nacked] = commit(
        state,
        Heartbeat.of([LeaseRef.of("77", "x"), LeaseRef.of(one.id, one.lease)]),
        Nack.of([NackItem.of(one.id, "wrong"), NackItem.of(two.id, two.lease, delay_seconds=0)]),
        now=now,
    )
    assert as_items(beat) == (failed("77", "not_found"), ok("1", lease_expires_ms=now + 30_000))
    assert as_items(nacked) == (failed("1", "lease_lost"), ok("2"))
    assert state.jobs["2"].claim is None
    assert state.stats.nacked == 1


# -- nack -----------------------------------------------------------------------------


def test_nack_with_explicit_delay() -> None:
    state, _ = push(queue(), "a")
    state, [job] = claim(state)
    now = T0 + SECOND
    state, result = nack(state, job, now=now, delay_seconds=10, error="flaky")

    assert result == ok("1")
    nacked = state.jobs["1"]
    assert nacked.claim is None
    assert nacked.ready_ms == now + 10 * SECOND
    assert nacked.last_error == "flaky"
    assert nacked.attempts == 1
    assert state.stats.nacked == 1

    state, got = claim(state, now=now + 10 * SECOND - 1)
    assert got == ()
    state, [again] = claim(state, now=now + 10 * SECOND)
    assert again.attempt == 2
    assert state.jobs["1"].last_error == "flaky"


def test_nack_without_delay_backs_off_exponentially_up_to_the_cap() -> None:
    state, _ = push(queue(max_attempts=10, retry_delay_seconds=2, retry_delay_max_seconds=10), "a")
    now = T0
    delays = []
    for _ in range(5):
        state, [job] = claim(state, now=now)
        state, _ = nack(state, job, now=now)
        delays.append(state.jobs["1"].ready_ms - now)
        now = state.jobs["1"].ready_ms
    # retry_delay_seconds * 2 ** (attempts - 1), capped at retry_delay_max_seconds
    assert delays == [2000, 4000, 8000, 10_000, 10_000]


def test_nack_dead_dead_letters_with_the_error_kept() -> None:
    state, _ = push(queue(max_attempts=5), "a", "b")
    state, [job] = claim(state)
    state, result = nack(state, job, dead=True, error="poison")

    assert result == ok("1")
    assert list(state.jobs) == ["2"]
    assert dead_ids(state) == ["1"]
    assert state.dead[0].last_error == "poison"
    assert state.dead[0].claim is None
    assert state.stats.dead == 1
    assert state.stats.nacked == 1


def test_nack_on_the_last_attempt_dead_letters() -> None:
    state, _ = push(queue(max_attempts=2), "a")
    state, [job] = claim(state)
    state, _ = nack(state, job, delay_seconds=0, error="first")
    assert list(state.jobs) == ["1"]
    state, [job] = claim(state)
    assert job.attempt == 2
    state, result = nack(state, job, delay_seconds=0, error="second")

    assert result == ok("1")
    assert state.jobs == {}
    assert dead_ids(state) == ["1"]
    assert state.dead[0].last_error == "second"
    assert state.dead[0].attempts == 2
    assert state.stats.dead == 1


def test_nack_without_error_keeps_the_previous_error() -> None:
    state, _ = push(queue(), "a")
    state, [job] = claim(state)
    state, _ = nack(state, job, delay_seconds=0, error="boom")
    state, [job] = claim(state)
    state, _ = nack(state, job, delay_seconds=0)
    assert state.jobs["1"].last_error == "boom"


def test_per_job_max_attempts_lower_than_config() -> None:
    state, _ = push(queue(max_attempts=5), "a", max_attempts=1)
    state, [job] = claim(state)
    state, _ = nack(state, job, delay_seconds=0)
    assert dead_ids(state) == ["1"]


def test_per_job_max_attempts_higher_than_config() -> None:
    state, _ = push(queue(max_attempts=1), "a", max_attempts=3)
    for attempt in (1, 2):
        state, [job] = claim(state)
        assert job.attempt == attempt
        state, _ = nack(state, job, delay_seconds=0)
        assert list(state.jobs) == ["1"]
    state, [job] = claim(state)
    state, _ = nack(state, job, delay_seconds=0)
    assert dead_ids(state) == ["1"]


def test_job_nacked_with_delay_0_in_the_same_commit_keeps_its_fifo_place() -> None:
    state, _ = push(queue(), "a", "b", "c", "d")
    state, [first] = claim(state)
    state, results = commit(
        state,
        Claim.of("w", 1),  # the claim cursor moves past job 1 (claimed) to job 2
        Nack.of([NackItem.of(first.id, first.lease, delay_seconds=0)]),
        Claim.of("w", 2),
    )
    assert ids(as_claimed(results[0])) == ["2"]
    assert as_items(results[1]) == (ok("1"),)
    assert ids(as_claimed(results[2])) == ["1", "3"]


def test_job_nacked_with_delay_0_is_claimed_before_later_jobs() -> None:
    state, _ = push(queue(), "a", "b", "c")
    state, [first] = claim(state)
    state, results = commit(
        state, Nack.of([NackItem.of(first.id, first.lease, delay_seconds=0)]), Claim.of("w", 2)
    )
    assert ids(as_claimed(results[1])) == ["1", "2"]


# -- expiry ---------------------------------------------------------------------------


def test_claim_expires_on_the_next_commit_after_expires_ms() -> None:
    state, _ = push(queue(lease_seconds=10), "a")
    state, [job] = claim(state)
    expires = job.lease_expires_ms

    state, _ = commit(state, now=expires)
    assert state.jobs["1"].claim is not None
    assert state.stats.expired == 0

    state, _ = commit(state, now=expires + 1)
    lapsed = state.jobs["1"]
    assert lapsed.claim is None
    assert lapsed.ready_ms == expires + 1
    assert lapsed.attempts == 1
    assert state.stats.expired == 1
    assert state.counts(expires + 1)["ready"] == 1


def test_expired_job_is_claimed_again_in_its_fifo_place() -> None:
    state, _ = push(queue(lease_seconds=1), "a", "b", "c")
    state, [_held] = claim(state)
    state, got = claim(state, 3, now=T0 + 2 * SECOND)
    assert ids(got) == ["1", "2", "3"]
    assert got[0].attempt == 2
    assert state.stats.expired == 1


def test_expiry_on_the_last_attempt_dead_letters() -> None:
    state, _ = push(queue(lease_seconds=1, max_attempts=1), "a")
    state, [_held] = claim(state)
    state, _ = commit(state, now=T0 + 2 * SECOND)
    assert state.jobs == {}
    assert dead_ids(state) == ["1"]
    assert state.dead[0].last_error  # says why it died
    assert state.stats.expired == 1
    assert state.stats.dead == 1


def test_expired_then_reclaimed_job_old_lease_is_lost_and_new_lease_works() -> None:
    state, _ = push(queue(lease_seconds=1), "a")
    state, [old] = claim(state, worker="slow")
    state, [new] = claim(state, now=T0 + 2 * SECOND, worker="fast")

    state, old_result = ack(state, old, now=T0 + 3 * SECOND)
    assert old_result == failed("1", "lease_lost")
    assert list(state.jobs) == ["1"]
    state, new_result = ack(state, new, now=T0 + 3 * SECOND)
    assert new_result == ok("1")
    assert state.jobs == {}


# -- dead letters ---------------------------------------------------------------------


def bury(state: QueueState, n: int) -> QueueState:
    """Push, claim and dead-letter ``n`` jobs."""
    state, _ = push(state, *range(n))
    state, got = claim(state, n)
    state, [result] = commit(
        state, Nack.of([NackItem.of(j.id, j.lease, dead=True, error=f"e{j.id}") for j in got])
    )
    assert all(item.ok for item in as_items(result))
    return state


def test_dead_retention_drops_the_oldest() -> None:
    state = bury(queue(dead_retention=2), 3)
    assert dead_ids(state) == ["2", "3"]
    assert state.stats.dead == 3
    assert state.stats.dead_dropped == 1


def test_dead_retention_zero_keeps_nothing() -> None:
    state = bury(queue(dead_retention=0), 2)
    assert state.dead == ()
    assert state.stats.dead_dropped == 2


def test_redrive_all_moves_dead_letters_to_the_tail_with_attempts_reset() -> None:
    state = bury(queue(), 2)
    state, _ = push(state, "live")
    state, [result] = commit(state, Redrive())

    assert as_count(result) == 2
    assert state.dead == ()
    assert list(state.jobs) == ["3", "1", "2"]
    assert [state.jobs[i].attempts for i in ("1", "2")] == [0, 0]
    assert state.jobs["1"].claim is None
    assert state.stats.redriven == 2
    state, got = claim(state, 3)
    assert ids(got) == ["3", "1", "2"]
    assert [job.attempt for job in got] == [1, 1, 1]


def test_redrive_by_ids() -> None:
    state = bury(queue(), 3)
    state, [result] = commit(state, Redrive(("2", "404")))
    assert as_count(result) == 1
    assert dead_ids(state) == ["1", "3"]
    assert list(state.jobs) == ["2"]
    assert state.stats.redriven == 1


def test_redriven_job_gets_its_full_attempts_again() -> None:
    state = bury(queue(max_attempts=1), 1)
    state, _ = commit(state, Redrive())
    state, [job] = claim(state)
    state, _ = nack(state, job, delay_seconds=0)
    assert dead_ids(state) == ["1"]
    assert state.stats.dead == 2


def test_purge_all() -> None:
    state = bury(queue(), 3)
    state, [result] = commit(state, Purge())
    assert as_count(result) == 3
    assert state.dead == ()
    assert state.stats.purged == 3


def test_purge_by_ids() -> None:
    state = bury(queue(), 3)
    state, [result] = commit(state, Purge(("1", "3", "404")))
    assert as_count(result) == 2
    assert dead_ids(state) == ["2"]
    assert state.stats.purged == 2


def test_redrive_and_purge_of_an_empty_dead_list_count_zero() -> None:
    _, results = commit(queue(), Redrive(), Purge(), Redrive(("1",)))
    assert [as_count(r) for r in results] == [0, 0, 0]


# -- configure and advertise ----------------------------------------------------------


def test_configure_changes_only_the_named_settings() -> None:
    before = queue()
    state, [result] = commit(before, Configure.of({"lease_seconds": 5, "max_attempts": 9}))
    expected = msgspec.structs.replace(before.config, lease_seconds=5, max_attempts=9)
    assert state.config == expected
    assert isinstance(result, ConfigResult) and result.config == expected


def test_configure_applies_to_later_ops_in_the_same_commit() -> None:
    state, _ = push(queue(lease_seconds=30), "a")
    state, results = commit(state, Configure.of({"lease_seconds": 5}), Claim.of("w"))
    assert as_claimed(results[1])[0].lease_expires_ms == T0 + 5 * SECOND


def test_configure_accepts_integral_floats_for_integer_settings() -> None:
    configure = Configure.of({"lease_seconds": 5.0, "retry_delay_seconds": 2})
    state, _ = commit(queue(), configure)
    assert state.config.lease_seconds == 5
    assert isinstance(state.config.lease_seconds, int)
    assert state.config.retry_delay_seconds == 2.0


def test_configure_rejects_an_unknown_setting_naming_it() -> None:
    with pytest.raises(InvalidRequest) as caught:
        Configure.of({"lease_second": 5})
    message = str(caught.value)
    assert "lease_second" in message
    assert "lease_seconds" in message  # lists the settings there are


@pytest.mark.parametrize(
    ("name", "value", "low", "high"),
    [
        ("lease_seconds", 0, 1, 43_200),
        ("lease_seconds", 43_201, 1, 43_200),
        ("lease_seconds", 1.5, 1, 43_200),
        ("lease_seconds", True, 1, 43_200),
        ("lease_seconds", "30", 1, 43_200),
        ("max_attempts", 0, 1, 1000),
        ("max_attempts", 1001, 1, 1000),
        ("retry_delay_seconds", -0.5, 0, 2_592_000),
        ("retry_delay_seconds", float("nan"), 0, 2_592_000),
        ("retry_delay_max_seconds", float("inf"), 0, 2_592_000),
        ("dead_retention", -1, 0, 1_000_000),
        ("max_payload_bytes", 0, 1, 4_194_304),
        ("max_payload_bytes", 4 * 1024 * 1024 + 1, 1, 4_194_304),
        ("dedup_seconds", 7 * 86_400 + 1, 0, 604_800),
        ("max_jobs", 0, 1, 1_000_000),
        ("max_inline_bytes", 1023, 1024, 1_073_741_824),
        ("max_inline_bytes", 2**30 + 1, 1024, 1_073_741_824),
        # A JSON integer too big for a float.
        pytest.param("max_jobs", 10**400, 1, 1_000_000, id="max_jobs-huge-int"),
    ],
)
def test_configure_rejects_out_of_range_values_naming_setting_and_range(
    name: str, value: object, low: int, high: int
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        Configure.of({name: value})
    message = str(caught.value)
    assert name in message
    named = re.search(r"from (\S+) to (\S+),", message)
    assert named is not None, message
    # The range may be written in any notation, but it must be the real range.
    assert (float(named[1]), float(named[2])) == (low, high), message


@pytest.mark.parametrize(
    "build",
    [
        lambda: NewJob.of("x", delay_seconds=10**400),
        lambda: NewJob.of("x", delay_seconds=-1),
        lambda: NewJob.of("x", max_attempts=0),
        lambda: NewJob.of("x", key=""),
        lambda: Claim.of("w", 1, lease_seconds=10**400),
        lambda: Claim.of("w", 1, lease_seconds=0),
        lambda: Claim.of("", 1),
        lambda: Heartbeat.of([LeaseRef.of("1", "x")], lease_seconds=10**400),
        lambda: NackItem.of("1", "x", delay_seconds=10**400),
        lambda: Ack.of([]),
    ],
    ids=[
        "delay-huge-int",
        "delay-negative",
        "max-attempts-0",
        "empty-key",
        "claim-lease-huge-int",
        "claim-lease-0",
        "empty-worker",
        "heartbeat-lease-huge-int",
        "nack-delay-huge-int",
        "empty-ack",
    ],
)
def test_operation_constructors_reject_out_of_range_input(build: Callable[[], object]) -> None:
    with pytest.raises(InvalidRequest):
        build()


def test_advertise_sets_the_broker_record() -> None:
    broker = BrokerRecord(url="http://127.0.0.1:8080", id="b-1", epoch=3, heartbeat_ms=T0)
    state, [result] = commit(queue(), Advertise(broker))
    assert state.broker == broker
    assert as_count(result) == 1


# -- per-operation limits from the queue's config -------------------------------------


def test_payload_over_max_payload_bytes_refuses_that_push_only() -> None:
    state, _ = push(queue(max_payload_bytes=10), "x")
    state, results = commit(
        state,
        Push.of([NewJob.of("ok"), NewJob.of("a payload that is far too long")]),
        Push.of([NewJob.of("fits")]),
        Claim.of("w"),
    )
    refused = results[0]
    assert isinstance(refused, OpError)
    assert refused.code == "payload_too_large"
    assert "10" in refused.message and "max_payload_bytes" in refused.message
    assert as_push(results[1]).ids == ("2",)
    assert ids(as_claimed(results[2])) == ["1"]
    assert list(state.jobs) == ["1", "2"]
    assert state.stats.pushed == 2


def test_payload_of_exactly_max_payload_bytes_is_accepted() -> None:
    _, pushed = push(queue(max_payload_bytes=5), "abc")  # '"abc"' is 5 bytes
    assert pushed == ["1"]


def test_max_jobs_answers_queue_full_and_pushes_nothing_from_that_op() -> None:
    state, _ = push(queue(max_jobs=3), "a", "b")
    state, results = commit(
        state, Push.of([NewJob.of("c"), NewJob.of("d")]), Push.of([NewJob.of("e")])
    )
    refused = results[0]
    assert isinstance(refused, OpError)
    assert refused.code == "queue_full"
    assert "max_jobs" in refused.message and "3" in refused.message
    assert as_push(results[1]).ids == ("3",)
    assert list(state.jobs) == ["1", "2", "3"]
    state, [result] = commit(state, Push.of([NewJob.of("f")]))
    assert isinstance(result, OpError) and result.code == "queue_full"


def test_a_retried_keyed_push_on_a_queue_at_max_jobs_answers_its_existing_id() -> None:
    """A client retrying a keyed push whose first attempt landed must get its id back,
    not queue_full: duplicates add no job, so they do not count against max_jobs."""
    state, [first] = push(queue(max_jobs=2), "a", key="once")
    state, _ = push(state, "b")
    assert len(state.jobs) == 2  # full
    state, [retry] = commit(state, Push.of([NewJob.of("a", key="once")]))
    assert answer(retry) == ((first,), (first,))
    # Repeated within one push, a new key adds one job, and only that one counts.
    state, [acked] = claim(state)
    state, _ = ack(state, acked)
    state, [twice] = commit(state, Push.of([NewJob.of("c", key="k2")] * 2))
    assert answer(twice) == (("3", "3"), ("3",))
    # New jobs beside a duplicate still meet the limit.
    state, [over] = commit(state, Push.of([NewJob.of("a", key="once"), NewJob.of("d")]))
    assert isinstance(over, OpError) and over.code == "queue_full", over
    assert len(state.jobs) == 2


# -- the commit frame -----------------------------------------------------------------


def test_revision_and_commits_grow_by_one_per_apply_that_changes_the_queue() -> None:
    state = queue()
    for expected in range(1, 5):
        state, _ = commit(state, *([Push.of([NewJob.of(expected)])] * expected))
        assert state.revision == expected
        assert state.stats.commits == expected
    state, _ = commit(state, Claim.of("w", 3), Claim.of("w", 1), now=T0 + 1)
    assert state.revision == 5
    assert state.stats.commits == 5


@pytest.mark.parametrize(
    "ops",
    [
        [],
        [Claim.of("w", 5)],
        [Ack.of([LeaseRef.of("1", "stale")]), Heartbeat.of([LeaseRef.of("7", "x")])],
        [Nack.of([NackItem.of("1", "stale", dead=True)])],
        [Push.of([NewJob.of("big" * 100)])],  # refused: payload_too_large
        [Redrive(), Purge()],  # no dead letters
    ],
    ids=["nothing", "claim-none-ready", "stale-leases", "stale-nack", "refused-push", "no-dead"],
)
def test_apply_that_changes_nothing_returns_its_input(ops: list[Op]) -> None:
    state, _ = push(queue(max_payload_bytes=100), "a", delay_seconds=60)
    after, _ = commit(state, *ops, now=T0 + 1)
    assert after is state


def test_push_result_names_the_revision_that_holds_it() -> None:
    state, _ = push(queue(), "a", key="k")
    after, [result] = commit(state, Push.of([NewJob.of("b")]))
    assert as_push(result).revision == after.revision == 2
    # A push of nothing but duplicates writes nothing: the queue stays at revision 2.
    again, [duplicate] = commit(after, Push.of([NewJob.of("a", key="k")]))
    assert answer(duplicate) == (("1",), ("1",))
    assert as_push(duplicate).revision == again.revision


def test_apply_never_mutates_its_input_state() -> None:
    state, _ = push(queue(max_attempts=2), "a", "b", "c", key=None)
    state, _ = push(state, "keyed", key="k")
    state, got = claim(state, 3)
    state = bury(state, 1)
    before = encode_state(state)
    jobs, keys, applied, dead = dict(state.jobs), dict(state.keys), dict(state.applied), state.dead

    apply(
        state,
        [
            Push.of([NewJob.of("new", key="n")]),
            Claim.of("w", 5),
            Heartbeat.of([LeaseRef.of(got[0].id, got[0].lease)]),
            Ack.of([LeaseRef.of(got[1].id, got[1].lease)]),
            Nack.of([NackItem.of(got[2].id, got[2].lease, dead=True)]),
            Redrive(),
            Purge(),
            Configure.of({"lease_seconds": 1}),
            Advertise(BrokerRecord(url="http://x")),
        ],
        T0 + 60 * SECOND,
        b"nonce",
    )

    assert encode_state(state) == before
    assert state.jobs == jobs and state.keys == keys and state.applied == applied
    assert state.dead == dead


def test_lease_tokens_differ_across_claims() -> None:
    state, _ = push(queue(lease_seconds=1), "a", "b")
    state, [one, two] = claim(state, 2)
    state, [again] = claim(state, now=T0 + 2 * SECOND)
    assert again.id == one.id
    assert len({one.lease, two.lease, again.lease}) == 3


def test_lease_tokens_are_derived_from_the_nonce() -> None:
    state, _ = push(queue(), "a")
    ops = [Claim.of("w")]
    first, first_results = apply(state, ops, T0, b"nonce-A")
    second, second_results = apply(state, ops, T0, b"nonce-A")
    _, other_results = apply(state, ops, T0, b"nonce-B")

    assert encode_state(first) == encode_state(second)
    assert first_results == second_results
    lease_a = as_claimed(first_results[0])[0].lease
    lease_b = as_claimed(other_results[0])[0].lease
    assert lease_a != lease_b
    assert lease_a == lease_token(b"nonce-A", "1", 1)


# -- cost: O(jobs + batch) ------------------------------------------------------------


class TooMuchWork(Exception):
    pass


def lines_run_in_machine(run: Callable[[], object], budget: int) -> int:
    """How many lines of ``obque.core.machine`` and its parts ``run`` executes (a
    deterministic measure of work, unlike wall time); aborts with ``TooMuchWork`` past
    ``budget``."""
    # The modules split out of machine.py run inside each commit too.
    targets = {module.__file__ for module in (machine_module, cursor_module, admission_module)}
    count = 0

    def trace(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal count
        if frame.f_code.co_filename not in targets:
            return None
        if event == "line":
            count += 1
            if count > budget:
                raise TooMuchWork(f"more than {budget} lines of the machine")
        return trace

    sys.settrace(trace)
    try:
        run()
    finally:
        sys.settrace(None)
    return count


JOBS = 20_000
HELD = 10_000
PER_JOB = 20  # generous lines per job for one O(jobs) pass
PER_OP = 200  # generous lines per operation in a batch


@pytest.fixture(scope="module")
def half_claimed() -> QueueState:
    """20,000 jobs, the first 10,000 claimed (leases valid at T0)."""
    state = QueueState.new("big", QueueConfig(lease_seconds=600))
    state, _ = apply(
        state,
        [
            Push.of([NewJob.of(i, key=f"k{i}") for i in range(n, n + 1000)])
            for n in range(0, JOBS, 1000)
        ],
        T0,
        b"n",
    )
    state, results = apply(state, [Claim.of("w", 100)] * (HELD // 100), T0, b"n")
    assert sum(len(as_claimed(r)) for r in results) == HELD
    return state


def test_many_claims_on_a_half_claimed_queue_do_linear_work(half_claimed: QueueState) -> None:
    budget = PER_JOB * (JOBS + 1000)
    small = lines_run_in_machine(
        lambda: apply(half_claimed, [Claim.of("w", 1)] * 10, T0, b"n"), budget
    )
    results: list[Result] = []

    def many() -> None:
        results.extend(apply(half_claimed, [Claim.of("w", 1)] * 1000, T0, b"n")[1])

    large = lines_run_in_machine(many, small + PER_OP * 990)

    # Correct as well as cheap: the next 1000 jobs in FIFO order.
    assert [as_claimed(r)[0].id for r in results] == [str(i) for i in range(10_001, 11_001)]
    assert small <= budget
    assert large - small <= PER_OP * 990


def test_many_acks_with_a_large_applied_map_do_linear_work(half_claimed: QueueState) -> None:
    # Ack 5,000 keyed jobs first so ``applied`` holds 5,000 remembered keys.
    held = [job for job in half_claimed.jobs.values() if job.claim is not None]
    refs = [LeaseRef.of(job.id, job.claim.lease) for job in held if job.claim is not None]
    state, _ = apply(
        half_claimed, [Ack.of(refs[n : n + 1000]) for n in range(0, 5000, 1000)], T0, b"n"
    )
    assert len(state.applied) == 5000
    later = T0 + SECOND  # nothing is stale yet (dedup_seconds is 300)

    budget = PER_JOB * (JOBS + 1000)
    small = lines_run_in_machine(
        lambda: apply(state, [Ack.of(refs[5000:5010])], later, b"n"), budget
    )
    after: list[QueueState] = []

    def many() -> None:
        after.append(apply(state, [Ack.of(refs[5000:6000])], later, b"n")[0])

    large = lines_run_in_machine(many, small + PER_OP * 990)

    assert len(after[0].applied) == 6000
    assert after[0].stats.acked == 6000
    assert small <= budget
    assert large - small <= PER_OP * 990


def test_expiry_sweep_is_linear_in_jobs(half_claimed: QueueState) -> None:
    lapsed_at = T0 + 600 * SECOND + 1
    after: list[QueueState] = []

    def sweep() -> None:
        after.append(apply(half_claimed, [], lapsed_at, b"n")[0])

    lines = lines_run_in_machine(sweep, PER_JOB * JOBS)
    assert after[0].stats.expired == HELD
    assert lines <= PER_JOB * JOBS


# -- max_inline_bytes: payload bytes held in the file ---------------------------------


def spilled_job(payload_bytes: int, n: int) -> NewJob:
    """A job as the engine pushes it once its payload went to its own object."""
    name = f"payloads/{T0:013d}-{n:016x}.json"
    return NewJob(payload=msgspec.Raw(b"null"), spilled=name, spilled_bytes=payload_bytes)


def summed_inline_bytes(state: QueueState) -> int:
    """What ``inline_bytes`` must be, counted from scratch."""
    return sum(
        len(job.payload) + len(job.spilled or "") for job in (*state.jobs.values(), *state.dead)
    )


def test_max_inline_bytes_answers_queue_full_naming_the_limit_and_the_size() -> None:
    state, _ = push(queue(max_inline_bytes=1100), "x" * 498, "y" * 498)  # 500 B each
    assert state.inline_bytes == 1000
    state, results = commit(state, Push.of([NewJob.of("z" * 198)]), Push.of([NewJob.of("small")]))
    refused = results[0]
    assert isinstance(refused, OpError) and refused.code == "queue_full", refused
    assert "max_inline_bytes of 1100" in refused.message
    assert "holds 1000 bytes" in refused.message and "200 more" in refused.message
    assert as_push(results[1]).ids == ("3",)  # the rest of the batch still applies
    assert state.inline_bytes == 1007

    # Room comes back when a job leaves the file.
    state, [job] = claim(state)
    state, _ = ack(state, job)
    assert state.inline_bytes == 507
    state, [result] = commit(state, Push.of([NewJob.of("z" * 198)]))
    assert as_push(result).ids == ("4",)
    assert state.inline_bytes == summed_inline_bytes(state) == 707


def test_a_retried_keyed_push_past_max_inline_bytes_answers_its_existing_id() -> None:
    """Duplicates add no bytes to the file, so they do not count against
    max_inline_bytes: the retry of a landed keyed push gets its id, not queue_full."""
    state, [first] = push(queue(max_inline_bytes=1100), "x" * 498, key="once")
    state, _ = push(state, "y" * 498)
    assert state.inline_bytes == 1000
    state, [retry] = commit(state, Push.of([NewJob.of("x" * 498, key="once")]))
    assert answer(retry) == ((first,), (first,))
    # A key repeated in one push adds its bytes once.
    state, [acked] = claim(state)
    state, _ = ack(state, acked)
    state, [twice] = commit(state, Push.of([NewJob.of("z" * 498, key="k2")] * 2))
    assert answer(twice) == (("3", "3"), ("3",))
    assert state.inline_bytes == summed_inline_bytes(state) == 1000
    # New bytes beside a duplicate still meet the limit.
    state, [over] = commit(state, Push.of([NewJob.of("z" * 498, key="k2"), NewJob.of("w" * 99)]))
    assert isinstance(over, OpError) and over.code == "queue_full", over
    assert "101 more" in over.message


def test_a_spilled_payload_counts_only_the_name_that_stands_for_it() -> None:
    big = 200_000  # far above the limit, but not in the file
    state, [result] = commit(queue(max_inline_bytes=1024), Push.of([spilled_job(big, 1)]))
    assert as_push(result).ids == ("1",)
    [job] = state.jobs.values()
    assert state.inline_bytes == len(b"null") + len(job.spilled or "") < 100


def test_dead_letters_count_until_they_are_dropped_purged_or_redriven() -> None:
    state, _ = push(queue(max_attempts=1, dead_retention=2), "a" * 98, "b" * 98, "c" * 98)
    state, jobs = claim(state, 3)
    for job in jobs:
        state, _ = nack(state, job)
    # Three buried, the oldest dropped by dead_retention: two remain, 100 bytes each.
    assert len(state.dead) == 2 and state.inline_bytes == 200
    state, _ = commit(state, Redrive(("2",)))
    assert list(state.jobs) == ["2"] and state.inline_bytes == 200
    state, _ = commit(state, Purge())
    assert state.inline_bytes == 100 == summed_inline_bytes(state)


def test_inline_bytes_follow_every_operation_and_survive_a_round_trip() -> None:
    """A long mixed history: after every commit the running total equals a recount, and
    a decoded file (which sums it afresh) agrees."""
    import random

    rng = random.Random(5)
    state = queue(max_attempts=2, dead_retention=5, lease_seconds=1)
    now = T0
    held: list[ClaimedJob] = []
    for step in range(400):
        now += rng.choice((0, 0, 10, 600, 1500))  # sometimes past the 1 s lease
        roll = rng.random()
        if roll < 0.35:
            size = rng.choice((0, 10, 300, 5000))
            jobs = [
                spilled_job(100_000, step) if rng.random() < 0.2 else NewJob.of("p" * size)
                for _ in range(rng.randint(1, 3))
            ]
            ops: list[Op] = [Push.of(jobs)]
        elif roll < 0.6:
            ops = [Claim.of("w", rng.randint(1, 4))]
        elif roll < 0.8 and held:
            job = held.pop(rng.randrange(len(held)))
            settle = rng.choice(("ack", "nack", "dead"))
            if settle == "ack":
                ops = [Ack.of([LeaseRef.of(job.id, job.lease)])]
            else:
                ops = [Nack.of([NackItem.of(job.id, job.lease, 0, dead=settle == "dead")])]
        else:
            dead_ops: list[Op] = [Redrive(), Purge(), Redrive(("1", "2", "3"))]
            ops = [rng.choice(dead_ops)]
        state, results = commit(state, *ops, now=now)
        for result in results:
            if isinstance(result, ClaimResult):
                held.extend(result.jobs)
        assert state.inline_bytes == summed_inline_bytes(state), step
    assert state.stats.dead > 0 and state.stats.acked > 0 and state.stats.expired > 0
    assert decode_state(encode_state(state), "q").inline_bytes == state.inline_bytes > 0


def test_inline_bytes_are_summed_once_per_decode_never_per_commit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Commit cost stays O(jobs + batch): the total is carried from state to state, and
    only decoding a file (or building a state without it) counts every job."""
    import obque.core.state as state_module

    state, _ = commit(queue(), *[Push.of([NewJob.of(n) for n in range(1000)])] * 3)
    data = encode_state(state)
    counted: list[int] = []
    real = state_module.job_inline_bytes

    def spy(job: Any) -> int:
        counted.append(1)
        return real(job)

    monkeypatch.setattr(state_module, "job_inline_bytes", spy)
    # machine.py holds its own reference: a re-sum inside a commit would go through it.
    monkeypatch.setattr(machine_module, "job_inline_bytes", spy)
    decoded = decode_state(data, "q")
    assert len(counted) == 3000 and decoded.inline_bytes == state.inline_bytes
    counted.clear()
    after, [result] = commit(decoded, Push.of([NewJob.of("one more")]))
    after, _ = claim(after, 100)
    assert as_push(result).ids == ("3001",)
    assert counted == [1]  # the one job added, never the 3000 already there
    assert after.inline_bytes == decoded.inline_bytes + len(b'"one more"')


def test_max_inline_bytes_defaults_to_64_mib_and_is_configurable() -> None:
    assert QueueConfig().max_inline_bytes == 64 * 1024 * 1024
    _, [result] = commit(queue(), Configure.of({"max_inline_bytes": 2048.0}))
    assert isinstance(result, ConfigResult) and result.config.max_inline_bytes == 2048


# -- intents (SPEC §5) ------------------------------------------------------------------


def test_an_intent_is_applied_up_to_its_expiry_and_skipped_after_it() -> None:
    state = queue()
    on_time = Intent("on-time", (Push.of([NewJob.of("a")]),), expires_ms=T0)
    late = Intent("late", (Push.of([NewJob.of("b")]),), expires_ms=T0 - 1)
    after, [applied, skipped] = commit(state, on_time, late, now=T0)
    assert isinstance(applied, IntentResult) and applied.fresh
    assert as_push(applied.results[0]).ids == ("1",)
    # Its caller has given up: nothing of it happens, and it is not recorded as applied,
    # so no later commit can apply it either.
    assert isinstance(skipped, IntentResult)
    assert (skipped.results, skipped.fresh) == ((), False)
    assert [job.payload for job in after.jobs.values()] == [msgspec.Raw(b'"a"')]
    assert "i:on-time" in after.applied and "i:late" not in after.applied
    assert after.stats.pushed == 1
    # Folding the applied one again changes nothing either.
    again, [twice] = commit(after, on_time, now=T0 + 1)
    assert isinstance(twice, IntentResult) and not twice.fresh
    assert len(again.jobs) == 1
