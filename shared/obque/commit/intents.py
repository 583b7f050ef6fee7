"""Group commit across invocations that share no memory: the intent protocol (SPEC §5).

AWS Lambda runs one request per execution environment, so concurrent requests cannot
meet in a buffer. They meet in the bucket instead:

    invocation A                     invocation B                     queue.json
    PUT intents/0001-a.json          PUT intents/0002-b.json
    sleep(window)                    sleep(window)
    GET queue.json: a not applied    GET queue.json: b not applied
    LIST intents/ -> a, b            LIST intents/ -> a, b
    GET a, GET b                     GET a, GET b
    CAS [Intent a, Intent b]  ───────────────────────────────────▶  rev 8: applied i:a, i:b
    DELETE a, b (answers A)          CAS loses (412)
                                     GET queue.json: b applied  ──▶  answers B from applied

Whoever commits first carries everyone's operations; the others find their results in
the file's ``applied`` map (claimed jobs and their leases included, so a claim never
hands a job to nobody). An intent carries an expiry: one whose caller gave up is deleted
unapplied. Folding is idempotent (``Intent`` ops already in ``applied`` are skipped).

Without contention an intent costs more than it saves (PUT + LIST + GETs + DELETE around
the same CAS), so the engine commits directly and switches to intents for a while after
a compare-and-set loses.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import msgspec

from obque.commit.cas import Committer
from obque.commit.engine import EngineStats
from obque.core import (
    Claim,
    ClaimResult,
    Conflict,
    Intent,
    IntentResult,
    Op,
    QueueState,
    Result,
    StoreError,
    StoreUnavailable,
)
from obque.core.model import NO_RESULT
from obque.core.opcodec import decode_ops, decode_results, encode_ops
from obque.store import Snapshot, Store

__all__ = ["IntentEngine", "IntentSettings"]

PREFIX = "intents/"


@dataclass(frozen=True)
class IntentSettings:
    #: Pause after writing an intent so concurrent invocations' intents can join it.
    window_s: float = 0.05
    #: An intent not applied within this long is dropped (its caller has given up).
    ttl_s: float = 20.0
    #: After a lost compare-and-set, use intents for this long before trying direct again.
    contention_memory_s: float = 30.0
    #: Long-poll claims re-check the file this often (there is no shared memory to wake).
    poll_s: float = 1.0
    #: Parallel GETs and DELETEs of intent objects.
    fanout: int = 16


class _IntentDoc(msgspec.Struct, frozen=True):
    expires_ms: int
    ops: msgspec.Raw


class IntentEngine:
    """Serves one queue from an environment that runs one request at a time."""

    leadership = None

    def __init__(
        self,
        store: Store,
        *,
        name: str | None = None,
        clock: Callable[[], float] = time.time,
        settings: IntentSettings | None = None,
        deadline: Callable[[], float | None] | None = None,
    ) -> None:
        self.store = store
        self.name = name or store.key.rpartition("/")[2].removesuffix(".json")
        self.clock = clock
        self.settings = settings or IntentSettings()
        #: Monotonic time by which this invocation must have answered (Lambda's budget).
        self.deadline = deadline or (lambda: None)
        self.committer = Committer(store, clock=clock)
        self.stats = EngineStats()
        self.intents_written = 0
        self._contended_until = 0.0
        self._pool = ThreadPoolExecutor(self.settings.fanout, thread_name_prefix="obque-intent")
        self._lock = threading.Lock()

    @property
    def state(self) -> QueueState | None:
        return self.committer.state

    def start(self) -> None:
        """Nothing to start: every invocation commits for itself."""

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    def read_state(self) -> QueueState:
        return self.committer.refresh()

    # -- committing ----------------------------------------------------------------------

    def _time_left(self) -> float:
        end = self.deadline()
        budget = self.settings.ttl_s
        return budget if end is None else min(budget, end - time.monotonic())

    def run(self, op: Op) -> Result:
        with self._lock:  # one request at a time per environment; guard anyway
            if time.monotonic() >= self._contended_until:
                # Direct: one retry absorbs a stale cached state; a second loss means
                # other invocations are writing now, so join them through intents.
                try:
                    _, results = self.committer.commit([op], max_conflicts=2)
                    self._count(1)
                    return results[0]
                except Conflict:
                    self._contended_until = time.monotonic() + self.settings.contention_memory_s
            return self._via_intent(op)

    async def arun(self, op: Op) -> Result:
        return await asyncio.to_thread(self.run, op)

    def _count(self, ops: int) -> None:
        self.stats.commits += 1
        self.stats.ops += ops
        self.stats.largest_batch = max(self.stats.largest_batch, ops)

    def _via_intent(self, op: Op) -> Result:
        now_ms = int(self.clock() * 1000)
        left = self._time_left()
        intent_id = f"{now_ms:013d}-{secrets.token_hex(6)}"
        doc = _IntentDoc(now_ms + int(left * 1000), msgspec.Raw(encode_ops([op])))
        self.store.child(f"{PREFIX}{intent_id}.json").write(msgspec.json.encode(doc), None)
        self.intents_written += 1
        mine = Intent(intent_id, (op,))  # type: ignore[arg-type]
        end = time.monotonic() + left
        time.sleep(self.settings.window_s)
        pause = 0.01
        while time.monotonic() < end:
            state = self.committer.refresh()
            if (found := _applied(state, intent_id)) is not None:
                self._forget([intent_id])
                return found
            pending, stale = self._pending(state)
            if not any(i.id == intent_id for i in pending):
                pending.append(mine)  # a listing may lag behind our own PUT
            self._forget(stale)
            try:
                committed, results = self.committer.commit(pending, max_conflicts=1)
            except Conflict:
                time.sleep(pause)  # someone else folded: look for our result
                pause = min(pause * 2, 0.2)
                continue
            self._count(sum(len(i.ops) for i in pending))
            self._forget([i.id for i in pending])
            for intent, result in zip(pending, results, strict=True):
                if intent.id == intent_id:
                    if isinstance(result, IntentResult) and result.fresh:
                        return result.results[0]
                    found = _applied(committed, intent_id)
                    if found is not None:
                        return found
        raise StoreUnavailable(
            f"{self.store.uri}: intent {intent_id} was not applied within {left:.1f}s"
        )

    def _pending(self, state: QueueState) -> tuple[list[Intent], list[str]]:
        """Unapplied, unexpired intents (oldest first), and the names of stale ones."""
        now_ms = int(self.clock() * 1000)
        ids = [n[len(PREFIX) : -len(".json")] for n in self.store.children(PREFIX)]
        stale = [i for i in ids if f"i:{i}" in state.applied]
        wanted = [i for i in ids if f"i:{i}" not in state.applied]
        snaps = list(self._pool.map(self._read_intent, wanted))
        pending: list[Intent] = []
        for intent_id, snap in zip(wanted, snaps, strict=True):
            if snap is None:
                continue  # folded and deleted meanwhile
            try:
                doc = msgspec.json.decode(snap.data, type=_IntentDoc)
                ops = decode_ops(doc.ops)
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
                stale.append(intent_id)  # not ours to understand: never apply it
                continue
            if doc.expires_ms < now_ms:
                stale.append(intent_id)
                continue
            pending.append(Intent(intent_id, tuple(ops)))  # type: ignore[arg-type]
        return pending, stale

    def _read_intent(self, intent_id: str) -> Snapshot | None:
        # An intent deleted between LIST and GET is gone. Where the role may list only a
        # prefix, S3 answers that GET with 403 rather than 404: also gone, for our purpose.
        try:
            return self.store.child(f"{PREFIX}{intent_id}.json").read()
        except StoreError as exc:
            if isinstance(exc, StoreUnavailable):
                raise
            return None

    def _forget(self, ids: list[str]) -> None:
        """Delete intent objects (best effort: a leftover is skipped as applied later)."""

        def delete(intent_id: str) -> None:
            with contextlib.suppress(StoreUnavailable):
                self.store.child(f"{PREFIX}{intent_id}.json").delete()

        list(self._pool.map(delete, ids))

    # -- long polls ----------------------------------------------------------------------

    def claim(self, op: Claim, wait_seconds: float = 0.0) -> ClaimResult:
        end = time.monotonic() + min(wait_seconds, max(0.0, self._time_left() - 1))
        while True:
            result = self.run(op)
            assert isinstance(result, ClaimResult)
            if result.jobs or time.monotonic() + self.settings.poll_s > end:
                return result
            time.sleep(self.settings.poll_s)

    async def aclaim(
        self,
        op: Claim,
        wait_seconds: float = 0.0,
        *,
        abandoned: Callable[[], Awaitable[bool]] | None = None,
    ) -> ClaimResult:
        end = time.monotonic() + min(wait_seconds, max(0.0, self._time_left() - 1))
        while True:
            result = await self.arun(op)
            assert isinstance(result, ClaimResult)
            if result.jobs or time.monotonic() + self.settings.poll_s > end:
                return result
            await asyncio.sleep(self.settings.poll_s)
            if abandoned is not None and await abandoned():
                return ClaimResult(())


def _applied(state: QueueState, intent_id: str) -> Result | None:
    entry = state.applied.get(f"i:{intent_id}")
    if entry is None or entry.result == NO_RESULT:
        return None
    return decode_results(entry.result)[0]
