"""The HTTP API's request and response bodies (SPEC §7), as msgspec structs.

Bodies are decoded and encoded with msgspec rather than pydantic: a job's payload stays
raw JSON from the request to the queue file and back, and the push path does no per-field
Python work. The same structs generate the OpenAPI schemas (``schema_components``), so the
published schema is exactly what the decoder enforces. Unknown fields are refused, so a
misspelt option is an error rather than silently ignored.

Integer fields accept what JSON Schema calls an integer: ``3``, and also ``3.0`` or
``3e0``, which many JSON encoders write for a whole number (JavaScript, SQS and Cloud
Tasks clients). msgspec's ``int`` wants the literal ``3``, so such a field is declared
as raw JSON carrying the published integer schema, and ``_WholeNumbers.__post_init__``
turns it into an ``int`` while decoding (``3.5``, ``"3"``, ``true`` and out-of-range
values are refused naming the field). Type checkers see the ``int`` it ends up as.
"""

from __future__ import annotations

import functools
import typing
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from obque.core import limits

__all__ = [
    "REQUEST_TYPES",
    "RESPONSE_TYPES",
    "AckIn",
    "ClaimIn",
    "ClaimOut",
    "ClaimedOut",
    "ConfigIn",
    "ErrorBody",
    "ErrorOut",
    "HeartbeatIn",
    "IdsIn",
    "ItemOut",
    "JobIn",
    "JobView",
    "JobsOut",
    "LeaseIn",
    "NackIn",
    "NackLeaseIn",
    "PurgeOut",
    "PushIn",
    "PushOut",
    "QueueOut",
    "QueueRef",
    "QueuesOut",
    "RedriveOut",
    "ResultsOut",
    "StatsOut",
]


_M = msgspec.Meta
Name = Annotated[str, _M(min_length=1, max_length=limits.MAX_ID_CHARS)]
Lease = Annotated[str, _M(min_length=1, max_length=limits.MAX_LEASE_CHARS)]
Key = Annotated[str, _M(min_length=1, max_length=limits.MAX_KEY_CHARS)]
Worker = Annotated[str, _M(min_length=1, max_length=limits.MAX_WORKER_CHARS)]
LeaseSeconds = Annotated[float, _M(ge=limits.MIN_LEASE_SECONDS, le=limits.MAX_LEASE_SECONDS)]
DelaySeconds = Annotated[float, _M(ge=0, le=limits.MAX_DELAY_SECONDS)]

if TYPE_CHECKING:
    _Whole = int
    _WholeOrNone = int | None
else:  # raw JSON on the wire, an int once decoded (see the module docstring)
    _Whole = _WholeOrNone = msgspec.Raw


def _integer(low: int, high: int, *, null: bool = True) -> msgspec.Meta:
    """The published schema of a whole-number field of ``low..high``."""
    schema: dict[str, Any] = {"type": "integer", "minimum": low, "maximum": high}
    return _M(extra_json_schema={"anyOf": [schema, {"type": "null"}]} if null else schema)


Attempts = Annotated[_WholeOrNone, _integer(1, limits.MAX_ATTEMPTS_LIMIT)]


def _batch(item: Any) -> Any:
    return Annotated[list[item], _M(min_length=1, max_length=limits.MAX_PUSH_BATCH)]


class _In(msgspec.Struct, forbid_unknown_fields=True):
    pass


@functools.cache
def _whole_fields(cls: type) -> tuple[tuple[str, int, int, bool], ...]:
    """``(field, low, high, nullable)`` of each whole-number field, read from its schema."""
    found = []
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        if typing.get_origin(hint) is not Annotated or typing.get_args(hint)[0] is not msgspec.Raw:
            continue
        schema = typing.get_args(hint)[1].extra_json_schema
        nullable = "anyOf" in schema
        bounds = schema["anyOf"][0] if nullable else schema
        found.append((name, bounds["minimum"], bounds["maximum"], nullable))
    return tuple(found)


class _WholeNumbers(_In):
    def __post_init__(self) -> None:
        for name, low, high, nullable in _whole_fields(type(self)):
            raw = getattr(self, name)
            if isinstance(raw, msgspec.Raw):  # sent (otherwise the field holds its default)
                setattr(self, name, _whole_number(raw, name, low, high, nullable))


def _whole_number(raw: msgspec.Raw, name: str, low: int, high: int, nullable: bool) -> int | None:
    try:
        value = msgspec.json.decode(raw)
    except (msgspec.DecodeError, ValueError):  # 1e400; an int of 4,301+ digits
        value = raw
    if value is None and nullable:
        return None
    whole = isinstance(value, int | float) and not isinstance(value, bool)
    if whole and isinstance(value, float):
        whole = value.is_integer()
    if not whole or not low <= value <= high:
        shown = bytes(raw).decode("utf-8", "replace")
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {shown:.40}")
    return int(value)


class _Out(msgspec.Struct, omit_defaults=True):
    pass


class JobIn(_WholeNumbers):
    payload: msgspec.Raw
    key: Key | None = None
    delay_seconds: DelaySeconds | None = None
    max_attempts: Attempts = None


class PushIn(_In):
    jobs: _batch(JobIn)  # type: ignore[valid-type]


class ClaimIn(_WholeNumbers):
    worker: Worker
    max: Annotated[_Whole, _integer(1, limits.MAX_CLAIM, null=False)] = 1
    lease_seconds: LeaseSeconds | None = None
    wait_seconds: Annotated[float, _M(ge=0, le=limits.MAX_WAIT_SECONDS)] = 0.0


class LeaseIn(_In):
    id: Name
    lease: Lease


class HeartbeatIn(_In):
    leases: _batch(LeaseIn)  # type: ignore[valid-type]
    lease_seconds: LeaseSeconds | None = None


class AckIn(_In):
    leases: _batch(LeaseIn)  # type: ignore[valid-type]


class NackLeaseIn(_In):
    id: Name
    lease: Lease
    delay_seconds: DelaySeconds | None = None
    error: str | None = None
    dead: bool = False


class NackIn(_In):
    leases: _batch(NackLeaseIn)  # type: ignore[valid-type]


class IdsIn(_In):
    ids: Annotated[list[Name], _M(max_length=100_000)] | None = None


class ConfigIn(_WholeNumbers):
    # The ranges ``Configure`` enforces, published in the schema and checked on decode.
    lease_seconds: Annotated[
        _WholeOrNone, _integer(limits.MIN_LEASE_SECONDS, limits.MAX_LEASE_SECONDS)
    ] = None
    max_attempts: Attempts = None
    retry_delay_seconds: DelaySeconds | None = None
    retry_delay_max_seconds: DelaySeconds | None = None
    dead_retention: Annotated[_WholeOrNone, _integer(0, limits.MAX_DEAD_RETENTION)] = None
    max_payload_bytes: Annotated[_WholeOrNone, _integer(1, limits.MAX_PAYLOAD_BYTES_LIMIT)] = None
    dedup_seconds: Annotated[_WholeOrNone, _integer(0, limits.MAX_DEDUP_SECONDS)] = None
    max_jobs: Annotated[_WholeOrNone, _integer(1, limits.MAX_JOBS_LIMIT)] = None
    spill_payload_bytes: Annotated[
        _WholeOrNone,
        _integer(limits.MIN_SPILL_PAYLOAD_BYTES, limits.MAX_PAYLOAD_BYTES_LIMIT),
    ] = None
    max_inline_bytes: Annotated[
        _WholeOrNone, _integer(limits.MIN_INLINE_BYTES, limits.MAX_INLINE_BYTES_LIMIT)
    ] = None

    def changes(self) -> dict[str, object]:
        return {f: v for f in self.__struct_fields__ if (v := getattr(self, f)) is not None}


class PushOut(_Out):
    ids: list[str]
    duplicates: list[str]
    revision: int


class ClaimedOut(_Out):
    id: str
    payload: msgspec.Raw
    attempt: int
    lease: str
    lease_expires_ms: int


class ClaimOut(_Out):
    jobs: list[ClaimedOut]


class ItemOut(_Out):
    id: str
    ok: bool
    error: str | None = None
    lease_expires_ms: int | None = None


class ResultsOut(_Out):
    results: list[ItemOut]


class QueueOut(msgspec.Struct, frozen=True):
    name: str
    config: dict[str, Any]
    revision: int


class QueueRef(msgspec.Struct, frozen=True):
    name: str
    uri: str


class QueuesOut(msgspec.Struct, frozen=True):
    queues: list[QueueRef]


class StatsOut(msgspec.Struct, frozen=True):
    name: str
    revision: int
    ready: int
    delayed: int
    claimed: int
    dead: int
    pushed: int
    acked: int
    nacked: int
    expired: int
    commits: int
    oldest_ready_age_seconds: float | None
    broker: dict[str, Any] | None


class JobView(msgspec.Struct, frozen=True, omit_defaults=True):
    """A job as listed; the lease token is never shown (it is the worker's secret)."""

    id: str
    state: str
    payload: msgspec.Raw
    attempts: int
    enqueued_ms: int
    ready_ms: int
    key: str | None = None
    worker: str | None = None
    lease_expires_ms: int | None = None
    last_error: str | None = None


class JobsOut(msgspec.Struct, frozen=True):
    jobs: list[JobView]


class RedriveOut(msgspec.Struct, frozen=True):
    redriven: int


class PurgeOut(msgspec.Struct, frozen=True):
    purged: int


class ErrorBody(msgspec.Struct, frozen=True):
    code: str
    message: str


class ErrorOut(msgspec.Struct, frozen=True, omit_defaults=True):
    error: ErrorBody
    broker: str | None = None


REQUEST_TYPES: tuple[type[msgspec.Struct], ...] = (
    PushIn,
    ClaimIn,
    HeartbeatIn,
    AckIn,
    NackIn,
    IdsIn,
    ConfigIn,
)
RESPONSE_TYPES: tuple[type[msgspec.Struct], ...] = (
    PushOut,
    ClaimOut,
    ResultsOut,
    QueueOut,
    QueuesOut,
    StatsOut,
    JobsOut,
    RedriveOut,
    PurgeOut,
    ErrorOut,
)

#: A request body larger than this is refused with 413 before it is parsed: a full push
#: batch of small jobs fits many times over, and bigger payloads belong in the bucket.
MAX_BODY_BYTES = 16 * 1024 * 1024
