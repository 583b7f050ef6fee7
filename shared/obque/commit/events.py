"""What a group-commit engine tells the world about its commits.

Two outlets, both free of any metrics or logging framework beyond the standard library
(the commit layer must not need the broker's extras):

* a :class:`CommitRecord` handed to each listener after every landed commit (the broker
  turns them into histograms, ``obque.broker.metrics``);
* log lines on the ``obque.commit`` logger for what an operator acts on: leadership
  taken, lost to another broker (fenced), released; compare-and-sets lost to other
  writers; store errors; slow commits.

Each log line carries its facts as ``extra`` fields (``event``, ``queue``, ``epoch``...)
for a structured formatter, and repeats them in its message for a plain one. Lines name
queues, broker URLs, epochs, counts and durations, and quote error messages (which name
objects, never their contents): never a payload, a lease or a token. Conflicts, errors and
slow commits can come with every commit, so each kind is throttled to one line per
``LOG_EVERY_S`` per queue, which counts what it stands for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LOG_EVERY_S", "SLOW_COMMIT_S", "CommitListener", "CommitLog", "CommitRecord"]

log = logging.getLogger("obque.commit")
# A library's lines go where its application sends them: without this, an application that
# configured no logging (a script using an in-process client, the CLI) would get warnings
# printed by logging's last-resort handler next to its own one-line errors.
log.addHandler(logging.NullHandler())

#: A commit taking longer than this (retries and write pacing included) is logged.
SLOW_COMMIT_S = 2.0

#: At most one line per this many seconds for each throttled kind of line and queue.
LOG_EVERY_S = 10.0


@dataclass(frozen=True)
class CommitRecord:
    """One commit that landed."""

    queue: str
    #: Callers' operations it carried (0 for a commit made only to write a heartbeat).
    ops: int
    #: From handing the batch to the committer until the write landed: write latency,
    #: plus pacing (GCS) and every retry after a lost compare-and-set or a store error.
    seconds: float
    #: Compare-and-sets it lost on the way (each one cost a re-read and a re-apply).
    conflicts: int


CommitListener = Callable[[CommitRecord], None]


class _Throttle:
    """Lets a line through at most once per ``every_s``; sums what it held back."""

    def __init__(self, every_s: float, clock: Callable[[], float]) -> None:
        self.every_s = every_s
        self.clock = clock
        self._next = 0.0
        self.count = 0

    def add(self, n: int = 1) -> int | None:
        """Count ``n`` more; the total since the last line when a line is due now."""
        self.count += n
        now = self.clock()
        if now < self._next:
            return None
        total, self.count = self.count, 0
        self._next = now + self.every_s
        return total


class CommitLog:
    """The log lines of one queue's engine (called from its writer thread)."""

    def __init__(
        self,
        queue: str,
        *,
        slow_commit_s: float = SLOW_COMMIT_S,
        every_s: float = LOG_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.queue = queue
        self.slow_commit_s = slow_commit_s
        self._conflicts = _Throttle(every_s, clock)
        self._slow = _Throttle(every_s, clock)
        self._errors: dict[str, _Throttle] = {}
        self._every_s = every_s
        self._clock = clock
        #: The other broker this one last said it stands by for (said once per change).
        self._standing_by: str | None = None

    # -- commits ----------------------------------------------------------------------------

    def committed(self, record: CommitRecord) -> None:
        if record.conflicts:
            total = self._conflicts.add(record.conflicts)
            if total is not None:
                log.info(
                    "queue %s: %d compare-and-sets lost to other writers (re-read and retried)",
                    self.queue,
                    total,
                    extra={"event": "conflicts", "queue": self.queue, "conflicts": total},
                )
        if record.seconds >= self.slow_commit_s:
            count = self._slow.add()
            if count is not None:
                log.warning(
                    "queue %s: slow commit, %.2f s for %d operations (%d slow since the last line)",
                    self.queue,
                    record.seconds,
                    record.ops,
                    count,
                    extra={
                        "event": "slow_commit",
                        "queue": self.queue,
                        "seconds": round(record.seconds, 3),
                        "ops": record.ops,
                        "count": count,
                    },
                )

    def failed(self, code: str, message: str, callers: int) -> None:
        """A commit failed with an obque error (store trouble, an unreadable file)."""
        throttle = self._errors.setdefault(code, _Throttle(self._every_s, self._clock))
        count = throttle.add()
        if count is None:
            return
        log.warning(
            "queue %s: commit failed (%s): %s; %d failed since the last line",
            self.queue,
            code,
            message,
            count,
            extra={
                "event": "commit_failed",
                "queue": self.queue,
                "code": code,
                "error": message,
                "callers": callers,
                "count": count,
            },
        )

    def crashed(self, exc: BaseException) -> None:
        """A commit raised something no obque error describes: a bug, with its traceback."""
        log.error(
            "queue %s: commit failed unexpectedly",
            self.queue,
            exc_info=exc,
            extra={"event": "commit_crashed", "queue": self.queue},
        )

    # -- leadership -------------------------------------------------------------------------

    def acquired(self, url: str, epoch: int, previous: str | None) -> None:
        self._standing_by = None
        log.info(
            "queue %s: leading it at %s (epoch %d; before: %s)",
            self.queue,
            url,
            epoch,
            previous or "nobody",
            extra={
                "event": "leader_acquired",
                "queue": self.queue,
                "url": url,
                "epoch": epoch,
                "previous": previous or "",
            },
        )

    def fenced(self, epoch: int | None, leader: str) -> None:
        self._standing_by = leader
        log.warning(
            "queue %s: fenced, another broker leads it now (%s); this one (epoch %s) stops "
            "committing and answers not_leader",
            self.queue,
            leader,
            epoch,
            extra={"event": "leader_fenced", "queue": self.queue, "epoch": epoch, "leader": leader},
        )

    def standing_by(self, leader: str) -> None:
        if leader == self._standing_by:
            return
        self._standing_by = leader
        log.info(
            "queue %s: standing by, %s leads it",
            self.queue,
            leader,
            extra={"event": "leader_standby", "queue": self.queue, "leader": leader},
        )

    def released(self, epoch: int | None) -> None:
        log.info(
            "queue %s: stopped leading it (epoch %s) and withdrew this broker's URL",
            self.queue,
            epoch,
            extra={"event": "leader_released", "queue": self.queue, "epoch": epoch},
        )
