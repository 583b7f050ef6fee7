"""When a serverless environment commits directly and when it joins the intents.

Other environments' intents are written as their objects would be (``intents/ID.json``
holding an expiry and encoded operations) into an in-memory bucket; the environment under
test then pushes one job. A few pending intents ride along in its direct commit; from
``join_at`` on it writes an intent of its own and everything is folded together.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import msgspec
import pytest

from obque.commit import IntentEngine, IntentSettings, create_queue
from obque.commit import intents as intents_module
from obque.core import NewJob, Push, PushResult
from obque.core.opcodec import encode_ops
from obque.store import Store, open_store
from obque.store.memory import MemoryBackend

SETTINGS = IntentSettings(window_s=0.01, join_at=4)


@pytest.fixture
def store() -> Iterator[Store]:
    bucket = f"join-{uuid.uuid4().hex[:8]}"
    opened = open_store(f"mem://{bucket}/q.json")
    create_queue(opened, "q")
    yield opened
    MemoryBackend.forget(bucket)


def leave_intents(store: Store, n: int) -> list[str]:
    """``n`` pending intents of other environments, oldest first."""
    now_ms = int(time.time() * 1000)
    ids = []
    for i in range(n):
        intent_id = f"{now_ms - 100 + i:013d}-{uuid.uuid4().hex[:12]}"
        ops = encode_ops([Push.of([NewJob.of({"other": i})])])
        doc = {"expires_ms": now_ms + 60_000, "ops": msgspec.Raw(ops)}
        store.child(f"intents/{intent_id}.json").write(msgspec.json.encode(doc), None)
        ids.append(intent_id)
    return ids


def applied_intents(store: Store) -> set[str]:
    snap = store.read()
    assert snap is not None
    return {k[2:] for k in json.loads(snap.data)["applied"] if k.startswith("i:")}


def test_a_few_pending_intents_ride_along_in_a_direct_commit(store: Store) -> None:
    others = leave_intents(store, SETTINGS.join_at - 1)
    engine = IntentEngine(store, settings=SETTINGS)
    try:
        assert isinstance(engine.run(Push.of([NewJob.of({"mine": 1})])), PushResult)
        assert engine.intents_written == 0  # committed directly
        assert applied_intents(store) == set(others)
        # Carried, not deleted: each owner deletes its own intent on finding its result.
        assert store.children("intents/") == [f"intents/{i}.json" for i in others]
    finally:
        engine.close()


def test_many_pending_intents_make_a_direct_environment_join_them(store: Store) -> None:
    others = leave_intents(store, SETTINGS.join_at)
    engine = IntentEngine(store, settings=SETTINGS)
    try:
        assert isinstance(engine.run(Push.of([NewJob.of({"mine": 1})])), PushResult)
        assert engine.intents_written == 1  # went through an intent of its own
        assert set(others) < applied_intents(store)  # all folded, with ours
        # It stays with the intents while the contention lasts.
        engine.run(Push.of([NewJob.of({"mine": 2})]))
        assert engine.intents_written == 2
    finally:
        engine.close()


def test_leftovers_of_applied_intents_do_not_count_as_pending(store: Store) -> None:
    others = leave_intents(store, SETTINGS.join_at)
    first = IntentEngine(store, settings=SETTINGS)
    try:
        first.run(Push.of([NewJob.of({"fold": 1})]))  # joins and folds them all
    finally:
        first.close()
    # It deleted its own intent only; the others are their owners' to delete.
    assert first.intents_written == 1
    assert store.children("intents/") == [f"intents/{i}.json" for i in others]
    second = IntentEngine(store, settings=SETTINGS)
    try:
        second.run(Push.of([NewJob.of({"direct": 1})]))
        assert second.intents_written == 0  # nothing pending: a direct commit
        # Owners may still be on their way: recent leftovers are left to them.
        assert store.children("intents/") == [f"intents/{i}.json" for i in others]
    finally:
        second.close()
    # Their owners never came back: once abandoned_after_s has passed, whoever lists
    # them deletes them.
    later = SETTINGS.abandoned_after_s + 1
    third = IntentEngine(store, settings=SETTINGS, clock=lambda: time.time() + later)
    try:
        third.run(Push.of([NewJob.of({"direct": 2})]))
        assert third.intents_written == 0
        assert store.children("intents/") == []
    finally:
        third.close()


class _Monotonic:
    """``time`` for the intents module, with a monotonic clock the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.time = time.time
        self.sleep = time.sleep

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


def test_an_environment_goes_back_to_direct_commits_after_contention_memory(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = _Monotonic()
    monkeypatch.setattr(intents_module, "time", clock)
    leave_intents(store, SETTINGS.join_at)
    engine = IntentEngine(store, settings=SETTINGS)
    try:
        engine.run(Push.of([NewJob.of({"mine": 1})]))
        assert engine.intents_written == 1  # contention: joined the intents
        clock.offset += SETTINGS.contention_memory_s - 1
        engine.run(Push.of([NewJob.of({"mine": 2})]))
        assert engine.intents_written == 2  # still remembered, though nothing is pending
        clock.offset += 1.01
        commits = engine.stats.commits
        engine.run(Push.of([NewJob.of({"mine": 3})]))
        assert engine.intents_written == 2  # forgotten: a direct commit again
        assert engine.stats.commits == commits + 1
    finally:
        engine.close()
    snap = store.read()
    assert snap is not None
    mine = [j["payload"] for j in json.loads(snap.data)["jobs"] if "mine" in j["payload"]]
    assert mine == [{"mine": 1}, {"mine": 2}, {"mine": 3}]
