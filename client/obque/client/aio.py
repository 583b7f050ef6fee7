"""``AsyncClient``: the asyncio twin of ``Client``, with the same surface awaited."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import Any, TypeVar

from obque.client import calls
from obque.client.base import ClientBase, max_lease, now_ms
from obque.client.calls import Call, PushItem
from obque.client.jobs import AsyncJob, JobBase, Leases
from obque.client.local import arun_local
from obque.client.resolve import HttpEndpoint, LocalEndpoint
from obque.client.retry import Attempts, BrokerUnreachable
from obque.client.wire import build_request, read_answer, read_timeout
from obque.core import NackItem, ObqueError

__all__ = ["AsyncClient"]

T = TypeVar("T")


class AsyncClient(ClientBase):
    """``Client`` for event loops; resolution reads of the queue file run in a thread."""

    def _setup(self) -> None:
        self._leases = Leases()
        self._beats: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()

    async def _execute(self, call: Call[T]) -> T:
        attempts = Attempts(self._retry, call.wait_seconds)
        while True:
            try:
                endpoint = await asyncio.to_thread(self._target.endpoint, attempts.refresh)
                if isinstance(endpoint, LocalEndpoint):
                    return await arun_local(endpoint.engine, call)
                return await self._send(endpoint, call, attempts.timeout(read_timeout(call)))
            except ObqueError as exc:
                await asyncio.sleep(attempts.failed(exc))

    async def _send(self, endpoint: HttpEndpoint, call: Call[T], timeout: float) -> T:
        import httpx

        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(30.0, connect=self._connect_timeout)
            )
        request = build_request(endpoint, call, self._auth_for(endpoint.url))
        try:
            response = await self._http.request(
                request.method,
                request.url,
                content=request.body,
                headers=request.headers,
                timeout=httpx.Timeout(timeout, connect=min(timeout, self._connect_timeout)),
            )
        except httpx.TransportError as exc:
            raise BrokerUnreachable(f"broker {endpoint.url} unreachable: {exc!r}") from exc
        return read_answer(call, response.status_code, response.content, request.url)

    async def push(
        self,
        payload: Any,
        *,
        key: str | None = None,
        delay: float | None = None,
        max_attempts: int | None = None,
    ) -> str:
        call = calls.push_call([PushItem(payload, key, delay, max_attempts)])
        return (await self._execute(call))[0]

    async def push_many(self, items: Iterable[Any | PushItem]) -> list[str]:
        batch = [i if isinstance(i, PushItem) else PushItem(i) for i in items]
        return await self._execute(calls.push_call(batch))

    async def claim(
        self,
        worker: str,
        max: int = 1,
        *,
        lease_seconds: float | None = None,
        wait: float = 0.0,
        heartbeat: bool = False,
    ) -> list[AsyncJob]:
        claimed = await self._execute(calls.claim_call(worker, max, lease_seconds, wait))
        now = time.time()
        jobs = [
            AsyncJob(self, c, lease_seconds or max_lease(c.lease_expires_ms, now)) for c in claimed
        ]
        if heartbeat and jobs:
            self._leases.track(jobs, lease_seconds)
            if self._beats is None or self._beats.done():
                self._beats = asyncio.create_task(self._heartbeat_loop())
        return jobs

    async def jobs(
        self, worker: str, *, batch: int = 1, lease_seconds: float | None = None, wait: float = 20
    ) -> AsyncIterator[AsyncJob]:
        while not self._closed.is_set():
            for job in await self.claim(
                worker, batch, lease_seconds=lease_seconds, wait=wait, heartbeat=True
            ):
                try:
                    yield job
                finally:
                    self._leases.untrack(job)

    async def _settle(
        self,
        job: JobBase,
        verb: str,
        delay: float | None = None,
        error: str | None = None,
        dead: bool = False,
    ) -> bool:
        self._leases.untrack(job)
        if verb == "acked":
            outcomes = await self._execute(calls.ack_call([(job.id, job.lease)]))
        else:
            item = NackItem.of(job.id, job.lease, delay, error, dead)
            outcomes = await self._execute(calls.nack_call([item]))
        return job._outcome(outcomes[0], verb)

    async def _extend(self, jobs: list[JobBase], lease_seconds: float | None = None) -> bool:
        if not jobs:
            return True
        call = calls.heartbeat_call([(j.id, j.lease) for j in jobs], lease_seconds)
        outcomes = await self._execute(call)
        Leases.record(jobs, outcomes)
        return all(o.ok for o in outcomes)

    async def _heartbeat_loop(self) -> None:
        while not self._closed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._closed.wait(), timeout=self._leases.next_wait(time.time())
                )
            for lease_seconds, due in self._leases.due_by_length(time.time()).items():
                if not self._closed.is_set():
                    with contextlib.suppress(ObqueError):
                        await self._extend(due, lease_seconds)

    async def stats(self) -> dict[str, Any]:
        return await self._execute(calls.stats_call(now_ms))

    async def list_jobs(self, state: str = "ready", limit: int = 100) -> list[dict[str, Any]]:
        return await self._execute(calls.jobs_call(state, limit, now_ms))

    async def dead(self, limit: int = 100) -> list[dict[str, Any]]:
        return await self.list_jobs("dead", limit)

    async def redrive(self, ids: Iterable[str] | None = None) -> int:
        return await self._execute(calls.redrive_call(ids))

    async def purge(self, ids: Iterable[str] | None = None) -> int:
        return await self._execute(calls.purge_call(ids))

    async def configure(self, **changes: object) -> dict[str, Any]:
        return await self._execute(calls.configure_call(changes))

    async def aclose(self) -> None:
        self._closed.set()
        if self._beats is not None:
            await self._beats
        if self._http is not None:
            await self._http.aclose()
        await asyncio.to_thread(self._target.close)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
