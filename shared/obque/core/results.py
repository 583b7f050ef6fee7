"""What each operation answers: one result per operation of a commit.

``OpError`` is an operation refused as a whole (a limit of the queue's config); the rest
of its batch still applies. The types are re-exported by ``obque.core.ops`` and
``obque.core``.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from obque.core.errors import InvalidRequest, ObqueError, PayloadTooLarge, QueueFull
from obque.core.model import QueueConfig

__all__ = [
    "ClaimResult",
    "ClaimedJob",
    "ConfigResult",
    "CountResult",
    "IntentResult",
    "ItemResult",
    "ItemsResult",
    "OpError",
    "PushResult",
    "Result",
]


@dataclass(frozen=True, slots=True)
class PushResult:
    ids: tuple[str, ...]
    duplicates: tuple[str, ...]
    #: The revision of the commit that holds the push.
    revision: int = 0


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    id: str
    payload: msgspec.Raw
    attempt: int
    lease: str
    lease_expires_ms: int
    #: The payload's own object, until the engine has fetched it into ``payload``.
    spilled: str | None = None


@dataclass(frozen=True, slots=True)
class ClaimResult:
    jobs: tuple[ClaimedJob, ...]


@dataclass(frozen=True, slots=True)
class ItemResult:
    id: str
    ok: bool
    error: str | None = None  # "lease_lost" or "not_found"
    lease_expires_ms: int | None = None


@dataclass(frozen=True, slots=True)
class ItemsResult:
    results: tuple[ItemResult, ...]


@dataclass(frozen=True, slots=True)
class CountResult:
    count: int


@dataclass(frozen=True, slots=True)
class ConfigResult:
    config: QueueConfig


@dataclass(frozen=True, slots=True)
class IntentResult:
    results: tuple[
        PushResult | ClaimResult | ItemsResult | CountResult | ConfigResult | OpError, ...
    ]
    #: False when the intent had been applied before (its results are in ``applied``).
    fresh: bool = True


@dataclass(frozen=True, slots=True)
class OpError:
    """An operation refused as a whole (the rest of its batch still applies)."""

    code: str
    message: str

    def exception(self) -> ObqueError:
        """The error a caller of this one operation meets."""
        kind: type[ObqueError] = {
            "queue_full": QueueFull,
            "payload_too_large": PayloadTooLarge,
        }.get(self.code, InvalidRequest)
        return kind(self.message)


Result = (
    PushResult | ClaimResult | ItemsResult | CountResult | ConfigResult | OpError | IntentResult
)
