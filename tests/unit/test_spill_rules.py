"""The pure rules behind spilled payloads: which objects a commit stops needing.

The state machine lists objects of jobs that left for good in ``state.released``;
``unused`` finds objects a push wrote but no job names. Deleting an object a job still
names would lose its payload, so the cases that must *not* release are checked as
carefully as the ones that must.
"""

from __future__ import annotations

import dataclasses

import msgspec

from obque.commit.payloads import unused, valid_name
from obque.core import (
    Ack,
    Claim,
    ClaimResult,
    Configure,
    Intent,
    IntentResult,
    LeaseRef,
    Nack,
    NackItem,
    NewJob,
    OpError,
    Purge,
    Push,
    PushResult,
    QueueConfig,
    QueueState,
    Redrive,
    apply,
    decode_state,
    encode_state,
)

T0 = 1_700_000_000_000
A = "payloads/1700000000000-00000000000000aa.json"
B = "payloads/1700000000000-00000000000000bb.json"


def spilled(name: str, size: int = 50_000, key: str | None = None) -> NewJob:
    return NewJob(msgspec.Raw(b"null"), key=key, spilled=name, spilled_bytes=size)


def commit(state: QueueState, *ops: object) -> tuple[QueueState, list[object]]:
    new, results = apply(state, list(ops), T0, b"n" * 16)  # type: ignore[arg-type]
    return new, list(results)


def claimed(state: QueueState) -> tuple[QueueState, ClaimResult]:
    state, (result,) = commit(state, Claim("w", max=100))
    assert isinstance(result, ClaimResult)
    return state, result


def test_a_spilled_job_round_trips_through_the_file_and_a_claim() -> None:
    state, _ = commit(QueueState.new("q"), Push.of([spilled(A)]))
    again = decode_state(encode_state(state), "mem://x/q.json")
    job = next(iter(again.jobs.values()))
    assert job.spilled == A and job.payload == msgspec.Raw(b"null")
    _, got = claimed(again)
    assert got.jobs[0].spilled == A
    assert again.released == ()  # never read back from a file


def test_limits_apply_to_the_spilled_payload_not_its_stub() -> None:
    state = QueueState.new("q", QueueConfig(max_payload_bytes=40_000))
    _, (result,) = commit(state, Push.of([spilled(A, size=50_000)]))
    assert isinstance(result, OpError) and result.code == "payload_too_large"
    assert "50000 bytes" in result.message


def test_ack_purge_and_dead_overflow_release_objects_and_nothing_else_does() -> None:
    state, _ = commit(QueueState.new("q"), Push.of([spilled(A), spilled(B)]))
    state, got = claimed(state)
    assert state.released == ()
    a, b = got.jobs
    state, _ = commit(state, Ack((LeaseRef(a.id, a.lease),)))
    assert state.released == (A,)
    # Dead-lettered: still needed (it can be redriven).
    state, _ = commit(state, Nack((NackItem(b.id, b.lease, dead=True),)))
    assert state.released == ()
    state, _ = commit(state, Redrive(None))
    assert state.released == ()
    state, got = claimed(state)
    state, _ = commit(state, Nack((NackItem(b.id, got.jobs[0].lease, dead=True),)))
    state, _ = commit(state, Purge(None))
    assert state.released == (B,)


def test_dead_letters_dropped_by_retention_release_their_objects() -> None:
    state = QueueState.new("q", QueueConfig(dead_retention=1))
    state, _ = commit(state, Push.of([spilled(A), spilled(B)]))
    state, got = claimed(state)
    state, _ = commit(state, Nack(tuple(NackItem(j.id, j.lease, dead=True) for j in got.jobs)))
    assert state.released == (A,) and [d.spilled for d in state.dead] == [B]


def test_a_new_job_keeps_its_object_and_a_duplicate_releases_its_own() -> None:
    ops = [Push.of([spilled(A, key="k")])]
    state, results = commit(QueueState.new("q"), *ops)
    assert unused(ops, results, state) == []  # type: ignore[arg-type]
    dup = [Push.of([spilled(B, key="k")])]
    state, results = commit(state, *dup)
    assert unused(dup, results, state) == [B]  # type: ignore[arg-type]


def test_a_reapplied_push_never_releases_the_object_its_landed_job_names() -> None:
    # A write that landed but lost its answer is re-applied: the key now finds the job
    # the first write created -- with the very same object name. Live or dead, keep it.
    ops = [Push.of([spilled(A, key="k")])]
    state, results = commit(QueueState.new("q"), *ops)
    again, results = commit(state, *ops)
    assert unused(ops, results, again) == []  # type: ignore[arg-type]
    state, got = claimed(state)
    state, _ = commit(state, Nack((NackItem(got.jobs[0].id, got.jobs[0].lease, dead=True),)))
    again, results = commit(state, *ops)
    assert unused(ops, results, again) == []  # type: ignore[arg-type]


def test_a_refused_push_releases_everything_it_spilled() -> None:
    state = QueueState.new("q", QueueConfig(max_jobs=1))
    ops = [Push.of([spilled(A), spilled(B)])]
    state, results = commit(state, *ops)
    assert isinstance(results[0], OpError)
    assert unused(ops, results, state) == [A, B]  # type: ignore[arg-type]


def test_intents_release_only_what_their_first_application_left_unused() -> None:
    push = Push.of([spilled(A, key="k"), spilled(B, key="k")])
    intent = Intent("i1", (push,))
    state, results = commit(QueueState.new("q"), intent)
    assert isinstance(results[0], IntentResult) and results[0].fresh
    assert unused([intent], results, state) == [B]  # type: ignore[arg-type]
    # Folded again (say, by a second folder): skipped, so it releases nothing.
    state, results = commit(state, intent)
    assert isinstance(results[0], IntentResult) and not results[0].fresh
    assert unused([intent], results, state) == []  # type: ignore[arg-type]


def test_other_operations_and_inline_payloads_release_nothing() -> None:
    ops = [Push.of([NewJob.of({"small": 1})]), Configure.of({"max_attempts": 3})]
    state, results = commit(QueueState.new("q"), *ops)
    assert unused(ops, results, state) == []  # type: ignore[arg-type]
    assert isinstance(results[0], PushResult)


def test_only_payload_folder_names_are_valid() -> None:
    assert valid_name(A)
    for bad in ("../q.json", "payloads/../../q.json", "intents/x.json", A + "/..", ""):
        assert not valid_name(bad), bad


def test_new_job_size_is_the_payload_it_stands_for() -> None:
    inline = NewJob.of({"x": "y" * 10})
    assert inline.size == len(inline.payload)
    stub = dataclasses.replace(inline, spilled=A, spilled_bytes=99_999)
    assert stub.size == 99_999
