"""Finding the broker: a queue file names it; a URL is it; a local file may need none.

``Target`` turns what a user passed to ``Client`` into an endpoint and can be asked to
look again after a failure (the broker moved, was fenced, or died): for a queue-file
target that means re-reading ``broker.url`` from the file.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

from obque.commit import QueueEngine
from obque.core import InvalidRequest, NotLeader, QueueNotFound, QueueState, decode_state
from obque.core.limits import check_queue_name
from obque.store import DEFAULT_QUEUE, Store, open_store, split_uri

__all__ = ["HttpEndpoint", "LocalEndpoint", "Target"]

#: Schemes whose queues a client may serve itself when no broker is advertised.
LOCAL_SCHEMES = ("file", "mem")


@dataclass(frozen=True)
class HttpEndpoint:
    url: str  # the broker's base URL, without a trailing slash
    queue: str

    def queue_url(self, path: str) -> str:
        return f"{self.url}/v1/queues/{self.queue}{path}"


@dataclass(frozen=True)
class LocalEndpoint:
    engine: QueueEngine


Endpoint = HttpEndpoint | LocalEndpoint


def _is_url(target: str) -> bool:
    return target.startswith(("http://", "https://"))


class Target:
    def __init__(self, target: str, queue: str | None = None, *, direct: bool = False) -> None:
        if not isinstance(target, str) or not target:
            raise InvalidRequest("Client needs a queue URI (s3://, gs://, file://) or broker URL")
        self.target = target
        self.direct = direct
        self.override = os.environ.get("OBQUE_URL") if not direct else None
        self.store: Store | None = None
        if _is_url(target):
            self.queue = check_queue_name(queue or DEFAULT_QUEUE)
        elif self.override:
            # OBQUE_URL names the broker; the queue is still the one the file names.
            self.queue = check_queue_name(queue or _queue_of(split_uri(target)[2]))
        else:
            self.store = open_store(target)
            self.queue = check_queue_name(queue or _queue_of(self.store.key))
        self._endpoint: Endpoint | None = None
        self._engine: QueueEngine | None = None
        self._lock = threading.Lock()

    def describe(self) -> str:
        return self.store.uri if self.store is not None else self.target

    def endpoint(self, refresh: bool = False) -> Endpoint:
        with self._lock:
            # A queue served in-process re-resolves too: its engine's guard raises
            # NotLeader once a broker is advertised, and then the broker must be used.
            if self._endpoint is None or refresh:
                self._endpoint = self._resolve()
            return self._endpoint

    def _resolve(self) -> Endpoint:
        if self.override:
            return HttpEndpoint(self.override.rstrip("/"), self.queue)
        if _is_url(self.target):
            return HttpEndpoint(self.target.rstrip("/"), self.queue)
        assert self.store is not None
        if self.direct:
            return self._local()
        snap = self.store.read()
        if snap is None:
            raise QueueNotFound(
                f"no queue at {self.store.uri}; create it with `obque init {self.store.uri}`"
            )
        state = decode_state(snap.data, self.store.uri)
        if state.broker is not None and state.broker.url:
            return HttpEndpoint(state.broker.url.rstrip("/"), self.queue)
        if urlsplit(self.target).scheme in LOCAL_SCHEMES:
            return self._local()
        raise InvalidRequest(
            f"{self.store.uri} advertises no broker: deploy one (cdk deploy), run "
            "`obque broker`, or pass direct=True to commit to the file from this process"
        )

    def _local(self) -> LocalEndpoint:
        assert self.store is not None
        if self._engine is None:
            guard = None if self.direct else _no_broker_advertised
            self._engine = QueueEngine(self.store, name=self.queue, guard=guard)
        return LocalEndpoint(self._engine)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()


def _queue_of(key: str) -> str:
    """The queue a store key names (``prefix/NAME.json``; a root names the default)."""
    if not key.endswith(".json"):
        return DEFAULT_QUEUE
    return key.rpartition("/")[2].removesuffix(".json")


def _no_broker_advertised(state: QueueState) -> None:
    """Served in-process only while no broker serves the queue; once one is advertised,
    the client's retry re-resolves and talks to it instead of racing it."""
    if state.broker is not None and state.broker.url:
        raise NotLeader(
            f"queue {state.name!r} is now served by {state.broker.url}",
            broker_url=state.broker.url,
        )
