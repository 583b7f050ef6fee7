"""Every client operation as data: what to send, and how to read the answer.

A ``Call`` describes one operation twice -- as an HTTP request to a broker and as an
engine operation for a queue served in-process -- and knows how to turn either answer
into the value the caller gets. ``Client`` and ``AsyncClient`` only *execute* calls, so
the sync and async surfaces cannot drift apart.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec

from obque.client.retry import GatewayError
from obque.core import (
    Ack,
    Claim,
    ClaimResult,
    ConfigResult,
    Configure,
    CountResult,
    Heartbeat,
    InvalidRequest,
    ItemsResult,
    LeaseRef,
    Nack,
    NackItem,
    NewJob,
    NotLeader,
    ObqueError,
    Op,
    OpError,
    PayloadTooLarge,
    Purge,
    Push,
    PushResult,
    QueueFileCorrupt,
    QueueFull,
    QueueNotFound,
    QueueState,
    Redrive,
    Result,
    StoreForbidden,
    StoreUnavailable,
    Unauthorized,
)
from obque.core.limits import RETRY_KEY_PREFIX
from obque.core.summary import Fetch, list_jobs, stats_summary

__all__ = [
    "Call",
    "ClaimedJob",
    "ItemOutcome",
    "PushItem",
    "ack_call",
    "claim_call",
    "configure_call",
    "error_from_body",
    "heartbeat_call",
    "jobs_call",
    "nack_call",
    "purge_call",
    "push_call",
    "redrive_call",
    "retry_key",
    "stats_call",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    #: Path below ``/v1/queues/{name}`` ("" for the queue itself).
    path: str
    body: Any | None
    from_http: Callable[[Any], T]
    #: The engine operation, or None for reads answered from the queue state.
    op: Op | None = None
    from_result: Callable[[Result], T] | None = None
    #: Reads answered from the state; spilled payloads are read with the ``Fetch``.
    from_state: Callable[[QueueState, Fetch], T] | None = None
    #: Long-poll time, so transports allow for it in their read timeout.
    wait_seconds: float = 0.0
    query: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ClaimedJob:
    id: str
    payload: Any
    attempt: int
    lease: str
    lease_expires_ms: int


@dataclass(frozen=True)
class ItemOutcome:
    id: str
    ok: bool
    error: str | None = None
    lease_expires_ms: int | None = None


@dataclass(frozen=True)
class PushItem:
    payload: Any
    key: str | None = None
    delay_seconds: float | None = None
    max_attempts: int | None = None


def retry_key() -> str:
    """A key that makes a push safe to retry (kept briefly by the queue: see limits)."""
    return RETRY_KEY_PREFIX + secrets.token_urlsafe(12)


def _op_error(result: Result) -> None:
    if isinstance(result, OpError):
        raise result.exception()


# -- push --------------------------------------------------------------------------------


def push_call(items: Iterable[PushItem]) -> Call[list[str]]:
    batch = [
        i
        if i.key is not None
        else PushItem(i.payload, retry_key(), i.delay_seconds, i.max_attempts)
        for i in items
    ]
    # Validate (and encode payloads) once, before anything is sent.
    op = Push.of(NewJob.of(i.payload, i.key, i.delay_seconds, i.max_attempts) for i in batch)
    body = {
        "jobs": [
            {
                "payload": new.payload,
                **({"key": new.key} if new.key is not None else {}),
                **({"delay_seconds": i.delay_seconds} if i.delay_seconds is not None else {}),
                **({"max_attempts": i.max_attempts} if i.max_attempts is not None else {}),
            }
            for i, new in zip(batch, op.jobs, strict=True)
        ]
    }

    def from_result(result: Result) -> list[str]:
        _op_error(result)
        assert isinstance(result, PushResult)
        return list(result.ids)

    return Call("POST", "/push", body, lambda data: list(data["ids"]), op, from_result)


# -- claim and settle ---------------------------------------------------------------------


def claim_call(
    worker: str, max: int = 1, lease_seconds: float | None = None, wait_seconds: float = 0.0
) -> Call[list[ClaimedJob]]:
    op = Claim.of(worker, max, lease_seconds)
    if not 0 <= wait_seconds <= 20:
        raise InvalidRequest(f"wait_seconds must be between 0 and 20, got {wait_seconds!r}")
    body: dict[str, Any] = {"worker": worker, "max": max, "wait_seconds": wait_seconds}
    if lease_seconds is not None:
        body["lease_seconds"] = lease_seconds

    def from_http(data: Any) -> list[ClaimedJob]:
        return [
            ClaimedJob(j["id"], j["payload"], j["attempt"], j["lease"], j["lease_expires_ms"])
            for j in data["jobs"]
        ]

    def from_result(result: Result) -> list[ClaimedJob]:
        assert isinstance(result, ClaimResult)
        return [
            ClaimedJob(j.id, msgspec.json.decode(j.payload), j.attempt, j.lease, j.lease_expires_ms)
            for j in result.jobs
        ]

    return Call("POST", "/claim", body, from_http, op, from_result, wait_seconds=wait_seconds)


def _items_from_http(data: Any) -> list[ItemOutcome]:
    return [
        ItemOutcome(r["id"], r["ok"], r.get("error"), r.get("lease_expires_ms"))
        for r in data["results"]
    ]


def _items_from_result(result: Result) -> list[ItemOutcome]:
    assert isinstance(result, ItemsResult)
    return [ItemOutcome(r.id, r.ok, r.error, r.lease_expires_ms) for r in result.results]


def _refs(leases: Iterable[tuple[str, str]]) -> list[LeaseRef]:
    return [LeaseRef.of(job_id, lease) for job_id, lease in leases]


def heartbeat_call(
    leases: Iterable[tuple[str, str]], lease_seconds: float | None = None
) -> Call[list[ItemOutcome]]:
    refs = _refs(leases)
    op = Heartbeat.of(refs, lease_seconds)
    body: dict[str, Any] = {"leases": [{"id": r.id, "lease": r.lease} for r in refs]}
    if lease_seconds is not None:
        body["lease_seconds"] = lease_seconds
    return Call("POST", "/heartbeat", body, _items_from_http, op, _items_from_result)


def ack_call(leases: Iterable[tuple[str, str]]) -> Call[list[ItemOutcome]]:
    refs = _refs(leases)
    body = {"leases": [{"id": r.id, "lease": r.lease} for r in refs]}
    return Call("POST", "/ack", body, _items_from_http, Ack.of(refs), _items_from_result)


def nack_call(items: Iterable[NackItem]) -> Call[list[ItemOutcome]]:
    op = Nack.of(items)
    body = {
        "leases": [
            {
                "id": i.id,
                "lease": i.lease,
                **({"delay_seconds": i.delay_ms / 1000} if i.delay_ms is not None else {}),
                **({"error": i.error} if i.error is not None else {}),
                **({"dead": True} if i.dead else {}),
            }
            for i in op.items
        ]
    }
    return Call("POST", "/nack", body, _items_from_http, op, _items_from_result)


# -- inspection and administration ------------------------------------------------------


def stats_call(now_ms: Callable[[], int]) -> Call[dict[str, Any]]:
    def from_state(state: QueueState, fetch: Fetch) -> dict[str, Any]:
        return stats_summary(state, now_ms())

    return Call("GET", "/stats", None, dict, from_state=from_state)


def jobs_call(state: str, limit: int, now_ms: Callable[[], int]) -> Call[list[dict[str, Any]]]:
    if state not in ("ready", "delayed", "claimed", "dead"):
        raise InvalidRequest(f"state must be ready, delayed, claimed or dead, got {state!r}")

    def from_state(current: QueueState, fetch: Fetch) -> list[dict[str, Any]]:
        jobs = list_jobs(current, state, limit, now_ms(), fetch)
        return [{**job, "payload": msgspec.json.decode(job["payload"])} for job in jobs]

    return Call(
        "GET",
        "/jobs",
        None,
        lambda data: list(data["jobs"]),
        from_state=from_state,
        query={"state": state, "limit": str(limit)},
    )


def _count(result: Result) -> int:
    assert isinstance(result, CountResult)
    return result.count


def redrive_call(ids: Iterable[str] | None = None) -> Call[int]:
    chosen = None if ids is None else tuple(ids)
    body = {} if chosen is None else {"ids": list(chosen)}
    return Call(
        "POST", "/dead/redrive", body, lambda d: int(d["redriven"]), Redrive(chosen), _count
    )


def purge_call(ids: Iterable[str] | None = None) -> Call[int]:
    chosen = None if ids is None else tuple(ids)
    body = {} if chosen is None else {"ids": list(chosen)}
    return Call("POST", "/dead/purge", body, lambda d: int(d["purged"]), Purge(chosen), _count)


def configure_call(changes: Mapping[str, object]) -> Call[dict[str, Any]]:
    op = Configure.of(changes)

    def from_result(result: Result) -> dict[str, Any]:
        assert isinstance(result, ConfigResult)
        return msgspec.structs.asdict(result.config)

    # The validated values: ``lease_seconds=60.0`` is sent as the integer the broker expects.
    return Call("PUT", "", dict(op.changes), lambda d: dict(d["config"]), op, from_result)


# -- errors ------------------------------------------------------------------------------

_ERRORS: dict[str, type[ObqueError]] = {
    "invalid_request": InvalidRequest,
    "unauthorized": Unauthorized,
    "queue_not_found": QueueNotFound,
    "payload_too_large": PayloadTooLarge,
    "queue_full": QueueFull,
    "queue_file_corrupt": QueueFileCorrupt,
    "store_forbidden": StoreForbidden,
    "store_unavailable": StoreUnavailable,
}


def error_from_body(status: int, body: bytes, url: str) -> ObqueError:
    """The exception an error answer stands for (a broker's JSON error, or a proxy's)."""
    try:
        data = msgspec.json.decode(body)
        code, message = data["error"]["code"], data["error"]["message"]
    except (msgspec.DecodeError, KeyError, TypeError):
        text = body[:200].decode("utf-8", "replace").strip()
        if status in (401, 403):
            return Unauthorized(f"{url} refused the credentials ({status}): {text}")
        if status >= 500:
            # Not the broker's own answer: re-read the queue file before retrying.
            return GatewayError(f"{url} answered {status}: {text}")
        if status == 429:
            return StoreUnavailable(f"{url} answered {status}: {text}")
        return InvalidRequest(f"{url} answered {status}: {text}")
    if code == "not_leader":
        return NotLeader(message, broker_url=data.get("broker"))
    return _ERRORS.get(code, ObqueError)(message)
