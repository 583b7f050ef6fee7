"""Large payloads live beside the queue file, not in it ("spilling").

Every commit rewrites the whole queue file, so a queue of big payloads makes every commit
slow (10,000 jobs of 64 KiB is a 656 MB file). A payload larger than the queue's
``spill_payload_bytes`` is therefore written to its own object before the push commits,
and the job in the file names that object instead (``"payload": null, "spilled": NAME``):

    push   PUT  NAME.json.d/payloads/<ms>-<random>.json      (in the caller, in parallel)
           CAS  NAME.json  job {"spilled": "payloads/…"}      (the group commit, small)
    claim  CAS  NAME.json  lease                              then GET each payload object
    ack    CAS  NAME.json  job gone                           then DELETE its object

The pure state machine decides when an object is no longer needed: a commit that drops a
job for good (ack, purge, dead-letter overflow) lists its object in the new state's
``released``, and the committer deletes those once that state has landed. A push that did
not create a job (a duplicate key, a refused batch) leaves its fresh objects unused; the
committer deletes those too. An object written by a push whose commit never happened (a
crash, a caller that gave up) is an orphan: ``sweep`` deletes objects that are older than
an hour and that no job names.

A process keeps the payloads it spilled recently in memory, so a broker that pushed a job
usually answers its claim without a GET.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from msgspec import Raw

from obque.core import (
    ClaimedJob,
    ClaimResult,
    Conflict,
    Intent,
    IntentResult,
    NewJob,
    Op,
    Push,
    PushResult,
    QueueConfig,
    QueueState,
    Result,
    StoreError,
    StoreUnavailable,
)
from obque.core.limits import MIN_SPILL_PAYLOAD_BYTES
from obque.store import Store

__all__ = ["PREFIX", "PayloadStats", "Payloads", "unused", "valid_name"]

PREFIX = "payloads/"
#: The only names ever written, fetched or deleted: a name comes from the queue file or an
#: intent object, and must not be able to point at anything else in the bucket.
_NAME = re.compile(r"payloads/(\d{13})-[0-9a-f]{16}\.json")
_NULL = Raw(b"null")

log = logging.getLogger("obque.payloads")


@dataclass
class PayloadStats:
    spilled: int = 0
    fetched: int = 0
    cache_hits: int = 0
    deleted: int = 0
    swept: int = 0
    missing: int = 0


def valid_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


class Payloads:
    """Spilled payload objects of one queue file."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        cache_bytes: int = 32 * 1024 * 1024,
        workers: int = 32,
    ) -> None:
        self.store = store
        self.clock = clock
        self.cache_bytes = cache_bytes
        self.stats = PayloadStats()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="obque-payload")
        #: Where event loops run ``spill`` and ``resolve`` (asyncio's default executor has
        #: a handful of threads; each of these calls waits on the store). Separate from
        #: the pool those calls fan out to, so a full one can never wait on itself.
        self.calls = ThreadPoolExecutor(workers, thread_name_prefix="obque-payload-call")
        self._deleting: set[Future[None]] = set()
        self._cache: OrderedDict[str, Raw] = OrderedDict()
        self._cached = 0
        self._lock = threading.Lock()

    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:  # counters are bumped from the pool's threads
            setattr(self.stats, what, getattr(self.stats, what) + n)

    def close(self) -> None:
        self.calls.shutdown(wait=True)
        self._pool.shutdown(wait=True)

    # -- push ------------------------------------------------------------------------------

    @staticmethod
    def may_spill(op: Op) -> bool:
        """Cheap test: could ``spill`` have anything to write for ``op``?"""
        return isinstance(op, Push) and any(
            j.spilled is None and len(j.payload) > MIN_SPILL_PAYLOAD_BYTES for j in op.jobs
        )

    def spill(self, op: Op, config: QueueConfig) -> Op:
        """``op`` with every payload above ``config.spill_payload_bytes`` written to its own
        object (in parallel). A push the queue will refuse for size is left as it is."""
        if not isinstance(op, Push):
            return op
        limit = config.spill_payload_bytes
        big = [i for i, j in enumerate(op.jobs) if j.spilled is None and len(j.payload) > limit]
        if not big or any(j.size > config.max_payload_bytes for j in op.jobs):
            return op
        now_ms = int(self.clock() * 1000)
        names = {i: f"{PREFIX}{now_ms:013d}-{secrets.token_hex(8)}.json" for i in big}
        failed: StoreError | None = None
        if len(big) == 1:  # the common case: no hop through the pool
            try:
                self._write(names[big[0]], op.jobs[big[0]].payload)
            except (StoreUnavailable, Conflict) as exc:
                failed = exc
        else:
            writes = [self._pool.submit(self._write, names[i], op.jobs[i].payload) for i in big]
            for write in writes:
                try:
                    write.result()
                except (StoreUnavailable, Conflict) as exc:  # a fresh name cannot conflict
                    failed = exc
        if failed is not None:
            self.release(names.values())  # what did land is nobody's yet
            raise StoreUnavailable(f"could not store a large payload: {failed}") from failed
        jobs = list(op.jobs)
        for i, name in names.items():
            jobs[i] = _spilled(jobs[i], name)
        return Push(tuple(jobs))

    def _write(self, name: str, payload: Raw) -> None:
        self.store.child(name).write(bytes(payload), None)
        self._count("spilled")
        self._remember(name, payload)

    # -- claim -----------------------------------------------------------------------------

    @staticmethod
    def must_resolve(result: Result) -> bool:
        return isinstance(result, ClaimResult) and any(j.spilled for j in result.jobs)

    def resolve(self, result: Result) -> Result:
        """A claim's result with spilled payloads read back into the jobs."""
        if not isinstance(result, ClaimResult) or not self.must_resolve(result):
            return result
        found = self.fetch([j.spilled for j in result.jobs if j.spilled is not None])
        jobs = []
        for job in result.jobs:
            if job.spilled is not None:
                payload = found.get(job.spilled)
                if payload is None:
                    log.error(
                        "%s: job %s: its payload object %s is missing; delivered as null",
                        self.store.uri,
                        job.id,
                        job.spilled,
                    )
                job = _fetched(job, payload if payload is not None else _NULL)
            jobs.append(job)
        return ClaimResult(tuple(jobs))

    def fetch(self, names: Sequence[str]) -> dict[str, Raw]:
        """Spilled payloads by name (a missing object is left out). A store failure raises
        ``StoreUnavailable``: a claim then answers 503 and its jobs come back when their
        leases lapse."""
        found: dict[str, Raw] = {}
        wanted: list[str] = []
        with self._lock:
            for name in names:
                hit = self._cache.get(name)
                if hit is not None:
                    found[name] = hit
                    self.stats.cache_hits += 1
                elif valid_name(name):
                    wanted.append(name)
        for name, data in zip(wanted, self._pool.map(self._read, wanted), strict=True):
            if data is not None:
                found[name] = data
        return found

    def _read(self, name: str) -> Raw | None:
        snap = self.store.child(name).read()
        if snap is None:
            self._count("missing")
            return None
        self._count("fetched")
        return Raw(snap.data)

    # -- release ---------------------------------------------------------------------------

    def release(self, names: Iterable[str]) -> None:
        """Delete objects no job names any more, in the background (best effort: one that
        stays behind is an orphan for ``sweep``)."""
        for name in names:
            with self._lock:
                dropped = self._cache.pop(name, None)
                if dropped is not None:
                    self._cached -= len(dropped)
            if valid_name(name):
                with contextlib.suppress(RuntimeError):  # shut down: the sweep gets it
                    deleting = self._pool.submit(self._delete, name)
                    with self._lock:
                        self._deleting.add(deleting)
                    deleting.add_done_callback(self._deleted)

    def _deleted(self, deleting: Future[None]) -> None:
        with self._lock:
            self._deleting.discard(deleting)

    def drain(self, timeout: float | None = None) -> None:
        """Wait for the deletes in flight: a function instance may be frozen as soon as
        it has answered, and a delete left running then may never finish."""
        with self._lock:
            deleting = list(self._deleting)
        if deleting:
            wait(deleting, timeout)

    def _delete(self, name: str) -> None:
        try:
            self.store.child(name).delete()
            self._count("deleted")
        except StoreUnavailable as exc:
            log.warning("%s: could not delete %s (the sweep will): %s", self.store.uri, name, exc)

    def sweep(self, state: QueueState, *, min_age_s: float = 3600.0) -> int:
        """Delete payload objects older than ``min_age_s`` that no job of ``state`` names
        (pushes that never committed). ``state`` must be current: an object is only
        spilled by a push that commits within seconds, or never."""
        horizon_ms = int((self.clock() - min_age_s) * 1000)
        named = {j.spilled for j in state.jobs.values() if j.spilled is not None}
        named.update(j.spilled for j in state.dead if j.spilled is not None)
        orphans = []
        for name in self.store.children(PREFIX):
            m = _NAME.fullmatch(name)
            if m is not None and int(m.group(1)) < horizon_ms and name not in named:
                orphans.append(name)
        for name in orphans:
            self.store.child(name).delete()
        self._count("swept", len(orphans))
        return len(orphans)

    # -- cache -----------------------------------------------------------------------------

    def _remember(self, name: str, payload: Raw) -> None:
        if len(payload) > self.cache_bytes // 4:
            return
        with self._lock:
            self._cache[name] = payload
            self._cached += len(payload)
            while self._cached > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached -= len(old)


def unused(ops: Sequence[Op], results: Sequence[Result], state: QueueState) -> list[str]:
    """Objects spilled for pushes in ``ops`` that created no job naming them: refused
    pushes and duplicate keys. ``state`` is the committed state holding ``results``."""
    names: list[str] = []
    for op, result in zip(ops, results, strict=True):
        if isinstance(op, Intent):
            if isinstance(result, IntentResult) and result.fresh:
                names += unused(op.ops, result.results, state)
            continue  # applied before (by whoever created its jobs) or revoked
        if not isinstance(op, Push):
            continue
        for i, job in enumerate(op.jobs):
            if job.spilled is None:
                continue
            if not isinstance(result, PushResult) or not _names(state, result.ids[i], job.spilled):
                names.append(job.spilled)
    return names


def _names(state: QueueState, job_id: str, name: str) -> bool:
    job = state.jobs.get(job_id)
    if job is not None:
        return job.spilled == name
    # Not live: acked (its object went with it), or dead -- a re-applied push whose first
    # write landed can find its own job already dead-lettered.
    return any(d.id == job_id and d.spilled == name for d in state.dead)


def _spilled(job: NewJob, name: str) -> NewJob:
    return dataclasses.replace(job, payload=_NULL, spilled=name, spilled_bytes=len(job.payload))


def _fetched(job: ClaimedJob, payload: Raw) -> ClaimedJob:
    return dataclasses.replace(job, payload=payload, spilled=None)
