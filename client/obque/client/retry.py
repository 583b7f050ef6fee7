"""When and how long to wait before trying a request again (pure policy).

Retried: transport failures (connection refused or reset, timeouts), ``503 not_leader``,
``503 store_unavailable`` and other 5xx/429 answers that are not the queue's own
``queue_full``. Pushes are safe to retry because every push carries a key; a retried
*claim* may leave a job claimed by a request nobody saw answered -- that job is delivered
again when its lease lapses (at-least-once).

The budget is time, not a count: a call is tried until ``total_seconds`` (30 s by
default) have passed since it started, so it outlasts a broker crash. A standby takes
over once the dead broker's last heartbeat is more than ``--broker-timeout`` (10 s) old.
That heartbeat was already up to a third of the timeout old when the broker died (a
leader writes one every ``timeout / 3``), which brings the takeover *sooner*, and the
standby looks only every ``timeout / 3``, which can delay it by that much: 2/3 to 4/3 of
the timeout after the death, 7-13 s by default. Waits
grow exponentially from ``base_seconds`` up to ``cap_seconds`` with *equal jitter* (a
random wait between half the ceiling and the ceiling: clients spread out, yet never
hammer a failing broker with near-zero waits); a ``Retry-After`` is a floor.

When the queue file is re-read to find the broker again (one read of the file)::

    connection refused / reset / timed out      every time (the broker may have died)
    503 not_leader                              every time (the broker was fenced)
    5xx without obque's JSON error body         every time (a proxy or gateway answered:
                                                the broker behind it may be gone)
    503 store_unavailable (obque's JSON body)   from the 2nd consecutive one on: a live
                                                broker said it, so it has not moved, but
                                                if the store trouble lasts, a takeover
                                                may have happened meanwhile
    anything else                               never (the broker is there and answered)

The whole budget is kept well inside the time a client retry key keeps deduplicating
(``RETRY_KEY_SECONDS`` after its job left the queue): a push retried until the budget's
last moment is still recognised as the same push. ``MAX_RETRY_SECONDS`` is half that
window; the other half absorbs a broker's own processing time and clock skew between the
brokers of a failover.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from obque.core import InvalidRequest, NotLeader, ObqueError, StoreUnavailable
from obque.core.limits import RETRY_KEY_SECONDS

__all__ = [
    "MAX_RETRY_SECONDS",
    "Attempts",
    "BrokerUnreachable",
    "GatewayError",
    "RetryPolicy",
    "needs_new_broker",
    "retryable",
]

#: The longest retry budget a policy may have (see the module docstring).
MAX_RETRY_SECONDS = RETRY_KEY_SECONDS / 2
#: An attempt is not started with less time than this left in the budget.
MIN_ATTEMPT_SECONDS = 1.0
#: Consecutive ``store_unavailable`` answers after which the queue file is re-read.
UNAVAILABLE_BEFORE_REREAD = 2


class BrokerUnreachable(StoreUnavailable):
    """The broker could not be reached (connection refused, reset, or timed out)."""


class GatewayError(StoreUnavailable):
    """A 5xx answer without obque's error body: a proxy or gateway answered, and the
    broker behind it may have moved."""


@dataclass(frozen=True)
class RetryPolicy:
    """How long a client keeps trying one call.

    ``total_seconds`` is the budget of the whole call, first attempt included (a long
    poll's own wait is added to it); at most ``MAX_RETRY_SECONDS``. ``attempts``
    optionally caps the number of tries as well (``None``: as many as fit)."""

    attempts: int | None = None
    base_seconds: float = 0.05
    cap_seconds: float = 2.0
    total_seconds: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.total_seconds <= MAX_RETRY_SECONDS:
            raise InvalidRequest(
                f"RetryPolicy total_seconds must be above 0 and at most {MAX_RETRY_SECONDS:g} "
                f"(half the {RETRY_KEY_SECONDS} s a retried push stays deduplicated), "
                f"got {self.total_seconds!r}"
            )
        if self.attempts is not None and self.attempts < 1:
            raise InvalidRequest(f"RetryPolicy attempts must be at least 1, got {self.attempts}")
        if not 0 < self.base_seconds <= self.cap_seconds:
            raise InvalidRequest(
                "RetryPolicy needs 0 < base_seconds <= cap_seconds, "
                f"got {self.base_seconds!r} and {self.cap_seconds!r}"
            )

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Capped exponential backoff with equal jitter (attempt counts from 0)."""
        ceiling = min(self.cap_seconds, self.base_seconds * 2 ** min(attempt, 60))
        wait = random.uniform(ceiling / 2, ceiling)
        return max(wait, retry_after or 0.0)


def retryable(exc: BaseException) -> bool:
    return isinstance(exc, StoreUnavailable | NotLeader)


def needs_new_broker(exc: ObqueError) -> bool:
    """Errors after which the queue file may name a different broker at once."""
    return isinstance(exc, NotLeader | BrokerUnreachable | GatewayError)


class Attempts:
    """The retry loop's bookkeeping, shared by the sync and async clients:

    attempts = Attempts(policy, call.wait_seconds)
    while True:
        try: return send(endpoint(attempts.refresh), timeout=attempts.timeout(wanted))
        except ObqueError as exc: sleep(attempts.failed(exc))   # re-raises when done
    """

    def __init__(
        self,
        policy: RetryPolicy,
        wait_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.count = 0
        self.refresh = False
        self.unavailable = 0  # consecutive store_unavailable answers
        self._clock = clock
        #: The time an attempt needs at the least: a long poll is held its whole wait.
        self._least = wait_seconds + MIN_ATTEMPT_SECONDS
        self.deadline = clock() + policy.total_seconds + wait_seconds

    def timeout(self, wanted: float) -> float:
        """How long the next attempt may take: what the call wants, within the budget."""
        return max(self._least, min(wanted, self.deadline - self._clock()))

    def failed(self, exc: ObqueError) -> float:
        """The wait before the next attempt, or ``exc`` raised when none is left."""
        if not retryable(exc):
            raise exc
        if self.policy.attempts is not None and self.count + 1 >= self.policy.attempts:
            raise exc
        room = self.deadline - self._clock() - self._least
        if room <= 0:
            raise exc
        moved = needs_new_broker(exc)
        if type(exc) is StoreUnavailable:
            self.unavailable += 1
        else:
            self.unavailable = 0
        self.refresh = moved or self.unavailable >= UNAVAILABLE_BEFORE_REREAD
        delay = self.policy.delay(self.count, getattr(exc, "retry_after", None))
        self.count += 1
        return min(delay, room)
