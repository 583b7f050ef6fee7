"""The HTTP API's request and response bodies (SPEC §7), as msgspec structs.

Bodies are decoded and encoded with msgspec rather than pydantic: a job's payload stays
raw JSON from the request to the queue file and back, and the push path does no per-field
Python work. The same structs generate the OpenAPI schemas (``schema_components``), so the
published schema is exactly what the decoder enforces. Unknown fields are refused, so a
misspelt option is an error rather than silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any

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
Attempts = Annotated[int, _M(ge=1, le=limits.MAX_ATTEMPTS_LIMIT)]


def _batch(item: Any) -> Any:
    return Annotated[list[item], _M(min_length=1, max_length=limits.MAX_PUSH_BATCH)]


class _In(msgspec.Struct, forbid_unknown_fields=True):
    pass


class _Out(msgspec.Struct, omit_defaults=True):
    pass


class JobIn(_In):
    payload: msgspec.Raw
    key: Key | None = None
    delay_seconds: DelaySeconds | None = None
    max_attempts: Attempts | None = None


class PushIn(_In):
    jobs: _batch(JobIn)  # type: ignore[valid-type]


class ClaimIn(_In):
    worker: Worker
    max: Annotated[int, _M(ge=1, le=limits.MAX_CLAIM)] = 1
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


class ConfigIn(_In):
    # The ranges ``Configure`` enforces, published in the schema and checked on decode.
    lease_seconds: (
        Annotated[int, _M(ge=limits.MIN_LEASE_SECONDS, le=limits.MAX_LEASE_SECONDS)] | None
    ) = None
    max_attempts: Attempts | None = None
    retry_delay_seconds: DelaySeconds | None = None
    retry_delay_max_seconds: DelaySeconds | None = None
    dead_retention: Annotated[int, _M(ge=0, le=limits.MAX_DEAD_RETENTION)] | None = None
    max_payload_bytes: Annotated[int, _M(ge=1, le=limits.MAX_PAYLOAD_BYTES_LIMIT)] | None = None
    dedup_seconds: Annotated[int, _M(ge=0, le=limits.MAX_DEDUP_SECONDS)] | None = None
    max_jobs: Annotated[int, _M(ge=1, le=limits.MAX_JOBS_LIMIT)] | None = None
    spill_payload_bytes: (
        Annotated[int, _M(ge=limits.MIN_SPILL_PAYLOAD_BYTES, le=limits.MAX_PAYLOAD_BYTES_LIMIT)]
        | None
    ) = None

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
