"""``Client``: the blocking client (the async twin is ``obque.client.aio``)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

from obque.client import calls
from obque.client.base import ClientBase, max_lease, now_ms
from obque.client.calls import Call, PushItem
from obque.client.jobs import Job, JobBase, Leases
from obque.client.local import run_local
from obque.client.resolve import HttpEndpoint, LocalEndpoint
from obque.client.retry import Attempts, BrokerUnreachable
from obque.client.wire import build_request, read_answer, read_timeout
from obque.core import NackItem, ObqueError

__all__ = ["Client"]

T = TypeVar("T")


class Client(ClientBase):
    """A queue, by its file (``s3://b/queue.json``, ``gs://…``, ``file://…``) or its
    broker URL (``https://…``, with ``queue`` naming the queue).

        q = Client("s3://my-bucket/queue.json")
        q.push({"video": "a.mp4"}, key="upload-a")
        for job in q.jobs(worker="w1"):
            with job:
                handle(job.payload)
    """

    def _setup(self) -> None:
        self._http_lock = threading.Lock()
        self._leases = Leases()
        self._beats: threading.Thread | None = None
        self._closed = threading.Event()

    # -- executing calls --------------------------------------------------------------

    def _execute(self, call: Call[T]) -> T:
        attempts = Attempts(self._retry, call.wait_seconds)
        while True:
            try:
                endpoint = self._target.endpoint(attempts.refresh)
                if isinstance(endpoint, LocalEndpoint):
                    return run_local(endpoint.engine, call)
                return self._send(endpoint, call, attempts.timeout(read_timeout(call)))
            except ObqueError as exc:
                time.sleep(attempts.failed(exc))

    def _send(self, endpoint: HttpEndpoint, call: Call[T], timeout: float) -> T:
        import httpx

        with self._http_lock:  # threads share a client; only one may make its pool
            if self._http is None:
                default = httpx.Timeout(30.0, connect=self._connect_timeout)
                self._http = httpx.Client(timeout=default)
        request = build_request(endpoint, call, self._auth_for(endpoint.url))
        try:
            response = self._http.request(
                request.method,
                request.url,
                content=request.body,
                headers=request.headers,
                timeout=httpx.Timeout(timeout, connect=min(timeout, self._connect_timeout)),
            )
        except httpx.TransportError as exc:
            raise BrokerUnreachable(f"broker {endpoint.url} unreachable: {exc!r}") from exc
        return read_answer(call, response.status_code, response.content, request.url)

    # -- producing --------------------------------------------------------------------

    def push(
        self,
        payload: Any,
        *,
        key: str | None = None,
        delay: float | None = None,
        max_attempts: int | None = None,
    ) -> str:
        """Enqueue one job and return its id (the existing id if ``key`` is live)."""
        return self._execute(calls.push_call([PushItem(payload, key, delay, max_attempts)]))[0]

    def push_many(self, items: Iterable[Any | PushItem]) -> list[str]:
        """Enqueue up to 1000 jobs in one commit (payloads, or ``PushItem`` for options)."""
        batch = [i if isinstance(i, PushItem) else PushItem(i) for i in items]
        return self._execute(calls.push_call(batch))

    # -- consuming --------------------------------------------------------------------

    def claim(
        self,
        worker: str,
        max: int = 1,
        *,
        lease_seconds: float | None = None,
        wait: float = 0.0,
        heartbeat: bool = False,
    ) -> list[Job]:
        """Claim up to ``max`` ready jobs, waiting up to ``wait`` seconds for one.

        With ``heartbeat=True`` leases are extended in the background until each job is
        settled; otherwise a job not settled within its lease is delivered again."""
        claimed = self._execute(calls.claim_call(worker, max, lease_seconds, wait))
        now = time.time()
        jobs = [Job(self, c, lease_seconds or max_lease(c.lease_expires_ms, now)) for c in claimed]
        if heartbeat and jobs:
            self._leases.track(jobs, lease_seconds)
            self._start_heartbeats()
        return jobs

    def jobs(
        self, worker: str, *, batch: int = 1, lease_seconds: float | None = None, wait: float = 20
    ) -> Iterator[Job]:
        """Claim jobs forever (long polls), heartbeating each until it is settled."""
        while not self._closed.is_set():
            for job in self.claim(
                worker, batch, lease_seconds=lease_seconds, wait=wait, heartbeat=True
            ):
                try:
                    yield job
                finally:
                    self._leases.untrack(job)

    def _settle(
        self,
        job: JobBase,
        verb: str,
        delay: float | None = None,
        error: str | None = None,
        dead: bool = False,
    ) -> bool:
        self._leases.untrack(job)
        if verb == "acked":
            outcomes = self._execute(calls.ack_call([(job.id, job.lease)]))
        else:
            item = NackItem.of(job.id, job.lease, delay, error, dead)
            outcomes = self._execute(calls.nack_call([item]))
        return job._outcome(outcomes[0], verb)

    def _extend(self, jobs: list[JobBase], lease_seconds: float | None = None) -> bool:
        if not jobs:
            return True
        call = calls.heartbeat_call([(j.id, j.lease) for j in jobs], lease_seconds)
        outcomes = self._execute(call)
        Leases.record(jobs, outcomes)
        return all(o.ok for o in outcomes)

    def _start_heartbeats(self) -> None:
        if self._beats is None or not self._beats.is_alive():
            self._beats = threading.Thread(
                target=self._heartbeat_loop, name="obque-heartbeats", daemon=True
            )
            self._beats.start()

    def _heartbeat_loop(self) -> None:
        while not self._closed.wait(self._leases.next_wait(time.time())):
            for lease_seconds, due in self._leases.due_by_length(time.time()).items():
                # On failure the next round tries again; a lease that lapses is redelivered.
                with contextlib.suppress(ObqueError):
                    self._extend(due, lease_seconds)

    # -- inspecting and administering ---------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return self._execute(calls.stats_call(now_ms))

    def list_jobs(self, state: str = "ready", limit: int = 100) -> list[dict[str, Any]]:
        return self._execute(calls.jobs_call(state, limit, now_ms))

    def dead(self, limit: int = 100) -> list[dict[str, Any]]:
        return self.list_jobs("dead", limit)

    def redrive(self, ids: Iterable[str] | None = None) -> int:
        return self._execute(calls.redrive_call(ids))

    def purge(self, ids: Iterable[str] | None = None) -> int:
        return self._execute(calls.purge_call(ids))

    def configure(self, **changes: object) -> dict[str, Any]:
        return self._execute(calls.configure_call(changes))

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        self._closed.set()
        if self._http is not None:
            self._http.close()
        self._target.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
