"""Backends around a backend: latency models, fault injection and request counters.

They are selected by a store URI's query (``?latency=s3``, ``?faults=0.1&seed=7``) so
benchmarks, demos and tests can shape any store from the command line.
"""

from __future__ import annotations

import random
import threading
import time

from obque.core.errors import AmbiguousWrite, Conflict, StoreUnavailable
from obque.store.port import Backend, RequestCounts, Snapshot

__all__ = [
    "LATENCY_PROFILES",
    "CountingBackend",
    "FaultBackend",
    "LatencyBackend",
    "WrappedBackend",
]

#: Named latency models: (read ms, write ms, minimum ms between writes of one object).
LATENCY_PROFILES: dict[str, tuple[float, float, float]] = {
    "s3": (20.0, 60.0, 0.0),
    "gcs": (60.0, 200.0, 1000.0),
    "none": (0.0, 0.0, 0.0),
}


class WrappedBackend(Backend):
    """A backend around another that passes every call through: subclass it and
    override only the calls to shape, count or record."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.min_write_interval = inner.min_write_interval
        self.counts = inner.counts

    def get(self, key: str) -> Snapshot | None:
        return self.inner.get(key)

    def put(self, key: str, data: bytes, expected: str | None) -> str:
        return self.inner.put(key, data, expected)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def list(self, prefix: str) -> list[str]:
        return self.inner.list(prefix)

    def uri(self, key: str) -> str:
        return self.inner.uri(key)

    def close(self) -> None:
        self.inner.close()


class LatencyBackend(WrappedBackend):
    """Sleeps like a remote store: a fixed time per read and write, and a minimum
    interval between two writes of one object (the next write waits its turn)."""

    def __init__(
        self, inner: Backend, read_ms: float, write_ms: float, min_write_interval_ms: float
    ) -> None:
        super().__init__(inner)
        self.read_s = read_ms / 1000
        self.write_s = write_ms / 1000
        self.interval_s = min_write_interval_ms / 1000
        self.min_write_interval = max(inner.min_write_interval, self.interval_s)
        self._next_write: dict[str, float] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Snapshot | None:
        time.sleep(self.read_s)
        return self.inner.get(key)

    def put(self, key: str, data: bytes, expected: str | None) -> str:
        if self.interval_s:
            with self._lock:
                now = time.monotonic()
                start = max(now, self._next_write.get(key, 0.0))
                self._next_write[key] = start + self.interval_s
            time.sleep(start - now)
        time.sleep(self.write_s)
        return self.inner.put(key, data, expected)

    def delete(self, key: str) -> None:
        time.sleep(self.write_s)
        self.inner.delete(key)

    def list(self, prefix: str) -> list[str]:
        time.sleep(self.read_s)
        return self.inner.list(prefix)


class FaultBackend(WrappedBackend):
    """Fails a reproducible fraction of calls the way remote stores fail.

    Writes fail as a spurious conflict, a 5xx-like error, a timeout before sending, or an
    *ambiguous* write that lands but loses its answer. Reads, lists and deletes fail as
    5xx-like errors or timeouts. With the same seed and call order, the same calls fail.
    """

    WRITE_FAULTS = ("conflict", "unavailable", "timeout", "ambiguous")
    OTHER_FAULTS = ("unavailable", "timeout")

    def __init__(self, inner: Backend, rate: float, seed: int | None) -> None:
        super().__init__(inner)
        self.rate = rate
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.injected: dict[str, int] = dict.fromkeys(self.WRITE_FAULTS, 0)

    def _draw(self, kinds: tuple[str, ...]) -> str | None:
        with self._lock:
            if self._rng.random() >= self.rate:
                return None
            kind = self._rng.choice(kinds)
            self.injected[kind] += 1
            return kind

    def _fail(self, kind: str, key: str) -> None:
        if kind == "timeout":
            raise StoreUnavailable(f"{self.uri(key)}: injected timeout")
        raise StoreUnavailable(f"{self.uri(key)}: injected 503 SlowDown")

    def get(self, key: str) -> Snapshot | None:
        if kind := self._draw(self.OTHER_FAULTS):
            self._fail(kind, key)
        return self.inner.get(key)

    def put(self, key: str, data: bytes, expected: str | None) -> str:
        kind = self._draw(self.WRITE_FAULTS)
        if kind == "conflict":
            raise Conflict(f"{self.uri(key)}: injected conflict")
        if kind == "ambiguous":
            self.inner.put(key, data, expected)
            raise AmbiguousWrite(f"{self.uri(key)}: injected lost answer after the write")
        if kind:
            self._fail(kind, key)
        return self.inner.put(key, data, expected)

    def delete(self, key: str) -> None:
        if kind := self._draw(self.OTHER_FAULTS):
            self._fail(kind, key)
        self.inner.delete(key)

    def list(self, prefix: str) -> list[str]:
        if kind := self._draw(self.OTHER_FAULTS):
            self._fail(kind, prefix)
        return self.inner.list(prefix)


class CountingBackend(WrappedBackend):
    """Counts requests by kind; always the outermost layer of an opened store."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.counts = self._counts = RequestCounts()

    def get(self, key: str) -> Snapshot | None:
        self._counts.add("reads")
        try:
            return self.inner.get(key)
        except StoreUnavailable:
            self._counts.add("errors")
            raise

    def put(self, key: str, data: bytes, expected: str | None) -> str:
        self._counts.add("writes")
        try:
            return self.inner.put(key, data, expected)
        except Conflict:
            self._counts.add("conflicts")
            raise
        except StoreUnavailable:
            self._counts.add("errors")
            raise

    def delete(self, key: str) -> None:
        self._counts.add("deletes")
        try:
            self.inner.delete(key)
        except StoreUnavailable:
            self._counts.add("errors")
            raise

    def list(self, prefix: str) -> list[str]:
        self._counts.add("lists")
        try:
            return self.inner.list(prefix)
        except StoreUnavailable:
            self._counts.add("errors")
            raise
