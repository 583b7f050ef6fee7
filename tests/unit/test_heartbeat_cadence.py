"""A leader's heartbeat cadence (SPEC §6): ``heartbeat_ms`` is refreshed at least every
``broker_timeout / 3``, also when ordinary commits that carry no heartbeat come between.

The engine runs on an in-memory store wrapped so that every queue file it writes is kept;
the heartbeats are read from those files. Pushes arrive about every 0.7 x ``timeout / 3``,
the pattern that used to stretch the gap: the idle wait counted from the last commit, so a
push just before a heartbeat fell due postponed the next one to the push after it.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from obque.commit import Leadership, QueueEngine, create_queue
from obque.core import NewJob, Push, PushResult
from obque.store import Store, WrappedBackend
from obque.store.memory import MemoryBackend
from obque.store.port import Backend

TIMEOUT_S = 1.5
EVERY_MS = TIMEOUT_S * 1000 / 3
#: Scheduling slack allowed on a loaded 2-core machine (the bug made gaps of ~1.45x).
MARGIN_MS = 0.3 * EVERY_MS


class RecordingBackend(WrappedBackend):
    """A real memory bucket that keeps every queue file written to it."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.files: list[dict[str, object]] = []
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes, expected: str | None) -> str:
        token = self.inner.put(key, data, expected)
        if key == "q.json":
            with self._lock:
                self.files.append(json.loads(data))
        return token


@pytest.fixture
def recording() -> Iterator[RecordingBackend]:
    bucket = f"beat-{uuid.uuid4().hex[:8]}"
    yield RecordingBackend(MemoryBackend(bucket))
    MemoryBackend.forget(bucket)


def heartbeats(files: list[dict[str, object]]) -> tuple[list[int], int]:
    """The distinct ``heartbeat_ms`` values this leader wrote, in order, and how many of
    its commits carried no new heartbeat."""
    beats: list[int] = []
    without = 0
    for doc in files:
        broker = doc.get("broker")
        if broker is None:
            continue  # the file as created, before the engine took the lead
        assert isinstance(broker, dict)
        if not broker["url"]:
            continue  # the release on close: no URL, heartbeat 0
        beat = broker["heartbeat_ms"]
        assert isinstance(beat, int)
        if beats and beat == beats[-1]:
            without += 1
        else:
            beats.append(beat)
    return beats, without


def test_heartbeats_come_every_third_of_the_timeout_between_commits_without_one(
    recording: RecordingBackend,
) -> None:
    store = Store(recording, "q.json")
    create_queue(store, "q")
    lead = Leadership("http://leader.test", timeout_s=TIMEOUT_S)
    engine = QueueEngine(store, leadership=lead, name="q")
    engine.start()
    try:
        # The pushes are the load pattern, not a wait for something: about 0.72 x the
        # heartbeat interval apart, for about a dozen heartbeat intervals.
        for i in range(17):
            result = engine.run(Push.of([NewJob.of({"n": i})]), timeout=30)
            assert isinstance(result, PushResult)
            time.sleep(0.72 * EVERY_MS / 1000)
    finally:
        engine.close()
    beats, without = heartbeats(recording.files)
    assert without >= 5, (without, beats)  # ordinary commits came between the heartbeats
    assert len(beats) >= 8, beats
    gaps = [b - a for a, b in itertools.pairwise(beats)]
    assert max(gaps) <= EVERY_MS + MARGIN_MS, gaps
    # ...and not more often than needed: one heartbeat per interval, not one per commit.
    assert min(gaps) >= EVERY_MS, gaps


def test_an_idle_leader_writes_a_heartbeat_every_third_of_the_timeout(
    recording: RecordingBackend,
) -> None:
    store = Store(recording, "q.json")
    create_queue(store, "q")
    engine = QueueEngine(store, leadership=Leadership("http://leader.test", timeout_s=0.6))
    engine.start()
    try:
        deadline = time.monotonic() + 30
        while len(heartbeats(recording.files)[0]) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        engine.close()
    beats, without = heartbeats(recording.files)
    assert without == 0  # nothing but heartbeats was committed
    gaps = [b - a for a, b in itertools.pairwise(beats)]
    assert len(gaps) >= 5, beats
    assert all(200 <= gap <= 200 + 0.3 * 200 + 40 for gap in gaps), gaps
