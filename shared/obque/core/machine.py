"""The queue's state machine: ``apply(state, ops, now_ms, nonce) -> (state, results)``.

Pure: no I/O, no clock, no randomness but the ``nonce`` the caller passes (lease tokens
are derived from it). One call is one commit: it first expires lapsed claims, then
applies every operation in order, and returns a state whose ``revision`` is one higher --
or, when nothing changed (say, claims that found no job), the very state it was given,
so the caller can skip the write.

Cost is O(jobs + batch): the containers are copied once, claims walk the FIFO with a
single cursor per commit (jobs that become ready behind the cursor go on a small heap),
and every other operation is a dict lookup.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import replace as replace_dc

from msgspec import Raw
from msgspec.structs import replace

from obque.core import limits
from obque.core.admission import push_refusal
from obque.core.cursor import ReadyCursor
from obque.core.model import Applied, Job, JobClaim, Stats
from obque.core.opcodec import encode_results
from obque.core.ops import (
    Ack,
    Advertise,
    Claim,
    ClaimedJob,
    ClaimResult,
    ConfigResult,
    Configure,
    CountResult,
    Heartbeat,
    Intent,
    IntentResult,
    ItemResult,
    ItemsResult,
    LeaseRef,
    Nack,
    NackItem,
    NewJob,
    Op,
    Purge,
    Push,
    PushResult,
    Redrive,
    Result,
)
from obque.core.state import QueueState, job_inline_bytes

__all__ = ["apply", "lease_token", "retry_delay_ms"]

LEASE_LOST = "lease_lost"
NOT_FOUND = "not_found"


def lease_token(nonce: bytes, job_id: str, attempt: int) -> str:
    """An opaque, unguessable lease: a keyed hash of the commit's random nonce."""
    digest = hashlib.blake2b(
        f"{job_id}:{attempt}".encode(), key=nonce[:64], digest_size=12
    ).digest()
    return base64.urlsafe_b64encode(digest).decode()


def retry_delay_ms(attempts: int, base_s: float, cap_s: float) -> int:
    """Exponential backoff: base, 2*base, 4*base ... after the 1st, 2nd, 3rd attempt."""
    exponent = min(max(attempts - 1, 0), 60)
    return round(min(base_s * float(2**exponent), cap_s) * 1000)


def apply(
    state: QueueState, ops: Sequence[Op], now_ms: int, nonce: bytes
) -> tuple[QueueState, list[Result]]:
    txn = _Commit(state, now_ms, nonce)
    txn.expire_claims()
    results = [txn.run(op) for op in ops]
    new_state = txn.finish()
    if new_state is state:
        # Nothing changed, so nothing will be written: a push of duplicates only is held
        # by the current revision, not the next one.
        results = [
            replace_dc(r, revision=state.revision) if isinstance(r, PushResult) else r
            for r in results
        ]
    return new_state, results


class _Commit:
    """The mutable working copy of one commit."""

    def __init__(self, state: QueueState, now_ms: int, nonce: bytes) -> None:
        self.base = state
        self.now = now_ms
        self.nonce = nonce
        self.config = state.config
        self.broker = state.broker
        self.next_seq = state.next_seq
        self.jobs = state.jobs.copy()
        self.keys = state.keys.copy()
        self.dead = list(state.dead)
        self.applied = state.applied.copy()
        self.counters = dict.fromkeys(Stats.__struct_fields__, 0)
        self.released: list[str] = []
        #: ``QueueState.inline_bytes``, kept up to date by every job added or removed.
        self.inline_bytes = state.inline_bytes
        #: Did any operation change the queue? If not, there is nothing to write.
        self.changed = False
        self.cursor = ReadyCursor(self.jobs, now_ms)

    # -- commit frame -------------------------------------------------------------

    def finish(self) -> QueueState:
        if not self.changed:
            return self.base
        self._prune_applied()
        self.counters["commits"] += 1
        old = self.base.stats
        stats = replace(old, **{k: getattr(old, k) + v for k, v in self.counters.items() if v})
        return QueueState(
            name=self.base.name,
            revision=self.base.revision + 1,
            next_seq=self.next_seq,
            config=self.config,
            broker=self.broker,
            jobs=self.jobs,
            dead=tuple(self.dead),
            applied=self.applied,
            stats=stats,
            keys=self.keys,
            extras=self.base.extras,
            released=tuple(self.released),
            inline_bytes=self.inline_bytes,
        )

    def run(self, op: Op) -> Result:
        match op:
            case Push():
                return self.push(op)
            case Claim():
                return self.claim(op)
            case Heartbeat():
                return ItemsResult(tuple(self.heartbeat(r, op.lease_ms) for r in op.leases))
            case Ack():
                return ItemsResult(tuple(self.ack(r) for r in op.leases))
            case Nack():
                return ItemsResult(tuple(self.nack(item) for item in op.items))
            case Redrive():
                return CountResult(self.redrive(op.ids))
            case Purge():
                return CountResult(self.purge(op.ids))
            case Configure():
                self.changed = True
                self.config = op.applied_to(self.config)
                return ConfigResult(self.config)
            case Advertise():
                self.changed = True
                self.broker = op.broker
                return CountResult(1)
            case Intent():
                return self.intent(op)
        raise TypeError(f"not an operation: {op!r}")  # pragma: no cover

    def intent(self, op: Intent) -> IntentResult:
        key = f"i:{op.id}"
        if key in self.applied:
            return IntentResult((), fresh=False)
        if op.expires_ms is not None and self.now > op.expires_ms:
            return IntentResult((), fresh=False)  # too late: its caller has given up
        results = tuple(self.run(inner) for inner in op.ops)
        self.changed = True
        self.applied[key] = Applied(at_ms=self.now, result=Raw(encode_results(results)))
        return IntentResult(results)  # type: ignore[arg-type]  # nested intents: not built

    def _max_attempts(self, job: Job) -> int:
        return job.max_attempts or self.config.max_attempts

    def _remember_key(self, job: Job) -> None:
        """A keyed job leaves the live set: its key keeps deduplicating for a while."""
        if job.key is not None and self.keys.get(job.key) == job.id:
            del self.keys[job.key]
            self.applied.pop(f"k:{job.key}", None)  # re-insert at the end: newest last
            self.applied[f"k:{job.key}"] = Applied(at_ms=self.now, id=job.id)

    def _horizon_ms(self, name: str) -> int:
        """Entries older than this stop deduplicating. Client retry keys (``~…``) only
        need to outlive a retry, so they go sooner and keep the file small."""
        if name.startswith(("i:", "k:" + limits.RETRY_KEY_PREFIX)):
            return self.now - limits.RETRY_KEY_SECONDS * 1000
        return self.now - self.config.dedup_seconds * 1000

    def _prune_applied(self) -> None:
        # Entries are inserted in time order, so the oldest are at the front.
        excess = len(self.applied) - limits.MAX_APPLIED
        stale = []
        for name, entry in self.applied.items():
            if entry.at_ms >= self._horizon_ms(name) and excess <= 0:
                break
            stale.append(name)
            excess -= 1
        for name in stale:
            del self.applied[name]

    # -- expiry ---------------------------------------------------------------------

    def expire_claims(self) -> None:
        now = self.now
        lapsed = [
            job
            for job in self.jobs.values()
            if job.claim is not None and job.claim.expires_ms < now
        ]
        for job in lapsed:
            self.changed = True
            self.counters["expired"] += 1
            if job.attempts >= self._max_attempts(job):
                self._bury(job, "lease expired on the last attempt")
            else:
                self.jobs[job.id] = replace(job, claim=None, ready_ms=now)

    # -- push -------------------------------------------------------------------------

    def push(self, op: Push) -> Result:
        # Keys already live or remembered, or repeated within this push, add no job:
        # only the rest count against the queue's limits (``obque.core.admission``).
        keys: set[str] = set()
        added: list[NewJob] = []
        for new in op.jobs:
            if new.key is not None:
                if new.key in keys or self._find_key(new.key) is not None:
                    continue
                keys.add(new.key)
            added.append(new)
        refusal = push_refusal(
            self.base.name, self.config, len(self.jobs), self.inline_bytes, op.jobs, added
        )
        if refusal is not None:
            return refusal
        ids: list[str] = []
        duplicates: list[str] = []
        for new in op.jobs:
            if new.key is not None and (existing := self._find_key(new.key)) is not None:
                ids.append(existing)
                duplicates.append(existing)
                continue
            job_id = str(self.next_seq)
            self.next_seq += 1
            self._append(
                Job(
                    id=job_id,
                    payload=new.payload,
                    enqueued_ms=self.now,
                    ready_ms=self.now + new.delay_ms,
                    key=new.key,
                    max_attempts=new.max_attempts,
                    spilled=new.spilled,
                )
            )
            ids.append(job_id)
        self.counters["pushed"] += len(ids) - len(duplicates)
        return PushResult(tuple(ids), tuple(duplicates), self.base.revision + 1)

    def _find_key(self, key: str) -> str | None:
        if (live := self.keys.get(key)) is not None:
            return live
        seen = self.applied.get(f"k:{key}")
        if seen is not None and seen.at_ms >= self._horizon_ms(f"k:{key}"):
            return seen.id
        return None

    def _append(self, job: Job) -> None:
        self.changed = True
        self.jobs[job.id] = job
        self.inline_bytes += job_inline_bytes(job)
        if job.key is not None:
            self.keys.setdefault(job.key, job.id)
        self.cursor.appended(job.id)

    # -- claim ------------------------------------------------------------------------

    def claim(self, op: Claim) -> ClaimResult:
        lease_ms = op.lease_ms or self.config.lease_seconds * 1000
        got: list[ClaimedJob] = []
        while len(got) < op.max:
            job = self.cursor.next_ready()
            if job is None:
                break
            self.changed = True
            attempt = job.attempts + 1
            lease = lease_token(self.nonce, job.id, attempt)
            expires = self.now + lease_ms
            self.jobs[job.id] = replace(
                job,
                attempts=attempt,
                claim=JobClaim(
                    worker=op.worker, lease=lease, expires_ms=expires, heartbeat_ms=self.now
                ),
            )
            got.append(ClaimedJob(job.id, job.payload, attempt, lease, expires, job.spilled))
        return ClaimResult(tuple(got))

    # -- settle: heartbeat, ack, nack ---------------------------------------------------

    def _held(self, ref: LeaseRef) -> Job | ItemResult:
        job = self.jobs.get(ref.id)
        if job is None:
            return ItemResult(ref.id, False, self._missing(ref.id))
        if job.claim is None or job.claim.lease != ref.lease:
            return ItemResult(ref.id, False, LEASE_LOST)
        self.changed = True  # every caller of _held changes the job it gets
        return job

    def _missing(self, job_id: str) -> str:
        # An id this queue once issued lost its lease (acked, dead, purged); others never were.
        if job_id.isdigit() and 0 < int(job_id) < self.next_seq:
            return LEASE_LOST
        return NOT_FOUND

    def heartbeat(self, ref: LeaseRef, lease_ms: int | None) -> ItemResult:
        job = self._held(ref)
        if isinstance(job, ItemResult):
            return job
        assert job.claim is not None
        expires = self.now + (lease_ms or self.config.lease_seconds * 1000)
        claim = replace(job.claim, expires_ms=expires, heartbeat_ms=self.now)
        self.jobs[job.id] = replace(job, claim=claim)
        return ItemResult(job.id, True, lease_expires_ms=expires)

    def ack(self, ref: LeaseRef) -> ItemResult:
        job = self._held(ref)
        if isinstance(job, ItemResult):
            return job
        del self.jobs[job.id]
        self._remember_key(job)
        self._release([job])
        self.inline_bytes -= job_inline_bytes(job)
        self.counters["acked"] += 1
        return ItemResult(job.id, True)

    def nack(self, item: NackItem) -> ItemResult:
        job = self._held(LeaseRef(item.id, item.lease))
        if isinstance(job, ItemResult):
            return job
        self.counters["nacked"] += 1
        error = item.error if item.error is not None else job.last_error
        if item.dead or job.attempts >= self._max_attempts(job):
            self._bury(replace(job, last_error=error), error or "attempts exhausted")
            return ItemResult(job.id, True)
        delay = item.delay_ms
        if delay is None:
            c = self.config
            delay = retry_delay_ms(job.attempts, c.retry_delay_seconds, c.retry_delay_max_seconds)
        self.jobs[job.id] = replace(job, claim=None, ready_ms=self.now + delay, last_error=error)
        if delay <= 0:
            self.cursor.became_ready(job.id)
        return ItemResult(job.id, True)

    # -- dead letters -------------------------------------------------------------------

    def _bury(self, job: Job, reason: str) -> None:
        del self.jobs[job.id]
        self._remember_key(job)
        self.dead.append(replace(job, claim=None, last_error=job.last_error or reason))
        self.counters["dead"] += 1
        overflow = len(self.dead) - self.config.dead_retention
        if overflow > 0:
            self._release(self.dead[:overflow])
            self.inline_bytes -= sum(map(job_inline_bytes, self.dead[:overflow]))
            del self.dead[:overflow]
            self.counters["dead_dropped"] += overflow

    def _release(self, gone: Sequence[Job]) -> None:
        """Jobs that left the queue for good no longer need their spilled payloads."""
        self.released.extend(job.spilled for job in gone if job.spilled is not None)

    def _take_dead(self, ids: tuple[str, ...] | None) -> list[Job]:
        self.changed = self.changed or bool(self.dead)
        if ids is None:
            taken, self.dead = self.dead, []
        else:
            wanted = set(ids)
            taken = [job for job in self.dead if job.id in wanted]
            if taken:
                self.dead = [job for job in self.dead if job.id not in wanted]
        self.inline_bytes -= sum(map(job_inline_bytes, taken))  # redrive adds them back
        return taken

    def redrive(self, ids: tuple[str, ...] | None) -> int:
        taken = self._take_dead(ids)
        for job in taken:
            key = job.key
            if key is not None and self.keys.get(key, job.id) != job.id:
                key = None  # a live job took the key meanwhile; one live job per key
            self._append(replace(job, key=key, attempts=0, claim=None, ready_ms=self.now))
        self.counters["redriven"] += len(taken)
        return len(taken)

    def purge(self, ids: tuple[str, ...] | None) -> int:
        taken = self._take_dead(ids)
        self._release(taken)
        self.counters["purged"] += len(taken)
        return len(taken)
