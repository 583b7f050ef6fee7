"""Group commit for one queue in one process.

Callers submit operations from any thread or event loop; one writer thread turns
whatever has gathered into a single compare-and-set. While a write is in flight new
operations buffer, and the buffer becomes the next commit:

    callers   a b c       d e f g h        i
    writer    [commit a]  [commit b..c ]   [commit d..h]   [commit i]
              one CAS     one CAS           one CAS         ...

So with C concurrent callers and write latency W the queue sustains about C / W
operations per second, while each caller waits one to two write latencies. A caller's
future resolves only after the write containing its operation landed.

Two holds keep that C / W within reach. Callers that loop (workers, a load generator)
submit again a moment after their answer; a writer that started the next commit at
once would take only the first few of them, and the callers would split into two
groups riding alternate commits, halving throughput. So after answering a commit the
writer waits, for at most a tenth of that commit's duration, until as many operations
are pending as it just answered. And on a store that allows one write per interval
(GCS), the writer takes its batch when the interval is over, not before, so everything
arriving meanwhile rides along.

Payloads above the queue's ``spill_payload_bytes`` are written to their own objects by
the calling thread or coroutine before its push joins a batch, and read back after its
claim is answered, so their I/O runs in parallel and never holds up the writer (see
``obque.commit.payloads``). ``submit`` is the raw path without either step.

Long-poll claims wait on an in-memory signal raised by commits that leave a job ready
(or by the timer of the next delayed job or lease expiry), never by polling the store
(``obque.commit.longpoll``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass

from obque.commit.answers import Answer, answer
from obque.commit.cas import Committer
from obque.commit.events import CommitListener, CommitLog, CommitRecord
from obque.commit.leader import Leadership
from obque.commit.longpoll import ReadySignal
from obque.commit.payloads import Payloads
from obque.commit.takeover import take_over
from obque.core import (
    Claim,
    ClaimResult,
    NotLeader,
    ObqueError,
    Op,
    QueueState,
    Result,
)
from obque.store import Store

__all__ = ["EngineStats", "QueueEngine"]

#: A commit never carries more operations than this; the rest wait for the next one.
MAX_BATCH_OPS = 5000

#: After a commit, how long (as a fraction of its duration) the writer waits at most for
#: the callers it answered to submit again before it starts the next commit.
GATHER_FRACTION = 0.1


@dataclass
class EngineStats:
    commits: int = 0
    ops: int = 0
    largest_batch: int = 0


class QueueEngine:
    """The writer of one queue file. ``submit(op)`` returns a future of its result."""

    def __init__(
        self,
        store: Store,
        *,
        leadership: Leadership | None = None,
        clock: Callable[[], float] = time.time,
        committer: Committer | None = None,
        name: str | None = None,
        guard: Callable[[QueueState], None] | None = None,
    ) -> None:
        self.store = store
        self.name = name or store.key.rpartition("/")[2].removesuffix(".json")
        self.committer = committer or Committer(
            store, clock=clock, trust_cache=leadership is not None
        )
        if self.committer.payloads is None:
            self.committer.payloads = Payloads(store, clock=clock)
        self.payloads: Payloads = self.committer.payloads
        self._ready = ReadySignal(self.committer)
        self.clock = clock
        self.leadership = leadership
        #: Without leadership: checked against every state a commit builds on (an
        #: in-process client uses it to notice that a broker now serves the queue).
        self.guard = guard
        self.stats = EngineStats()
        #: Called with a ``CommitRecord`` after each landed commit, before its callers
        #: are answered (the broker's metrics observe commits through this).
        self.commit_listeners: list[CommitListener] = []
        self.log = CommitLog(self.name)
        self._pending: list[tuple[Op, Answer]] = []
        self._cond = threading.Condition()
        # Submitters wake the writer once this many operations are pending.
        self._wake_at = 1
        # Set by the writer after each commit (see _hold).
        self._gather_target = 0
        self._gather_until = 0.0
        self._write_due = 0.0
        self._closing = False
        self._thread: threading.Thread | None = None

    # -- public surface ------------------------------------------------------------------

    @property
    def state(self) -> QueueState | None:
        return self.committer.state

    def submit(self, op: Op) -> Future[Result]:
        future: Future[Result] = Future()
        self._enqueue(op, future)
        return future

    def run(self, op: Op, timeout: float | None = None) -> Result:
        if self.payloads.may_spill(op):
            op = self._spill(op)
        result = self.submit(op).result(timeout)
        return self.payloads.resolve(result) if self.payloads.must_resolve(result) else result

    async def arun(self, op: Op) -> Result:
        loop = asyncio.get_running_loop()
        if self.payloads.may_spill(op):
            op = await loop.run_in_executor(self.payloads.calls, self._spill, op)
        future: asyncio.Future[Result] = loop.create_future()
        self._enqueue(op, future)
        result = await future
        if self.payloads.must_resolve(result):
            return await loop.run_in_executor(self.payloads.calls, self.payloads.resolve, result)
        return result

    def _spill(self, op: Op) -> Op:
        # The cached state's settings, without waiting for a commit in flight to finish.
        state = self.committer.state
        config = state.config if state is not None else self.committer.snapshot().config
        return self.payloads.spill(op, config)

    def _enqueue(self, op: Op, future: Answer) -> None:
        with self._cond:
            if self._closing:
                raise RuntimeError("engine is closed")
            if self.leadership is not None and self.leadership.fenced_by is not None:
                future.set_exception(self.leadership.not_leader(self.committer.state))
                return
            self._pending.append((op, future))
            self._start()
            if len(self._pending) >= self._wake_at:
                self._cond.notify()

    def claim(self, op: Claim, wait_seconds: float = 0.0) -> ClaimResult:
        """A claim that waits up to ``wait_seconds`` for a job (long poll)."""
        if wait_seconds <= 0:
            return self._claim_now(self.run(op))
        deadline = time.monotonic() + wait_seconds
        while True:
            # Registered before the claim is submitted, so that no commit between its
            # empty answer and the wait can slip by unheard (``obque.commit.longpoll``).
            waiter = self._ready.waiter()
            try:
                result = self.run(op)
                assert isinstance(result, ClaimResult)
                remaining = deadline - time.monotonic()
                if result.jobs or remaining <= 0:
                    return result
                self._ready.park(waiter, remaining)
                with contextlib.suppress(TimeoutError):
                    waiter.result(timeout=remaining)
            finally:
                self._ready.drop(waiter)

    async def aclaim(
        self,
        op: Claim,
        wait_seconds: float = 0.0,
        *,
        abandoned: Callable[[], Awaitable[bool]] | None = None,
    ) -> ClaimResult:
        """The long-poll claim for event loops: waiting holds no thread.

        ``abandoned`` is asked after each wait, before claiming again: a caller that has
        gone (an HTTP client that disconnected) must not be handed jobs nobody will see,
        which would then sit claimed until their lease lapsed.
        """
        if wait_seconds <= 0:
            return self._claim_now(await self.arun(op))
        deadline = time.monotonic() + wait_seconds
        while True:
            waiter = self._ready.waiter()  # before the claim: see ``claim``
            try:
                result = await self.arun(op)
                assert isinstance(result, ClaimResult)
                remaining = deadline - time.monotonic()
                if result.jobs or remaining <= 0:
                    return result
                self._ready.park(waiter, remaining)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.wrap_future(waiter), timeout=remaining)
            finally:
                self._ready.drop(waiter)
            if abandoned is not None and await abandoned():
                return ClaimResult(())

    @staticmethod
    def _claim_now(result: Result) -> ClaimResult:
        assert isinstance(result, ClaimResult)
        return result

    @property
    def parked_claims(self) -> int:
        """Long-poll claims waiting here for a job right now."""
        return self._ready.waiting

    def read_state(self) -> QueueState:
        """The queue as this process last committed or read it (read once if needed)."""
        return self.committer.snapshot()

    def start(self) -> None:
        """Start the writer now (a broker does, to take leadership before any request)."""
        with self._cond:
            self._start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop after committing what is pending (clean shutdown drains in-flight work)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        if thread is None or not thread.is_alive():
            self._release_leadership()
        self.payloads.close()
        self._ready.wake_all()

    def _release_leadership(self) -> None:
        """A leader stopping cleanly withdraws its URL, so clients stop sending it requests
        and the next broker need not wait out the heartbeat timeout (best effort: a
        broker that cannot write now is simply found stale later)."""
        lead = self.leadership
        if lead is None or not lead.is_leader:
            return
        try:
            self.committer.commit([lead.release_op()], check=lead.check)
        except ObqueError:
            return  # fenced meanwhile, or the store is down: nothing was withdrawn
        finally:
            lead.fenced_by = "nobody (stopped)"
        self.log.released(lead.epoch)

    # -- the writer -----------------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._write_loop, name=f"obque-writer-{self.name}", daemon=True
            )
            self._thread.start()

    def _idle_timeout(self) -> float | None:
        """How long an idle writer sleeps. A leader wakes when its next heartbeat is due,
        counted from the last heartbeat it wrote -- not from its last commit, which may
        have carried none (counting from there let a heartbeat come up to twice
        ``timeout / 3`` after the previous one). A standby looks for a stale leader every
        ``timeout / 3``."""
        lead = self.leadership
        if lead is None:
            return None
        every = lead.heartbeat_every_s
        if not lead.is_leader:
            return every
        # 2 ms past due, so that the heartbeat is due by the clock the writer reads then.
        due = lead.last_heartbeat_ms / 1000 + every - self.clock() + 0.002
        # Overdue: writing the last one failed; try again soon, but not in a tight loop.
        return min(every, due) if due > 0 else every / 10

    def _write_loop(self) -> None:
        if self.leadership is not None:
            self._commit_batch([])  # take leadership (or learn who has it) right away
        interval = self.store.min_write_interval
        while True:
            with self._cond:
                if not self._pending and not self._closing:
                    self._cond.wait(self._idle_timeout())
                self._hold()
                if self._closing and not self._pending:
                    return
                batch = self._pending[:MAX_BATCH_OPS]
                del self._pending[:MAX_BATCH_OPS]
            writes = self.committer.stats.commits
            started = time.monotonic()
            self._commit_batch(batch)
            ended = time.monotonic()
            self._gather_until = ended + GATHER_FRACTION * (ended - started)
            if interval and self.committer.stats.commits != writes:
                # As Committer._pace counts it: from the start of the last write.
                self._write_due = self.committer.last_write_started + interval

    def _hold(self) -> None:
        """With the lock held and operations pending: wait while starting the next
        commit now would leave out operations that are about to arrive -- until the
        store's write interval is over, then until the callers the last commit answered
        have submitted again (or ``GATHER_FRACTION`` of that commit's duration passed)."""
        while self._pending and not self._closing:
            now = time.monotonic()
            if now < self._write_due:
                self._wake_at = sys.maxsize  # the batch cannot leave earlier anyway
                self._cond.wait(self._write_due - now)
            elif len(self._pending) < self._gather_target and now < self._gather_until:
                self._wake_at = self._gather_target
                self._cond.wait(self._gather_until - now)
            else:
                break
        self._wake_at = 1
        self._gather_target = 0

    def _commit_batch(self, batch: list[tuple[Op, Answer]]) -> None:
        ops: list[Op] = [op for op, _ in batch]
        lead = self.leadership
        was_leader = lead is not None and lead.is_leader
        try:
            if lead is not None:
                if not lead.is_leader:
                    self._acquire(lead)  # also how an idle standby takes over a stale queue
                beat = lead.heartbeat_op(self.committer.now_ms())
                if beat is not None:
                    ops.append(beat)
            if not ops:
                return
            conflicts = self.committer.stats.conflicts
            started = time.monotonic()
            state, results = self.committer.commit(
                ops, check=self.guard if lead is None else lead.check
            )
        except NotLeader as exc:
            self._fail(batch, exc)
            if lead is not None:
                self._not_leader(lead, was_leader, exc)
            return
        except ObqueError as exc:
            self._fail(batch, exc)
            self.log.failed(exc.code, exc.message, len(batch))
            return
        except Exception as exc:  # a bug must not leave callers waiting forever
            self._fail(batch, exc)
            self.log.crashed(exc)
            return
        if lead is not None:
            lead.committed(state)
        self.stats.commits += 1
        self.stats.ops += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        self._observe(
            CommitRecord(
                self.name,
                len(batch),
                time.monotonic() - started,
                self.committer.stats.conflicts - conflicts,
            )
        )
        # Those pending now came from other callers; the ones answered next will be back.
        self._gather_target = len(self._pending) + len(batch)
        answer(batch, results)
        self._ready.wake_if_ready(state)

    def _not_leader(self, lead: Leadership, was_leader: bool, exc: NotLeader) -> None:
        leader = exc.broker_url or "nobody"
        if was_leader and lead.fenced_by is not None:
            self.log.fenced(lead.epoch, leader)
        else:
            self.log.standing_by(leader)  # said once per leader it stands by for
        if lead.fenced_by is not None:
            # Long polls parked here can never be served: woken, their next claim meets
            # not_leader at once and their callers go to the new broker.
            self._ready.wake_all()

    def _observe(self, record: CommitRecord) -> None:
        self.log.committed(record)
        for listener in self.commit_listeners:
            try:
                listener(record)
            except Exception as exc:  # an observer's bug must not stop the writer thread
                self.log.crashed(exc)

    def _acquire(self, lead: Leadership) -> None:
        """Take the queue (``obque.commit.takeover``); raises ``NotLeader`` if taken."""
        previous = take_over(self.committer, lead)
        self.log.acquired(lead.url, lead.epoch or 0, previous)

    @staticmethod
    def _fail(batch: list[tuple[Op, Answer]], exc: BaseException) -> None:
        answer(batch, [exc] * len(batch))
