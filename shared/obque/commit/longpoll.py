"""Where a queue's long-poll claims wait for a job, without polling the store.

A long-poll claim registers a future here *before* it submits its claim, and parks on
it if the claim found nothing. It is resolved when a commit leaves a job ready (the
engine's writer calls :meth:`ReadySignal.wake_if_ready`), or by a timer when the
earliest delayed job or lapsing lease of the last known state comes due -- whichever is
first. The claim then tries again.

Registering first is what makes the wake impossible to lose:

    claimer   register   submit claim ... answered: nothing   arm timer   park
    writer                   [commit claim]   [commit push] -> wake_if_ready

A push that lands after the claim's commit but before the claimer parks finds the
future registered and resolves it, so parking returns at once. (Registered only after
the empty answer, that future would miss the wake, and with a job ready and thus no
due time there would be no timer either: the poll waited out its whole wait.)

A commit that leaves nothing ready but brings the next due time forward (a job pushed
with a short delay, a claim taken with a short lease) also wakes the parked polls when
it is earlier than every timer they armed: they claim again, find nothing, and park
with a timer for the new due time. Otherwise a delayed job pushed while a poll waited
would become ready unseen until that poll's wait ended.

A process that is not the queue's only writer (an in-process client beside other
processes) hears nothing of the others' pushes, so its waiters also wake every
``OTHERS_POLL_S`` to look at the file again.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import Future, InvalidStateError

from obque.commit.cas import Committer
from obque.core import QueueState

__all__ = ["OTHERS_POLL_S", "ReadySignal"]

#: How often a long poll re-reads the file when other processes may write it.
OTHERS_POLL_S = 0.5
_NEVER_MS = 2**63


class ReadySignal:
    """The parked long polls of one queue."""

    def __init__(self, committer: Committer) -> None:
        self.committer = committer
        self._lock = threading.Lock()
        self._waiters: list[Future[None]] = []
        # Those of ``_waiters`` whose claim found nothing and which wait now, with the
        # time (ms) each wakes by itself: its timer or its deadline.
        self._parked: dict[Future[None], int] = {}
        self._due_cache: tuple[QueueState | None, int | None] = (None, None)

    @property
    def waiting(self) -> int:
        """Long polls parked right now."""
        return len(self._parked)

    def waiter(self) -> Future[None]:
        """A future resolved by the next commit that leaves a job ready; take it before
        submitting the claim, and give it back with :meth:`drop`."""
        waiter: Future[None] = Future()
        with self._lock:
            self._waiters.append(waiter)
        return waiter

    def park(self, waiter: Future[None], timeout: float) -> None:
        """The claim found nothing: also wake ``waiter`` when the next delayed job or
        lapsing lease of the state now known comes due (if before ``timeout``)."""
        with self._lock:
            if waiter.done() or waiter not in self._waiters:
                return  # woken already: a job may be ready, no need to wait
            # Until its timer is known, any due time a commit brings wakes it.
            self._parked[waiter] = _NEVER_MS
        due = self._due_ms()
        delay = None if due is None else max(0.0, due / 1000 - self.committer.clock()) + 0.002
        if not self.committer.trust_cache:
            delay = min(delay, OTHERS_POLL_S) if delay is not None else OTHERS_POLL_S
        if delay is not None and delay < timeout:
            timer = threading.Timer(delay, _wake, (waiter,))
            timer.daemon = True
            timer.start()
        wakes_ms = self.committer.now_ms() + int(min(timeout, delay or timeout) * 1000)
        with self._lock:
            if waiter in self._parked:
                self._parked[waiter] = wakes_ms

    def drop(self, waiter: Future[None]) -> None:
        with self._lock:
            self._parked.pop(waiter, None)
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def wake_if_ready(self, state: QueueState) -> None:
        """After a commit: wake every waiting poll if ``state`` has a ready job, or if
        its next due time is earlier than any parked poll would wake by itself."""
        with self._lock:
            if not self._waiters:
                return
            armed = min(self._parked.values(), default=None)
        now = self.committer.now_ms()
        due: int | None = None
        for job in state.jobs.values():  # one pass, stopping at the first ready job
            if job.claim is None and job.ready_ms <= now:
                self.wake_all()
                return
            at = job.claim.expires_ms + 1 if job.claim is not None else job.ready_ms
            if at > now and (due is None or at < due):
                due = at
        if armed is not None and due is not None and due < armed:
            self.wake_all()

    def wake_all(self) -> None:
        with self._lock:
            waiters, self._waiters = self._waiters, []
            self._parked.clear()
        for waiter in waiters:
            _wake(waiter)

    def _due_ms(self) -> int | None:
        """``next_due_ms`` of the current state, scanned once per state rather than once
        per waiting claim (128 long polls on 100k jobs would scan 12.8M jobs a commit).
        A cached due time still in the future is also the earliest one after now."""
        state = self.committer.state
        if state is None:
            return None
        now = self.committer.now_ms()
        cached_state, cached_due = self._due_cache
        if cached_state is state and cached_due is not None and cached_due > now:
            return cached_due
        due = next_due_ms(state, now)
        self._due_cache = (state, due)
        return due


def _wake(waiter: Future[None]) -> None:
    # Timer and writer threads may race to wake the same (or a cancelled) waiter.
    with contextlib.suppress(InvalidStateError):
        waiter.set_result(None)


def next_due_ms(state: QueueState, now_ms: int) -> int | None:
    """The earliest future time a delayed job becomes ready or a claim lapses."""
    due: int | None = None
    for job in state.jobs.values():
        at = job.claim.expires_ms + 1 if job.claim is not None else job.ready_ms
        if at > now_ms and (due is None or at < due):
            due = at
    return due
