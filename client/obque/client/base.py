"""What ``Client`` and ``AsyncClient`` share: where the queue is and how to sign for it.

What each method sends is built in ``calls`` (pure), so the twins differ only in how they
execute a call: blocking, or awaited."""

from __future__ import annotations

import time
from typing import Any

from obque.client.auth import Auth, auth_for
from obque.client.resolve import Target
from obque.client.retry import RetryPolicy

__all__ = ["ClientBase", "max_lease", "now_ms"]


def max_lease(expires_ms: int, now_s: float) -> float:
    """The lease length a claim granted, estimated from its expiry."""
    return max(1.0, expires_ms / 1000 - now_s)


def now_ms() -> int:
    return int(time.time() * 1000)


class ClientBase:
    def __init__(
        self,
        target: str,
        queue: str | None = None,
        *,
        token: str | None = None,
        direct: bool = False,
        retry: RetryPolicy | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        self._target = Target(target, queue, direct=direct)
        self._token = token
        self._auth: tuple[str, Auth] | None = None
        self._retry = retry or RetryPolicy()
        self._connect_timeout = connect_timeout
        self._http: Any = None
        self._setup()

    def _setup(self) -> None:
        """Each twin's own state: its heartbeat thread or task, its closing signal."""

    @property
    def queue(self) -> str:
        return self._target.queue

    def _auth_for(self, url: str) -> Auth:
        if self._auth is None or self._auth[0] != url:
            self._auth = (url, auth_for(url, self._token))
        return self._auth[1]
