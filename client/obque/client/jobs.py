"""Claimed jobs and the lease bookkeeping both clients share.

A ``Job`` (sync) or ``AsyncJob`` holds what a claim answered and settles through its
client. ``Leases`` is the pure part of heartbeating: which leases are held, when the
next heartbeat is due, and what an answer means for each job.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from obque.client.calls import ClaimedJob, ItemOutcome

if TYPE_CHECKING:
    from types import TracebackType

    from obque.client.aio import AsyncClient
    from obque.client.sync import Client

__all__ = ["AsyncJob", "Job", "JobBase", "Leases"]


class JobBase:
    """What a claim handed out: the job, its attempt number and the lease to settle it."""

    __slots__ = (
        "attempt",
        "id",
        "lease",
        "lease_expires_ms",
        "lease_seconds",
        "payload",
        "settled",
    )

    def __init__(self, claimed: ClaimedJob, lease_seconds: float) -> None:
        self.id = claimed.id
        self.payload: Any = claimed.payload
        self.attempt = claimed.attempt
        self.lease = claimed.lease
        self.lease_expires_ms = claimed.lease_expires_ms
        self.lease_seconds = lease_seconds
        #: None while held; then "acked", "nacked", "released" or "lost".
        self.settled: str | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} attempt {self.attempt} {self.settled or 'held'}>"

    def _outcome(self, outcome: ItemOutcome, verb: str) -> bool:
        self.settled = verb if outcome.ok else "lost"
        return outcome.ok


class Job(JobBase):
    """A job claimed through ``Client``; ``with job:`` acks on success, nacks on error."""

    __slots__ = ("_client",)

    def __init__(self, client: Client, claimed: ClaimedJob, lease_seconds: float) -> None:
        super().__init__(claimed, lease_seconds)
        self._client = client

    def ack(self) -> bool:
        """Done: remove the job. False if the lease was lost (it will be redelivered)."""
        return self._client._settle(self, "acked")

    def nack(
        self, delay: float | None = None, error: str | None = None, dead: bool = False
    ) -> bool:
        """Give the job back: retried after ``delay`` (default: backoff), or dead-lettered."""
        return self._client._settle(self, "nacked", delay=delay, error=error, dead=dead)

    def heartbeat(self, lease_seconds: float | None = None) -> bool:
        return self._client._extend([self], lease_seconds)

    def __enter__(self) -> Job:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.settled is None:
            if exc is None:
                self.ack()
            else:
                self.nack(error=f"{type(exc).__name__}: {exc}")


class AsyncJob(JobBase):
    """A job claimed through ``AsyncClient``; ``async with job:`` acks or nacks."""

    __slots__ = ("_client",)

    def __init__(self, client: AsyncClient, claimed: ClaimedJob, lease_seconds: float) -> None:
        super().__init__(claimed, lease_seconds)
        self._client = client

    async def ack(self) -> bool:
        return await self._client._settle(self, "acked")

    async def nack(
        self, delay: float | None = None, error: str | None = None, dead: bool = False
    ) -> bool:
        return await self._client._settle(self, "nacked", delay=delay, error=error, dead=dead)

    async def heartbeat(self, lease_seconds: float | None = None) -> bool:
        return await self._client._extend([self], lease_seconds)

    async def __aenter__(self) -> AsyncJob:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.settled is None:
            if exc is None:
                await self.ack()
            else:
                await self.nack(error=f"{type(exc).__name__}: {exc}")


@dataclass
class Leases:
    """Held leases, heartbeated together every ``lease / 3`` in one request."""

    held: dict[str, JobBase] = field(default_factory=dict)
    #: The lease length each job was claimed with (None: the queue's default), which its
    #: heartbeats renew; renewing for another length would shorten or stretch the lease.
    renew: dict[str, float | None] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def track(self, jobs: Iterable[JobBase], lease_seconds: float | None = None) -> None:
        with self.lock:
            for job in jobs:
                self.held[job.id] = job
                self.renew[job.id] = lease_seconds

    def untrack(self, job: JobBase) -> None:
        with self.lock:
            if self.held.get(job.id) is job:
                del self.held[job.id]
                self.renew.pop(job.id, None)

    def due(self, now_s: float) -> list[JobBase]:
        """Jobs whose lease is a third or more through its length."""
        with self.lock:
            return [
                job
                for job in self.held.values()
                if job.settled is None
                and job.lease_expires_ms / 1000 - now_s <= job.lease_seconds * 2 / 3
            ]

    def due_by_length(self, now_s: float) -> dict[float | None, list[JobBase]]:
        """``due`` grouped by the lease length to renew: one heartbeat request each."""
        due = self.due(now_s)
        groups: dict[float | None, list[JobBase]] = {}
        with self.lock:
            for job in due:
                groups.setdefault(self.renew.get(job.id), []).append(job)
        return groups

    def next_wait(self, now_s: float) -> float:
        """Seconds until the next heartbeat is due (capped, so new jobs are noticed)."""
        with self.lock:
            waits = [
                job.lease_expires_ms / 1000 - now_s - job.lease_seconds * 2 / 3
                for job in self.held.values()
                if job.settled is None
            ]
        return max(0.05, min([1.0, *waits]))

    @staticmethod
    def record(jobs: list[JobBase], outcomes: list[ItemOutcome]) -> None:
        by_id = {o.id: o for o in outcomes}
        for job in jobs:
            outcome = by_id.get(job.id)
            if outcome is None:
                continue
            if outcome.ok and outcome.lease_expires_ms is not None:
                job.lease_expires_ms = outcome.lease_expires_ms
            elif not outcome.ok and job.settled is None:
                job.settled = "lost"


def now_s() -> float:
    return time.time()
