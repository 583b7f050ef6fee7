"""The queues one broker serves: an engine per queue file under the root, made on demand."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from obque.broker.settings import BrokerSettings
from obque.commit import Engine, Leadership, QueueEngine, create_queue
from obque.core import Configure, InvalidRequest, QueueNotFound, QueueState, StoreUnavailable
from obque.core.limits import check_queue_name
from obque.store import Root, Store, open_root

__all__ = ["QueueRegistry"]


EngineFactory = Callable[[Store, str], Engine]


class QueueRegistry:
    """``engine_factory`` makes the engine of each queue; by default a group-commit
    ``QueueEngine``, leading the queue when the broker runs as a process."""

    def __init__(
        self,
        settings: BrokerSettings,
        root: Root | None = None,
        *,
        engine_factory: EngineFactory | None = None,
    ) -> None:
        self.settings = settings
        self.root = root or open_root(settings.root)
        self.engine_factory = engine_factory or self._group_commit_engine
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()

    def _group_commit_engine(self, store: Store, name: str) -> Engine:
        leadership = None
        if self.settings.mode == "process" and self.settings.advertise:
            leadership = Leadership(
                self.settings.advertise,
                timeout_s=self.settings.broker_timeout,
                take_serverless=self.settings.take_serverless,
            )
        return QueueEngine(store, leadership=leadership, name=name)

    def _engine(self, name: str) -> Engine:
        with self._lock:
            engine = self._engines.get(name)
            if engine is None:
                engine = self.engine_factory(self.root.queue(name), name)
                self._engines[name] = engine
                engine.start()
            return engine

    def known(self) -> dict[str, Engine]:
        with self._lock:
            return dict(self._engines)

    def _served(self, name: str) -> str | None:
        """Why ``name`` is outside the queues this broker was given (None: it is inside)."""
        served = self.settings.queues
        if served is None or name in served:
            return None
        return (
            f"queue {name!r} is not one this deployment serves ({', '.join(served)}): its "
            "role may not touch other objects; add it to the deployment's queues and redeploy"
        )

    async def get(self, name: str) -> Engine:
        """The engine of an existing queue (``QueueNotFound`` otherwise)."""
        check_queue_name(name)
        engine = self._engines.get(name)
        if engine is not None:
            return engine
        if outside := self._served(name):
            raise QueueNotFound(outside)
        store = self.root.queue(name)
        if await asyncio.to_thread(store.read) is None:
            raise QueueNotFound(f"queue {name!r} does not exist at {store.uri}; create it first")
        return self._engine(name)

    async def create(self, name: str, config: dict[str, object]) -> tuple[bool, QueueState]:
        """Create the queue (``True``) or apply ``config`` to the existing one (``False``)."""
        check_queue_name(name)
        configure = Configure.of(config)  # validate before touching the store
        if outside := self._served(name):
            raise InvalidRequest(outside)
        engine = self._engines.get(name)
        if engine is not None and await asyncio.to_thread(engine.store.read) is None:
            self._forget(name, engine)  # its file was deleted: start afresh
            engine = None
        if engine is None:
            created, state = await asyncio.to_thread(
                create_queue, self.root.queue(name), name, config, update=False
            )
            engine = self._engine(name)
            if created:
                return True, state
        # Settings of an existing queue change through its engine, so only the queue's
        # leader writes them (anyone else answers not_leader).
        if configure.changes:
            await engine.arun(configure)
        return False, await asyncio.to_thread(engine.read_state)

    def _forget(self, name: str, engine: Engine) -> None:
        with self._lock:
            if self._engines.get(name) is engine:
                del self._engines[name]
        engine.close()

    async def names(self) -> list[str]:
        if self.settings.queues is not None:
            # A deployment's role may not list the bucket root: its queues are configured.
            return sorted(self.settings.queues)
        return sorted(await asyncio.to_thread(self.root.queue_names))

    def adopt_existing(self) -> None:
        """Start an engine for every queue already in the root (advertising this broker)."""
        for name in self.root.queue_names():
            try:
                check_queue_name(name)
            except InvalidRequest:
                continue  # a stray file that is not a queue name
            self._engine(name)

    def sweep_payloads(self) -> int:
        """Delete orphaned spilled payloads (pushes that never committed) of the queues
        this broker leads: only a leader's state is known to be current."""
        swept = 0
        for name, engine in self.known().items():
            lead, state = engine.leadership, engine.state
            if lead is None or not lead.is_leader or state is None:
                continue
            try:
                swept += engine.payloads.sweep(state)
            except StoreUnavailable as exc:  # transient: the next sweep tries again
                logging.getLogger("obque.broker").warning("sweeping %s failed: %s", name, exc)
        return swept

    def close(self) -> None:
        for engine in self.known().values():
            engine.close()
