"""The queues one broker serves: an engine per queue file under the root, made on demand."""

from __future__ import annotations

import asyncio
import threading

from obque.broker.settings import BrokerSettings
from obque.commit import Leadership, QueueEngine, create_queue
from obque.core import Configure, InvalidRequest, QueueNotFound, QueueState
from obque.core.limits import check_queue_name
from obque.store import Root, open_root

__all__ = ["QueueRegistry"]


class QueueRegistry:
    def __init__(self, settings: BrokerSettings, root: Root | None = None) -> None:
        self.settings = settings
        self.root = root or open_root(settings.root)
        self._engines: dict[str, QueueEngine] = {}
        self._lock = threading.Lock()

    def _engine(self, name: str) -> QueueEngine:
        with self._lock:
            engine = self._engines.get(name)
            if engine is None:
                leadership = None
                if self.settings.mode == "process" and self.settings.advertise:
                    leadership = Leadership(
                        self.settings.advertise,
                        timeout_s=self.settings.broker_timeout,
                        take_serverless=self.settings.take_serverless,
                    )
                engine = QueueEngine(self.root.queue(name), leadership=leadership, name=name)
                self._engines[name] = engine
                engine.start()
            return engine

    def known(self) -> dict[str, QueueEngine]:
        with self._lock:
            return dict(self._engines)

    async def get(self, name: str) -> QueueEngine:
        """The engine of an existing queue (``QueueNotFound`` otherwise)."""
        check_queue_name(name)
        engine = self._engines.get(name)
        if engine is not None:
            return engine
        store = self.root.queue(name)
        if await asyncio.to_thread(store.read) is None:
            raise QueueNotFound(f"queue {name!r} does not exist at {store.uri}; create it first")
        return self._engine(name)

    async def create(self, name: str, config: dict[str, object]) -> tuple[bool, QueueState]:
        """Create the queue (``True``) or apply ``config`` to the existing one (``False``)."""
        check_queue_name(name)
        configure = Configure.of(config)  # validate before touching the store
        engine = self._engines.get(name)
        if engine is not None:
            if configure.changes:
                await engine.arun(configure)
            return False, engine.read_state()
        created, state = await asyncio.to_thread(create_queue, self.root.queue(name), name, config)
        self._engine(name)
        return created, state

    async def names(self) -> list[str]:
        return sorted(await asyncio.to_thread(self.root.queue_names))

    def adopt_existing(self) -> None:
        """Start an engine for every queue already in the root (advertising this broker)."""
        for name in self.root.queue_names():
            try:
                check_queue_name(name)
            except InvalidRequest:
                continue  # a stray file that is not a queue name
            self._engine(name)

    def close(self) -> None:
        for engine in self.known().values():
            engine.close()
