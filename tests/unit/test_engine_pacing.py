"""The group-commit writer paces itself by the store's minimum write interval (SPEC §5).

GCS takes about one write per second per object. The engine must not just let the
store make it wait: it waits *before* taking its batch, so that everything arriving in
the meantime rides in the next write. The store here declares an interval but does not
enforce it, so the spacing it records is the engine's own.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from obque.commit import QueueEngine, create_queue
from obque.core import NewJob, Push, PushResult
from obque.store import Backend, Store, WrappedBackend, open_store
from obque.store.memory import MemoryBackend

INTERVAL_S = 0.3


class _DeclaresInterval(WrappedBackend):
    """A memory bucket that declares ``INTERVAL_S`` between writes and records when
    each write began, without ever waiting itself."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.min_write_interval = INTERVAL_S
        self.write_starts: list[float] = []

    def put(self, key: str, data: bytes, expected: str | None) -> str:
        self.write_starts.append(time.monotonic())
        return self.inner.put(key, data, expected)


@pytest.fixture
def bucket() -> Iterator[str]:
    name = f"pacing-{uuid.uuid4().hex[:8]}"
    yield name
    MemoryBackend.forget(name)


def test_the_uri_sets_the_interval_the_engine_paces_by(bucket: str) -> None:
    store = open_store(f"mem://{bucket}/q.json?min_write_interval_ms=300")
    assert store.min_write_interval == pytest.approx(INTERVAL_S)
    assert QueueEngine(store).store.min_write_interval == pytest.approx(INTERVAL_S)


def test_writes_are_spaced_by_the_interval_and_carry_batches(bucket: str) -> None:
    backend = _DeclaresInterval(MemoryBackend(bucket))
    store = Store(backend, "q.json")
    create_queue(store, "q")
    del backend.write_starts[:]  # the engine's writes only
    engine = QueueEngine(store)
    callers, rounds = 20, 4
    answers: list[PushResult] = []
    lock = threading.Lock()

    def caller(n: int) -> None:
        for i in range(rounds):
            result = engine.run(Push.of([NewJob.of(f"{n}-{i}")]), timeout=30)
            assert isinstance(result, PushResult)
            with lock:
                answers.append(result)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(callers)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        engine.close()
    ops = callers * rounds
    assert len(answers) == ops
    assert len(engine.read_state().jobs) == ops
    starts = backend.write_starts
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    # Each caller waits for its commit before its next push: at least `rounds` writes.
    assert len(starts) >= rounds, starts
    # A lower bound only (sleeps never end early); 10% slack for the clock read that
    # follows the engine's own stamp of the write's start.
    assert min(gaps) >= 0.9 * INTERVAL_S, gaps
    assert engine.stats.commits == len(starts)
    assert engine.stats.ops == ops
    assert len(starts) <= ops // 5, (len(starts), ops)  # batched, not one write per push
