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
        assert store.children("intents/") == []
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
    # Their owners never came back to delete them: the objects reappear, already applied.
    for intent_id in others:
        store.child(f"intents/{intent_id}.json").write(b'{"expires_ms":0,"ops":[]}', None)
    second = IntentEngine(store, settings=SETTINGS)
    try:
        second.run(Push.of([NewJob.of({"direct": 1})]))
        assert second.intents_written == 0  # nothing pending: a direct commit
        assert store.children("intents/") == []  # and the leftovers are cleaned up
    finally:
        second.close()
