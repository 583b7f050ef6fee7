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
    GET queue.json: a applied        CAS loses (412)
    DELETE a (answers A)             GET queue.json: b applied
                                     DELETE b (answers B from applied)

Whoever commits first carries everyone's operations; the others find their results in
the file's ``applied`` map (claimed jobs and their leases included, so a claim never
hands a job to nobody). An intent carries an expiry: one whose caller gave up is deleted
unapplied. Folding is idempotent (``Intent`` ops already in ``applied`` are skipped).

Each intent is deleted once, by its owner, when it finds its result (or revokes it): a
fold or a direct commit that carried it leaves it alone, and so does anyone who lists it
as applied meanwhile. Deleting there too cost 3 DELETEs per operation with 64
environments, most of them of objects already gone. An applied intent still listed
``abandoned_after_s`` after it was written has lost its owner (a timeout, a crash):
whoever lists it then deletes it.

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
from obque.commit.payloads import Payloads
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
    #: How long an invocation lets the owner of the oldest intent fold before folding
    #: itself (that owner may have timed out); counted again whenever it sees the oldest
    #: pending intent applied, since then someone alive is folding.
    fold_patience_s: float = 0.3
    #: Kept at the end of the budget for revoking an intent that was not applied.
    last_read_s: float = 1.0
    #: A direct commit carries up to this many pending intents less one; at this many it
    #: joins them instead (heavy contention: folding together beats racing the folds).
    join_at: int = 8
    #: An applied intent still listed this long after it was written has no owner left
    #: to delete it (owners answer within ``ttl_s``): whoever lists it deletes it.
    abandoned_after_s: float = 60.0


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
        self.payloads = Payloads(store, clock=clock)
        self.committer = Committer(store, clock=clock, payloads=self.payloads)
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
        self.payloads.close()

    def read_state(self) -> QueueState:
        return self.committer.refresh()

    # -- committing ----------------------------------------------------------------------

    def _time_left(self) -> float:
        end = self.deadline()
        budget = self.settings.ttl_s
        return budget if end is None else min(budget, end - time.monotonic())

    def run(self, op: Op) -> Result:
        with self._lock:  # one request at a time per environment; guard anyway
            if self.payloads.may_spill(op):
                # Before either path: an intent then carries names, not big payloads.
                config = (self.committer.state or self.committer.refresh()).config
                op = self.payloads.spill(op, config)
            result = self._run(op)
            if self.payloads.must_resolve(result):
                result = self.payloads.resolve(result)
            self.payloads.drain(timeout=max(0.0, self._time_left()))
        return result

    def _run(self, op: Op) -> Result:
        if time.monotonic() >= self._contended_until:
            # Direct: one retry absorbs a stale cached state; a second loss means
            # other invocations are writing now, so join them through intents.
            try:
                return self._direct(op)
            except (Conflict, _JoinIntents):
                self._contended_until = time.monotonic() + self.settings.contention_memory_s
        return self._via_intent(op)

    def _direct(self, op: Op) -> Result:
        """Commit ``op`` straight to the file, carrying the few intents pending -- or,
        when many are, join them (``_JoinIntents``).

        An environment that kept winning its compare-and-sets would starve everyone who
        switched to intents (their folds would keep losing to its writes), so a direct
        commit carries what is pending. But under heavy contention direct commits that
        carry intents still race the folds (measured with 64 environments: 7-16
        operations per write, against 30 once everyone folds), so from ``join_at``
        pending intents on, this environment becomes one of them. The price is one LIST
        per direct operation."""
        state = self.committer.state or self.committer.refresh()
        ids = self._intent_ids()
        waiting, leftovers = _split(ids, state)
        if len(waiting) >= self.settings.join_at:
            # The cached state may predate their application: look again.
            state = self.committer.refresh()
            waiting, leftovers = _split(ids, state)
            if len(waiting) >= self.settings.join_at:
                raise _JoinIntents()
        pending, stale = self._pending(state, waiting) if waiting else ([], [])
        ops: list[Op] = [*pending, op]
        _, results = self.committer.commit(ops, max_conflicts=2)
        self._count(len(ops))
        # The carried intents are their owners' to delete, when they find their results.
        self._forget(stale + self._abandoned(leftovers))
        return results[-1]

    async def arun(self, op: Op) -> Result:
        return await asyncio.to_thread(self.run, op)

    def _count(self, ops: int) -> None:
        self.stats.commits += 1
        self.stats.ops += ops
        self.stats.largest_batch = max(self.stats.largest_batch, ops)

    def _via_intent(self, op: Op) -> Result:
        now_ms = int(self.clock() * 1000)
        left = self._time_left()
        # The intent expires before this invocation must answer, leaving time to revoke
        # it (``_give_up``); a commit after ``expires_ms`` skips it too (see ``Intent``).
        expires_ms = now_ms + int(max(left - self.settings.last_read_s, 0.1) * 1000)
        intent_id = f"{now_ms:013d}-{secrets.token_hex(6)}"
        doc = _IntentDoc(expires_ms, msgspec.Raw(encode_ops([op])))
        self.store.child(f"{PREFIX}{intent_id}.json").write(msgspec.json.encode(doc), None)
        self.intents_written += 1
        mine = Intent(intent_id, (op,), expires_ms)  # type: ignore[arg-type]
        end = time.monotonic() + left
        patience = time.monotonic() + self.settings.window_s + self.settings.fold_patience_s
        time.sleep(self.settings.window_s)
        pause = 0.01
        oldest: str | None = None  # the oldest pending intent at the last look
        while time.monotonic() < end:
            state = self.committer.refresh()
            if oldest is not None and f"i:{oldest}" in state.applied:
                # Intents are being carried (a fold or a direct commit took the oldest):
                # whoever does it is alive, so wait for it again rather than fold too --
                # concurrent folds only make each other lose their compare-and-set.
                patience = max(patience, time.monotonic() + self.settings.fold_patience_s)
            if (found := _applied(state, intent_id)) is not None:
                self._forget([intent_id])
                return found
            if int(self.clock() * 1000) > expires_ms:
                break  # no commit can apply it any more
            waiting, leftovers = self._listed(state)
            oldest = waiting[0] if waiting else None
            if waiting and waiting[0] != intent_id and time.monotonic() < patience:
                # The oldest intent's owner folds everyone's; the others only watch the
                # file (a GET and a LIST each) instead of all reading every intent.
                time.sleep(pause)
                pause = min(pause * 2, 0.1)
                continue
            if self._fold(state, waiting, leftovers, mine):
                continue  # committed: the next read finds our result in ``applied``
            time.sleep(pause)  # someone else folded first: look for our result
            pause = min(pause * 2, 0.1)
        return self._give_up(intent_id, left)

    def _give_up(self, intent_id: str, waited: float) -> Result:
        """Revoke the intent by recording it as applied with no operations. The queue
        file's compare-and-set orders this against any fold that read the intent: if a
        fold lands first, the revocation finds the intent applied and we answer its
        result; if the revocation lands first, that fold's write loses and its re-read
        skips the intent. Either way the caller's answer is the truth."""
        try:
            state, results = self.committer.commit([Intent(intent_id, ())], max_conflicts=5)
        except (Conflict, StoreUnavailable):
            # Past its expiry no fold takes it up any more; one that already read it may
            # still land it, hence "unknown". Its owner is the one to delete it: now.
            self._forget([intent_id])
            raise StoreUnavailable(
                f"{self.store.uri}: intent {intent_id} was not applied within {waited:.1f}s "
                "and could not be revoked; its outcome is unknown (retry with a key)"
            ) from None
        revoked = results[0]
        self._forget([intent_id])
        if isinstance(revoked, IntentResult) and not revoked.fresh:
            found = _applied(state, intent_id)
            if found is not None:
                return found  # a fold carried it after all
        raise StoreUnavailable(
            f"{self.store.uri}: intent {intent_id} was not applied within {waited:.1f}s and "
            "was revoked: the operation did not happen and can be retried"
        )

    def _listed(self, state: QueueState) -> tuple[list[str], list[str]]:
        """Listed intent ids not yet applied (oldest first), and those already applied
        (left behind by an owner that never came back for its answer)."""
        return _split(self._intent_ids(), state)

    def _abandoned(self, applied: list[str]) -> list[str]:
        """Of intents listed as applied, those whose owner is surely gone (their ids
        begin with the time they were written)."""
        cutoff_ms = int((self.clock() - self.settings.abandoned_after_s) * 1000)
        return [i for i in applied if _written_ms(i) < cutoff_ms]

    def _intent_ids(self) -> list[str]:
        return sorted(n[len(PREFIX) : -len(".json")] for n in self.store.children(PREFIX))

    def _fold(self, state: QueueState, ids: list[str], leftovers: list[str], mine: Intent) -> bool:
        """Apply every pending intent in one commit; False when the CAS lost."""
        pending, stale = self._pending(state, ids)
        if not any(i.id == mine.id for i in pending):
            pending.append(mine)  # a listing may lag behind our own PUT
        self._forget(stale + self._abandoned(leftovers))
        try:
            self.committer.commit(pending, max_conflicts=1)
        except Conflict:
            return False
        self._count(sum(len(i.ops) for i in pending))
        return True  # each owner deletes its intent on finding its result, this one too

    def _pending(self, state: QueueState, wanted: list[str]) -> tuple[list[Intent], list[str]]:
        """The intents ``wanted`` that can still be applied, and the names of stale ones."""
        now_ms = int(self.clock() * 1000)
        stale: list[str] = []
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
            pending.append(Intent(intent_id, tuple(ops), doc.expires_ms))  # type: ignore[arg-type]
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


class _JoinIntents(Exception):
    """Other environments are meeting through intents: join them instead of committing."""


def _split(ids: list[str], state: QueueState) -> tuple[list[str], list[str]]:
    """``ids`` not yet applied in ``state`` (in order), and those already applied."""
    return [i for i in ids if f"i:{i}" not in state.applied], [
        i for i in ids if f"i:{i}" in state.applied
    ]


def _written_ms(intent_id: str) -> int:
    """When an intent was written, from its id (``0`` for a name we did not make)."""
    written, _, _ = intent_id.partition("-")
    return int(written) if written.isdigit() else 0


def _applied(state: QueueState, intent_id: str) -> Result | None:
    entry = state.applied.get(f"i:{intent_id}")
    if entry is None or entry.result == NO_RESULT:
        return None
    results = decode_results(entry.result)
    return results[0] if results else None  # [] marks an intent its caller revoked
