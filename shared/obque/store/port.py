"""The one I/O port obque's core knows: keyed objects with compare-and-set writes.

Two layers:

* :class:`Backend` is what an adapter implements for one bucket or directory
  (``get``/``put``/``delete``/``list`` by key). Wrappers that shape a store for tests
  and benchmarks (latency, faults, request counters) are backends around a backend.
* :class:`Store` is the public handle on one object (a queue file, an intent, a spilled
  payload). It adds what every adapter would otherwise repeat: resolving ambiguous
  writes by re-reading, and naming auxiliary objects under ``KEY.d/``.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import NamedTuple, final

from obque.core.errors import AmbiguousWrite, Conflict, StoreUnavailable

__all__ = ["Backend", "RequestCounts", "Root", "Snapshot", "Store"]


class Snapshot(NamedTuple):
    """An object's bytes and the opaque token a conditional write must present."""

    data: bytes
    token: str


@dataclass
class RequestCounts:
    """Store requests by kind, as seen by the outermost wrapper of one opened store."""

    reads: int = 0
    writes: int = 0
    lists: int = 0
    deletes: int = 0
    conflicts: int = 0
    errors: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, kind: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, kind, getattr(self, kind) + n)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {
                "reads": self.reads,
                "writes": self.writes,
                "lists": self.lists,
                "deletes": self.deletes,
                "conflicts": self.conflicts,
                "errors": self.errors,
            }


class Backend(ABC):
    """One bucket or directory holding keyed objects.

    ``put(key, data, expected)`` is the compare-and-set: ``expected`` is the token from
    the last read, or ``None`` to create only when the key is absent. It raises
    :class:`Conflict` when that precondition fails (including a CAS on a deleted object),
    :class:`StoreUnavailable` when the write certainly did not happen, and
    :class:`AmbiguousWrite` when it may have.
    """

    #: Smallest interval between two writes of one object the service tolerates
    #: (GCS allows about one per second). The commit layer paces itself by it.
    min_write_interval: float = 0.0

    #: Counters of the outermost counting wrapper, when there is one.
    counts: RequestCounts | None = None

    @abstractmethod
    def get(self, key: str) -> Snapshot | None: ...

    @abstractmethod
    def put(self, key: str, data: bytes, expected: str | None) -> str: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix``, sorted."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """The URI naming ``key``, for messages and ``open_store``."""

    def close(self) -> None:  # noqa: B027 - optional hook, most adapters hold nothing
        """Release connections; the default holds none."""


@final
class Store:
    """A handle on one object of a :class:`Backend`.

    ``read()`` returns a :class:`Snapshot` or ``None``; ``write(data, expected)`` is the
    compare-and-set (``expected=None``: create only) and returns the new token.
    """

    __slots__ = ("backend", "key")

    def __init__(self, backend: Backend, key: str) -> None:
        self.backend = backend
        self.key = key

    def __repr__(self) -> str:
        return f"Store({self.uri!r})"

    @property
    def uri(self) -> str:
        return self.backend.uri(self.key)

    @property
    def min_write_interval(self) -> float:
        return self.backend.min_write_interval

    @property
    def counts(self) -> RequestCounts | None:
        return self.backend.counts

    def read(self) -> Snapshot | None:
        return self.backend.get(self.key)

    def write(self, data: bytes, expected: str | None) -> str:
        try:
            return self.backend.put(self.key, data, expected)
        except AmbiguousWrite as exc:
            return self._resolve_ambiguous(data, exc)

    def _resolve_ambiguous(self, data: bytes, exc: AmbiguousWrite) -> str:
        # The request left, the answer did not come back. Re-read: if the object holds
        # exactly our bytes, the write landed (queue files embed a revision, so equal
        # bytes mean our commit). Anything else means it did not land -- or landed and
        # was overwritten already, which the caller's re-read will show as a Conflict.
        try:
            snap = self.backend.get(self.key)
        except StoreUnavailable:
            raise exc from None
        if snap is not None and snap.data == data:
            return snap.token
        raise Conflict(f"{self.uri}: write outcome unknown and the object differs") from exc

    def delete(self) -> None:
        self.backend.delete(self.key)

    def child(self, name: str) -> Store:
        """The auxiliary object ``KEY.d/NAME`` (intents, spilled payloads)."""
        return Store(self.backend, f"{self.key}.d/{name}")

    def children(self, prefix: str = "") -> list[str]:
        """Names (relative to ``KEY.d/``) of auxiliary objects starting with ``prefix``."""
        base = f"{self.key}.d/"
        return [k[len(base) :] for k in self.backend.list(base + prefix)]

    def close(self) -> None:
        self.backend.close()


@final
class Root:
    """A folder of queue files: queue ``NAME`` is the object ``PREFIX/NAME.json``."""

    __slots__ = ("backend", "prefix")

    def __init__(self, backend: Backend, prefix: str) -> None:
        self.backend = backend
        self.prefix = prefix

    def __repr__(self) -> str:
        return f"Root({self.uri!r})"

    @property
    def uri(self) -> str:
        return self.backend.uri(self.prefix)

    def queue(self, name: str) -> Store:
        return Store(self.backend, f"{self.prefix}{name}.json")

    def queue_names(self) -> list[str]:
        """Names of the queue files directly under the root (auxiliary folders excluded)."""
        names = []
        for key in self.backend.list(self.prefix):
            rest = key[len(self.prefix) :]
            if "/" not in rest and rest.endswith(".json"):
                names.append(rest[: -len(".json")])
        return names

    def close(self) -> None:
        self.backend.close()
