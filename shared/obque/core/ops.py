"""Operations a commit applies (what each answers is in ``obque.core.results``).

Operations are validated when built (``Push.of``, ``Claim.of`` ...), so the engine API,
the HTTP layer and the intent protocol reject the same inputs with the same messages.
Limits that depend on the queue's own config (payload size, queue size) are checked by
``apply`` and answered per operation as ``OpError``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from obque.core import limits
from obque.core.errors import InvalidRequest
from obque.core.model import BrokerRecord, QueueConfig

# What operations answer lives in ``obque.core.results``; re-exported for the callers
# that import both from here.
from obque.core.results import (
    ClaimedJob,
    ClaimResult,
    ConfigResult,
    CountResult,
    IntentResult,
    ItemResult,
    ItemsResult,
    OpError,
    PushResult,
    Result,
)

__all__ = [
    "Ack",
    "Advertise",
    "Claim",
    "ClaimResult",
    "ClaimedJob",
    "ConfigResult",
    "Configure",
    "CountResult",
    "Heartbeat",
    "Intent",
    "IntentResult",
    "ItemResult",
    "ItemsResult",
    "LeaseRef",
    "Nack",
    "NackItem",
    "NewJob",
    "Op",
    "OpError",
    "Purge",
    "Push",
    "PushResult",
    "Redrive",
    "Result",
    "encode_payload",
]


def encode_payload(payload: Any) -> msgspec.Raw:
    """A Python value as the raw JSON a job stores."""
    try:
        return msgspec.Raw(msgspec.json.encode(payload))
    except (TypeError, OverflowError, ValueError) as exc:  # ValueError: an int of 4,301+ digits
        raise InvalidRequest(f"payload is not JSON-serialisable: {exc}") from exc


def _checked_raw(raw: msgspec.Raw) -> msgspec.Raw:
    """Raw JSON goes into the queue file verbatim: one bad byte would make the whole file
    unreadable, so it is parsed once here. Parsing it fully also refuses the valid JSON
    no worker could read back -- numbers beyond a double (``1e999``) or integers of more
    than 4,300 digits -- instead of letting it poison every claim that carries it."""
    try:
        msgspec.json.decode(raw)
        bytes(raw).decode("utf-8")  # msgspec accepts invalid UTF-8 inside strings
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise InvalidRequest(
            f"payload is not JSON a client can decode (numbers must fit a double): {exc}"
        ) from None
    return raw


def _shown(number: float) -> str:
    """A limit as people write it: 4194304, not 4.1943e+06."""
    return str(int(number)) if float(number).is_integer() else repr(number)


def _finite(value: object) -> float | None:
    """``value`` as a finite float, or None (bools, non-numbers, NaN, ±inf, and integers
    too large for a float -- JSON allows 10**400)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _seconds_to_ms(value: float | None, what: str, low: float, high: float) -> int | None:
    if value is None:
        return None
    number = _finite(value)
    if number is None or not low <= number <= high:
        raise InvalidRequest(
            f"{what} must be a number of seconds from {_shown(low)} to {_shown(high)}, "
            f"got {value!r:.40}"
        )
    return round(number * 1000)


def _text(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{what} must be a non-empty string")
    if len(value) > limit:
        raise InvalidRequest(f"{what} is longer than {limit} characters")
    return value


def _int(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(f"{what} must be an integer from {low} to {high}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class NewJob:
    payload: msgspec.Raw
    key: str | None = None
    delay_ms: int = 0
    max_attempts: int | None = None
    #: Set once the payload was written to its own object (``payload`` is then ``null``).
    spilled: str | None = None
    #: The spilled payload's size in bytes (limits apply to the payload, not the stub).
    spilled_bytes: int = 0

    @property
    def size(self) -> int:
        return self.spilled_bytes if self.spilled is not None else len(self.payload)

    @property
    def inline_bytes(self) -> int:
        """What the job will add to the queue file (see ``state.job_inline_bytes``)."""
        return len(self.payload) + (len(self.spilled) if self.spilled is not None else 0)

    @classmethod
    def of(
        cls,
        payload: Any,
        key: str | None = None,
        delay_seconds: float | None = None,
        max_attempts: int | None = None,
    ) -> NewJob:
        raw = _checked_raw(payload) if isinstance(payload, msgspec.Raw) else encode_payload(payload)
        return cls(
            payload=raw,
            key=None if key is None else _text(key, "key", limits.MAX_KEY_CHARS),
            delay_ms=_seconds_to_ms(delay_seconds, "delay_seconds", 0, limits.MAX_DELAY_SECONDS)
            or 0,
            max_attempts=None
            if max_attempts is None
            else _int(max_attempts, "max_attempts", 1, limits.MAX_ATTEMPTS_LIMIT),
        )


@dataclass(frozen=True, slots=True)
class Push:
    jobs: tuple[NewJob, ...]

    @classmethod
    def of(cls, jobs: Iterable[NewJob]) -> Push:
        batch = tuple(jobs)
        if not 1 <= len(batch) <= limits.MAX_PUSH_BATCH:
            raise InvalidRequest(
                f"a push carries 1 to {limits.MAX_PUSH_BATCH} jobs, got {len(batch)}"
            )
        return cls(batch)


@dataclass(frozen=True, slots=True)
class Claim:
    worker: str
    max: int = 1
    lease_ms: int | None = None

    @classmethod
    def of(cls, worker: str, max: int = 1, lease_seconds: float | None = None) -> Claim:
        return cls(
            worker=_text(worker, "worker", limits.MAX_WORKER_CHARS),
            max=_int(max, "max", 1, limits.MAX_CLAIM),
            lease_ms=_seconds_to_ms(
                lease_seconds, "lease_seconds", limits.MIN_LEASE_SECONDS, limits.MAX_LEASE_SECONDS
            ),
        )


@dataclass(frozen=True, slots=True)
class LeaseRef:
    id: str
    lease: str

    @classmethod
    def of(cls, id: str, lease: str) -> LeaseRef:
        return cls(
            _text(id, "id", limits.MAX_ID_CHARS), _text(lease, "lease", limits.MAX_LEASE_CHARS)
        )


def _leases(refs: Iterable[LeaseRef], what: str) -> tuple[LeaseRef, ...]:
    batch = tuple(refs)
    if not 1 <= len(batch) <= limits.MAX_PUSH_BATCH:
        raise InvalidRequest(f"{what} names 1 to {limits.MAX_PUSH_BATCH} leases, got {len(batch)}")
    return batch


@dataclass(frozen=True, slots=True)
class Heartbeat:
    leases: tuple[LeaseRef, ...]
    lease_ms: int | None = None

    @classmethod
    def of(cls, leases: Iterable[LeaseRef], lease_seconds: float | None = None) -> Heartbeat:
        return cls(
            _leases(leases, "heartbeat"),
            _seconds_to_ms(
                lease_seconds, "lease_seconds", limits.MIN_LEASE_SECONDS, limits.MAX_LEASE_SECONDS
            ),
        )


@dataclass(frozen=True, slots=True)
class Ack:
    leases: tuple[LeaseRef, ...]

    @classmethod
    def of(cls, leases: Iterable[LeaseRef]) -> Ack:
        return cls(_leases(leases, "ack"))


@dataclass(frozen=True, slots=True)
class NackItem:
    id: str
    lease: str
    delay_ms: int | None = None
    error: str | None = None
    dead: bool = False

    @classmethod
    def of(
        cls,
        id: str,
        lease: str,
        delay_seconds: float | None = None,
        error: str | None = None,
        dead: bool = False,
    ) -> NackItem:
        ref = LeaseRef.of(id, lease)
        if error is not None and not isinstance(error, str):
            raise InvalidRequest("error must be a string")
        return cls(
            ref.id,
            ref.lease,
            _seconds_to_ms(delay_seconds, "delay_seconds", 0, limits.MAX_DELAY_SECONDS),
            None if error is None else error[: limits.MAX_ERROR_CHARS],
            bool(dead),
        )


@dataclass(frozen=True, slots=True)
class Nack:
    items: tuple[NackItem, ...]

    @classmethod
    def of(cls, items: Iterable[NackItem]) -> Nack:
        batch = tuple(items)
        if not 1 <= len(batch) <= limits.MAX_PUSH_BATCH:
            raise InvalidRequest(
                f"nack names 1 to {limits.MAX_PUSH_BATCH} leases, got {len(batch)}"
            )
        return cls(batch)


@dataclass(frozen=True, slots=True)
class Redrive:
    """Move dead letters (all, or those named) back to the tail, attempts reset."""

    ids: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Purge:
    """Delete dead letters (all, or those named)."""

    ids: tuple[str, ...] | None = None


_CONFIG_RANGES: dict[str, tuple[type, float, float]] = {
    "lease_seconds": (int, limits.MIN_LEASE_SECONDS, limits.MAX_LEASE_SECONDS),
    "max_attempts": (int, 1, limits.MAX_ATTEMPTS_LIMIT),
    "retry_delay_seconds": (float, 0, limits.MAX_DELAY_SECONDS),
    "retry_delay_max_seconds": (float, 0, limits.MAX_DELAY_SECONDS),
    "dead_retention": (int, 0, limits.MAX_DEAD_RETENTION),
    "max_payload_bytes": (int, 1, limits.MAX_PAYLOAD_BYTES_LIMIT),
    "dedup_seconds": (int, 0, limits.MAX_DEDUP_SECONDS),
    "max_jobs": (int, 1, limits.MAX_JOBS_LIMIT),
    "spill_payload_bytes": (int, limits.MIN_SPILL_PAYLOAD_BYTES, limits.MAX_PAYLOAD_BYTES_LIMIT),
    "max_inline_bytes": (int, limits.MIN_INLINE_BYTES, limits.MAX_INLINE_BYTES_LIMIT),
}


@dataclass(frozen=True, slots=True)
class Configure:
    """Change some of the queue's settings; unnamed ones keep their values."""

    changes: tuple[tuple[str, int | float], ...]

    @classmethod
    def of(cls, changes: Mapping[str, object]) -> Configure:
        checked: list[tuple[str, int | float]] = []
        for name, value in changes.items():
            if name not in _CONFIG_RANGES:
                raise InvalidRequest(
                    f"unknown queue setting {name!r}; settings: {', '.join(_CONFIG_RANGES)}"
                )
            kind, low, high = _CONFIG_RANGES[name]
            number = _finite(value)
            ok = number is not None and low <= number <= high
            if ok and kind is int:
                ok = float(number).is_integer()  # type: ignore[arg-type]
            if not ok or number is None:
                raise InvalidRequest(
                    f"{name} must be {'an integer' if kind is int else 'a number'} "
                    f"from {_shown(low)} to {_shown(high)}, got {value!r:.40}"
                )
            checked.append((name, int(number) if kind is int else number))
        return cls(tuple(checked))

    def applied_to(self, config: QueueConfig) -> QueueConfig:
        return msgspec.structs.replace(config, **dict(self.changes))


@dataclass(frozen=True, slots=True)
class Advertise:
    """Set the queue's broker record (deployments and broker leadership)."""

    broker: BrokerRecord


@dataclass(frozen=True, slots=True)
class Intent:
    """Operations an invocation left as an intent object (SPEC §5), applied together.

    Applying an intent records its results in ``applied`` under ``i:ID``; an intent
    already recorded there is skipped, so folding one twice changes nothing. A commit
    later than ``expires_ms`` skips it too: its caller has given up waiting, so its
    operations must never take effect."""

    id: str
    ops: tuple[Push | Claim | Heartbeat | Ack | Nack | Redrive | Purge | Configure, ...]
    expires_ms: int | None = None


Op = Push | Claim | Heartbeat | Ack | Nack | Redrive | Purge | Configure | Advertise | Intent
