"""When and how long to wait before trying a request again (pure policy).

Retried: transport failures (connection refused or reset, timeouts), ``503 not_leader``
(after re-reading the queue file for the new broker), ``503 store_unavailable`` and other
5xx/429 answers that are not the queue's own ``queue_full``. Pushes are safe to retry
because every push carries a key; a retried *claim* may leave a job claimed by a request
nobody saw answered -- that job is delivered again when its lease lapses (at-least-once).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from obque.core import NotLeader, ObqueError, StoreUnavailable

__all__ = ["Attempts", "BrokerUnreachable", "RetryPolicy", "needs_new_broker", "retryable"]


class BrokerUnreachable(StoreUnavailable):
    """The broker could not be reached (connection refused, reset, or timed out)."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8
    base_seconds: float = 0.05
    cap_seconds: float = 5.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Capped exponential backoff with full jitter (attempt counts from 0)."""
        ceiling = min(self.cap_seconds, self.base_seconds * 2**attempt)
        wait = random.uniform(ceiling / 2, ceiling)
        return max(wait, retry_after or 0.0)


def retryable(exc: BaseException) -> bool:
    return isinstance(exc, StoreUnavailable | NotLeader)


def needs_new_broker(exc: ObqueError) -> bool:
    """Errors after which the queue file may name a different broker."""
    return isinstance(exc, NotLeader | BrokerUnreachable)


class Attempts:
    """The retry loop's bookkeeping, shared by the sync and async clients:

    attempts = Attempts(policy)
    while True:
        try: return send(endpoint(attempts.refresh))
        except ObqueError as exc: sleep(attempts.failed(exc))   # re-raises when done
    """

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.count = 0
        self.refresh = False

    def failed(self, exc: ObqueError) -> float:
        if not retryable(exc) or self.count + 1 >= self.policy.attempts:
            raise exc
        self.refresh = needs_new_broker(exc)
        delay = self.policy.delay(self.count, getattr(exc, "retry_after", None))
        self.count += 1
        return delay
