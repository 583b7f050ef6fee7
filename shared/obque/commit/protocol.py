"""What a broker needs from the thing that commits a queue's operations.

Two implementations: ``QueueEngine`` (one writer per process, group commit in memory) and
``IntentEngine`` (one request per process, group commit through intent objects).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from obque.commit.engine import EngineStats
from obque.commit.leader import Leadership
from obque.commit.payloads import Payloads
from obque.core import Claim, ClaimResult, Op, QueueState, Result
from obque.store import Store

__all__ = ["Engine"]


class Engine(Protocol):
    name: str
    store: Store
    stats: EngineStats
    payloads: Payloads

    @property
    def leadership(self) -> Leadership | None: ...

    @property
    def state(self) -> QueueState | None: ...

    async def arun(self, op: Op) -> Result: ...

    async def aclaim(
        self,
        op: Claim,
        wait_seconds: float = 0.0,
        *,
        abandoned: Callable[[], Awaitable[bool]] | None = None,
    ) -> ClaimResult: ...

    def read_state(self) -> QueueState: ...

    def start(self) -> None: ...

    def close(self) -> None: ...
