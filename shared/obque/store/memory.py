"""``mem://BUCKET/KEY``: objects in this process's memory, for tests and benchmarks.

Buckets are shared by name within the process (like SQLite's shared-cache memory
databases), so two ``open_store("mem://q")`` calls see the same queue.
"""

from __future__ import annotations

import threading
from typing import ClassVar

from obque.core.errors import Conflict
from obque.store.port import Backend, Snapshot

__all__ = ["MemoryBackend"]


class _Bucket:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.objects: dict[str, tuple[bytes, int]] = {}
        self.generation = 0


class MemoryBackend(Backend):
    _buckets: ClassVar[dict[str, _Bucket]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket
        with self._registry_lock:
            self._b = self._buckets.setdefault(bucket, _Bucket())

    @classmethod
    def forget(cls, bucket: str) -> None:
        """Drop a bucket (tests use fresh names instead; this frees memory)."""
        with cls._registry_lock:
            cls._buckets.pop(bucket, None)

    def get(self, key: str) -> Snapshot | None:
        with self._b.lock:
            found = self._b.objects.get(key)
        return None if found is None else Snapshot(found[0], str(found[1]))

    def put(self, key: str, data: bytes, expected: str | None) -> str:
        b = self._b
        with b.lock:
            current = b.objects.get(key)
            if expected is None:
                if current is not None:
                    raise Conflict(f"{self.uri(key)} already exists")
            elif current is None or str(current[1]) != expected:
                raise Conflict(f"{self.uri(key)} changed since it was read")
            b.generation += 1
            b.objects[key] = (bytes(data), b.generation)
            return str(b.generation)

    def delete(self, key: str) -> None:
        with self._b.lock:
            self._b.objects.pop(key, None)

    def list(self, prefix: str) -> list[str]:
        with self._b.lock:
            return sorted(k for k in self._b.objects if k.startswith(prefix))

    def uri(self, key: str) -> str:
        return f"mem://{self.bucket}/{key}"
