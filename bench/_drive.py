"""Driving a queue with concurrent callers and measuring what comes back.

``drive_tasks`` runs closed-loop asyncio tasks against a ``QueueEngine``; ``drive_threads``
runs closed-loop OS threads (engine callers or baseline ``Committer`` callers). Each
returns a ``Window``: completions, latencies and the store requests made inside the
measurement window, from which ``Run.of`` derives a rate between commit boundaries.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from bench._common import burst_rate, percentile
from obque.commit import Committer, QueueEngine, create_queue
from obque.core import NewJob, Op, Push, StoreUnavailable
from obque.store import Backend, Snapshot, Store, open_store
from obque.store.memory import MemoryBackend

__all__ = [
    "PAYLOAD",
    "AsyncStep",
    "Queue",
    "Run",
    "SyncStep",
    "Window",
    "committers",
    "drive_tasks",
    "drive_threads",
    "run_loop",
]

PAYLOAD = {"video": "a.mp4"}
QUEUE_CONFIG: dict[str, object] = {"lease_seconds": 60, "max_jobs": 1_000_000}


# -- queues and stores --------------------------------------------------------------------


class _Gate(Backend):
    """Passes requests through until closed, then fails them as unavailable: ends a
    baseline's conflict retries promptly when its measurement window is over."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.min_write_interval = inner.min_write_interval
        self.counts = inner.counts
        self.closed = False

    def _check(self) -> None:
        if self.closed:
            raise StoreUnavailable("benchmark window over")

    def get(self, key: str) -> Snapshot | None:
        self._check()
        return self.inner.get(key)

    def put(self, key: str, data: bytes, expected: str | None) -> str:
        self._check()
        return self.inner.put(key, data, expected)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def list(self, prefix: str) -> list[str]:
        return self.inner.list(prefix)

    def uri(self, key: str) -> str:
        return self.inner.uri(key)


@dataclass
class Queue:
    store: Store
    bucket: str
    gate: _Gate

    @classmethod
    def fresh(cls, profile: str, prefill: int = 0) -> Queue:
        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        opened = open_store(f"mem://{bucket}/queue.json?latency={profile}")
        gate = _Gate(opened.backend)
        store = Store(gate, opened.key)
        create_queue(store, "queue", QUEUE_CONFIG)
        if prefill:
            chunk = Push.of([NewJob.of(PAYLOAD)] * 1000)
            ops: list[Op] = [chunk] * (prefill // 1000)
            if prefill % 1000:
                ops.append(Push.of([NewJob.of(PAYLOAD)] * (prefill % 1000)))
            Committer(store).commit(ops)
        return cls(store, bucket, gate)

    def counts(self) -> dict[str, int]:
        assert self.store.counts is not None
        return self.store.counts.as_dict()

    def drop(self) -> None:
        self.gate.closed = True
        MemoryBackend.forget(self.bucket)


# -- runs -----------------------------------------------------------------------------------


@dataclass
class Window:
    """Completions ``(time, units)`` and latencies ``(time, seconds)`` of one run, plus the
    measurement window and the store requests made inside it."""

    start: float = 0.0
    end: float = 0.0
    done: list[tuple[float, int]] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)
    #: Ages at the window's end of operations still unanswered then (baselines).
    censored: list[float] = field(default_factory=list)
    requests: dict[str, int] = field(default_factory=dict)
    commits: int = 0
    ops: int = 0
    failed: int = 0

    def record(self, started: float, units: int) -> None:
        now = time.monotonic()
        self.done.append((now, units))
        self.latencies.append((now, now - started))

    def open(self, queue: Queue, engine: QueueEngine | None) -> None:
        self.start = time.monotonic()
        self.requests = queue.counts()
        if engine is not None:
            self.commits, self.ops = engine.stats.commits, engine.stats.ops

    def close(self, queue: Queue, engine: QueueEngine | None) -> None:
        self.end = time.monotonic()
        after = queue.counts()
        self.requests = {k: after[k] - self.requests[k] for k in after}
        if engine is not None:
            self.commits = engine.stats.commits - self.commits
            self.ops = engine.stats.ops - self.ops

    def in_window(self) -> list[float]:
        return [lat for t, lat in self.latencies if self.start <= t <= self.end]


@dataclass
class Run:
    label: str
    callers: int
    rate: float  # units per second
    units: int
    seconds: float
    writes: int
    reads: int
    conflicts: int
    commits: int | None = None
    ops_per_commit: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    failed: int = 0
    #: Operations unanswered when the window closed; their age then counts in the
    #: percentiles, which are therefore lower bounds.
    censored: int = 0

    @classmethod
    def of(cls, label: str, callers: int, w: Window, gap: float) -> Run:
        rate, _ = burst_rate(w.done, w.start, w.end, gap)
        lat = w.in_window() + w.censored
        return cls(
            label=label,
            callers=callers,
            rate=rate,
            units=sum(n for t, n in w.done if w.start <= t <= w.end),
            seconds=w.end - w.start,
            writes=w.requests.get("writes", 0),
            reads=w.requests.get("reads", 0),
            conflicts=w.requests.get("conflicts", 0),
            commits=w.commits or None,
            ops_per_commit=w.ops / w.commits if w.commits else None,
            p50_ms=percentile(lat, 0.5) * 1000 if lat else None,
            p99_ms=percentile(lat, 0.99) * 1000 if lat else None,
            failed=w.failed,
            censored=len(w.censored),
        )


AsyncStep = Callable[[int], Awaitable[int]]
SyncStep = Callable[[int], int]


def run_loop(main: Callable[[], Coroutine[Any, Any, None]], use_uvloop: bool) -> None:
    if use_uvloop:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def drive_tasks(
    queue: Queue,
    engine: QueueEngine,
    callers: int,
    step: AsyncStep,
    warmup: float,
    seconds: float,
    use_uvloop: bool,
) -> Window:
    """``callers`` asyncio tasks each awaiting ``step(i)`` in a loop (closed loop)."""
    w = Window()

    async def main() -> None:
        stop = False

        async def caller(i: int) -> None:
            while not stop:
                started = time.monotonic()
                w.record(started, await step(i))

        tasks = [asyncio.create_task(caller(i)) for i in range(callers)]
        await asyncio.sleep(warmup)
        w.open(queue, engine)
        await asyncio.sleep(seconds)
        w.close(queue, engine)
        stop = True
        await asyncio.gather(*tasks)

    run_loop(main, use_uvloop)
    return w


def drive_threads(
    queue: Queue,
    engine: QueueEngine | None,
    callers: int,
    step: SyncStep,
    warmup: float,
    seconds: float,
    *,
    abandon: bool = False,
) -> Window:
    """``callers`` OS threads each calling ``step(i)`` in a loop (closed loop). With
    ``abandon`` the threads are left behind (daemons) instead of joined."""
    w = Window()
    go, stop = threading.Event(), threading.Event()

    def caller(i: int) -> None:
        go.wait()  # starting hundreds of threads takes a while: all begin together
        while not stop.is_set():
            started = time.monotonic()
            try:
                units = step(i)
            except StoreUnavailable:
                if stop.is_set():
                    w.censored.append(w.end - started)
                else:
                    w.failed += 1
                continue
            w.record(started, units)

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(callers)]
    for t in threads:
        t.start()
    go.set()
    time.sleep(warmup)
    w.open(queue, engine)
    time.sleep(seconds)
    w.close(queue, engine)
    stop.set()
    queue.gate.closed = engine is None  # baselines: fail whatever is still retrying
    if not abandon:
        for t in threads:
            t.join(timeout=10)
    return w


def committers(queue: Queue, n: int) -> list[Committer]:
    return [Committer(queue.store, max_unavailable=1) for _ in range(n)]
