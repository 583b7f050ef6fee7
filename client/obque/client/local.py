"""Running a ``Call`` on an in-process engine (queues served without a broker)."""

from __future__ import annotations

import asyncio
from typing import TypeVar

from obque.client.calls import Call
from obque.commit import QueueEngine
from obque.core import Claim, QueueNotFound, QueueState, decode_state

__all__ = ["arun_local", "run_local"]

T = TypeVar("T")


def current_state(engine: QueueEngine) -> QueueState:
    """The queue as stored now. An in-process engine is one writer among many (other
    processes and clients commit to the same file), so what it last committed may be
    stale: reads go to the store."""
    snap = engine.store.read()
    if snap is None:
        raise QueueNotFound(f"no queue at {engine.store.uri}; create it first")
    return decode_state(snap.data, engine.store.uri)


def run_local(engine: QueueEngine, call: Call[T]) -> T:
    if call.op is None:
        assert call.from_state is not None
        return call.from_state(current_state(engine), engine.payloads.fetch)
    assert call.from_result is not None
    if isinstance(call.op, Claim):
        return call.from_result(engine.claim(call.op, call.wait_seconds))
    return call.from_result(engine.run(call.op))


async def arun_local(engine: QueueEngine, call: Call[T]) -> T:
    if call.op is None:
        assert call.from_state is not None
        from_state = call.from_state
        return await asyncio.to_thread(
            lambda: from_state(current_state(engine), engine.payloads.fetch)
        )
    assert call.from_result is not None
    if isinstance(call.op, Claim):
        return call.from_result(await engine.aclaim(call.op, call.wait_seconds))
    return call.from_result(await engine.arun(call.op))
