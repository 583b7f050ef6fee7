"""The claim cursor of one commit: ready jobs in FIFO order, in one pass.

Jobs are kept in insertion order, which is FIFO order. A commit's claims walk that
order with a single cursor, so 1,000 claims in a batch cost one pass over the jobs, not
one each. A job that becomes ready again *behind* the cursor (a nack with no delay)
goes on a small heap keyed by its old place, so claims still see it before newer jobs.
"""

from __future__ import annotations

import heapq

from obque.core.model import Job

__all__ = ["ReadyCursor"]


class ReadyCursor:
    """Over ``jobs`` (the commit's working dict, changed in place) at ``now_ms``."""

    def __init__(self, jobs: dict[str, Job], now_ms: int) -> None:
        self._jobs = jobs
        self._now = now_ms
        # Built on the first claim of the commit: most commits claim nothing.
        self._order: list[str] | None = None
        self._pos = 0
        self._index: dict[str, int] | None = None
        self._behind: list[tuple[int, str]] = []

    def appended(self, job_id: str) -> None:
        """A job was added at the end of the FIFO."""
        if self._order is not None:
            if self._index is not None:
                self._index[job_id] = len(self._order)
            self._order.append(job_id)

    def next_ready(self) -> Job | None:
        """The earliest ready job in FIFO order, or None."""
        if self._order is None:
            self._order = list(self._jobs)
        order = self._order
        while self._pos < len(order) and self._is_ready(order[self._pos]) is None:
            self._pos += 1
        while self._behind and self._is_ready(self._behind[0][1]) is None:
            heapq.heappop(self._behind)
        if self._behind and (self._pos >= len(order) or self._behind[0][0] < self._pos):
            return self._jobs[heapq.heappop(self._behind)[1]]
        if self._pos < len(order):
            self._pos += 1
            return self._jobs[order[self._pos - 1]]
        return None

    def became_ready(self, job_id: str) -> None:
        """A job at its old FIFO place is ready again: claims must see it before newer ones."""
        if self._order is None:
            return
        if self._index is None:
            self._index = {jid: i for i, jid in enumerate(self._order)}
        index = self._index[job_id]
        if index < self._pos:
            heapq.heappush(self._behind, (index, job_id))

    def _is_ready(self, job_id: str) -> Job | None:
        job = self._jobs.get(job_id)
        if job is None or job.claim is not None or job.ready_ms > self._now:
            return None
        return job
