"""``Worker``: run a handler over a queue's jobs with heartbeats, retries and clean drains.

    Worker(Client("s3://b/queue.json"), handle, concurrency=8).run()

Each job goes to ``handler(job)`` on one of ``concurrency`` threads (an ``async def``
handler runs in its own event loop there). Returning acks the job; raising nacks it with
the exception's text, so the queue retries it with backoff and dead-letters it after
``max_attempts``. Leases are heartbeated while handlers run.

On SIGTERM or SIGINT (or ``stop()``), the worker stops claiming, gives running handlers
``grace_seconds`` to finish, then releases the jobs still running (nack with delay 0) so
another worker can take them at once instead of waiting for their leases to lapse. Jobs
that a claim already in flight brings back after the stop are released the same way,
never started.

A claim failing for good (no such queue, refused credentials) drains the same way and
``run`` raises that error; transient trouble (after the client's own retries) is waited out.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import socket
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import Any

from obque.client.jobs import Job
from obque.client.retry import retryable
from obque.client.sync import Client
from obque.core import ObqueError

__all__ = ["Worker", "WorkerStats"]

#: How long one claim waits for a job; short enough to notice a stop request promptly.
CLAIM_WAIT_SECONDS = 5.0
#: The error text a released job carries.
RELEASED = "released: worker shutting down"


@dataclass
class WorkerStats:
    succeeded: int = 0
    failed: int = 0
    released: int = 0
    lost: int = 0


class Worker:
    def __init__(
        self,
        client: Client,
        handler: Callable[[Job], Any],
        *,
        concurrency: int = 1,
        worker_id: str | None = None,
        lease_seconds: float | None = None,
        grace_seconds: float = 30.0,
        max_jobs: int | None = None,
        on_done: Callable[[Job, BaseException | None], None] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.client = client
        self.handler = handler
        self.concurrency = concurrency
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.lease_seconds = lease_seconds
        self.grace_seconds = grace_seconds
        self.max_jobs = max_jobs
        self.on_done = on_done
        self.stats = WorkerStats()
        self._stop = threading.Event()
        self._is_async = inspect.iscoroutinefunction(handler)

    def stop(self) -> None:
        """Stop claiming and drain (safe to call from any thread or a signal handler)."""
        self._stop.set()

    def _install_signals(self) -> list[tuple[int, Any]]:
        if threading.current_thread() is not threading.main_thread():
            return []
        previous: list[tuple[int, Any]] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous.append((sig, signal.getsignal(sig)))
            signal.signal(sig, lambda *_: self.stop())
        return previous

    def run(self) -> WorkerStats:
        """Process jobs until stopped (or ``max_jobs`` were taken); returns the counts."""
        previous = self._install_signals()
        taken = 0
        running: dict[Future[None], Job] = {}
        failure: ObqueError | None = None
        try:
            while not self._stop.is_set():
                if self.max_jobs is not None and taken >= self.max_jobs:
                    break
                free = self.concurrency - len(running)
                if free <= 0:
                    done, _ = wait(list(running), timeout=1.0, return_when=FIRST_COMPLETED)
                    for future in done:
                        running.pop(future)
                    continue
                if self.max_jobs is not None:
                    free = min(free, self.max_jobs - taken)
                try:
                    jobs = self.client.claim(
                        self.worker_id,
                        min(free, 100),
                        lease_seconds=self.lease_seconds,
                        wait=CLAIM_WAIT_SECONDS,
                        heartbeat=True,
                    )
                except ObqueError as exc:
                    if not retryable(exc):
                        failure = exc  # no such queue, bad credentials: waiting cannot help
                        break
                    if self._stop.wait(1.0):
                        break
                    continue
                if self._stop.is_set():
                    # A long poll already in flight when the stop came answered with jobs:
                    # hand them back at once rather than start work the drain would cut.
                    self._release(jobs)
                    break
                for job in jobs:
                    running[self._start_handler(job)] = job
                taken += len(jobs)
                for future in [f for f in running if f.done()]:
                    running.pop(future)
            self._drain(running)
        finally:
            for sig, handler in previous:
                signal.signal(sig, handler)
        if failure is not None:
            raise failure
        return self.stats

    def _start_handler(self, job: Job) -> Future[None]:
        """Run the handler for ``job`` on a daemon thread of its own (at most
        ``concurrency`` run at once). Not a thread pool: a pool's threads are joined at
        interpreter exit, so a handler still running after the drain released its job
        would keep the process alive long past its grace."""
        future: Future[None] = Future()

        def run() -> None:
            try:
                self._handle(job)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(None)

        threading.Thread(target=run, name=f"obque-handler-{job.id}", daemon=True).start()
        return future

    def _drain(self, running: dict[Future[None], Job]) -> None:
        if running:
            wait(list(running), timeout=self.grace_seconds)
        self._release([job for future, job in running.items() if not future.done()])

    def _release(self, jobs: list[Job]) -> None:
        """Return unfinished jobs to the queue for another worker (nack, delay 0)."""
        for job in jobs:
            if job.settled is None:
                with contextlib.suppress(ObqueError):
                    if job.nack(delay=0, error=RELEASED):
                        job.settled = "released"
                        self.stats.released += 1

    def _handle(self, job: Job) -> None:
        error: BaseException | None = None
        try:
            if self._is_async:
                asyncio.run(self.handler(job))
            else:
                self.handler(job)
        except Exception as exc:
            error = exc
        try:
            if job.settled is None:
                if error is None:
                    job.ack()
                else:
                    job.nack(error=f"{type(error).__name__}: {error}")
        except ObqueError:
            pass  # the lease lapses and the job is delivered again
        if job.settled == "lost":
            self.stats.lost += 1
        elif error is None:
            self.stats.succeeded += 1
        else:
            self.stats.failed += 1
        if self.on_done is not None:
            self.on_done(job, error)
