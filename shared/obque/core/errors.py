"""Every error obque raises, under one root.

    ObqueError
    ├── InvalidRequest            bad input from a caller: a limit, a name, a field (400)
    │   ├── PayloadTooLarge       a payload or body over its named limit (413)
    │   └── InvalidStoreURI       a store URI none of the adapters accepts
    ├── QueueNotFound             no queue file at that name (404)
    ├── QueueFull                 the queue holds its configured maximum of jobs, or
    │                             of inline payload bytes (429)
    ├── QueueFileCorrupt          the queue file does not parse or has a foreign format;
    │                             it is never overwritten (500)
    ├── Unauthorized              no valid credentials for the broker (401)
    ├── NotLeader                 this broker was fenced by a newer epoch (503)
    ├── MissingDependency         an adapter's SDK is not installed; names the extra
    └── StoreError                the object store said no
        ├── StoreForbidden        the store refused these credentials for the object;
        │                         retrying cannot help (500)
        ├── Conflict              a compare-and-set lost: the object changed (or exists)
        └── StoreUnavailable      transport trouble; retry later (503)
            └── AmbiguousWrite    a write was sent but its answer was lost

Each class's docstring is its default message, so ``raise QueueFull()`` still says
something useful; callers pass a message naming the object and the limit.
"""

from __future__ import annotations

__all__ = [
    "AmbiguousWrite",
    "Conflict",
    "InvalidRequest",
    "InvalidStoreURI",
    "MissingDependency",
    "NotLeader",
    "ObqueError",
    "PayloadTooLarge",
    "QueueFileCorrupt",
    "QueueFull",
    "QueueNotFound",
    "StoreError",
    "StoreForbidden",
    "StoreUnavailable",
    "Unauthorized",
]


class ObqueError(Exception):
    """An obque operation failed."""

    #: The stable, machine-readable code used in HTTP error bodies.
    code: str = "error"

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (type(self).__doc__ or type(self).__name__).strip()
        super().__init__(self.message)


class InvalidRequest(ObqueError):
    """The request is not valid."""

    code = "invalid_request"


class PayloadTooLarge(InvalidRequest):
    """The payload is larger than the queue accepts."""

    code = "payload_too_large"


class InvalidStoreURI(InvalidRequest):
    """The store URI is not one obque understands."""


class QueueNotFound(ObqueError):
    """The queue does not exist; create it first (`obque init` or PUT /v1/queues/NAME)."""

    code = "queue_not_found"


class QueueFull(ObqueError):
    """The queue holds its configured maximum of jobs or of inline payload bytes;
    consume some first."""

    code = "queue_full"


class QueueFileCorrupt(ObqueError):
    """The queue file cannot be read as an obque/1 queue; it was left untouched."""

    code = "queue_file_corrupt"


class Unauthorized(ObqueError):
    """A valid bearer token is required (Authorization: Bearer TOKEN, or OBQUE_TOKEN)."""

    code = "unauthorized"


class NotLeader(ObqueError):
    """Another broker now serves this queue; send requests to the advertised broker."""

    code = "not_leader"

    def __init__(self, message: str | None = None, broker_url: str | None = None) -> None:
        super().__init__(message)
        self.broker_url = broker_url


class MissingDependency(ObqueError):
    """An optional dependency is missing; install the extra named in the message."""

    code = "missing_dependency"


class StoreError(ObqueError):
    """The object store refused or failed an operation."""

    code = "store_error"


class StoreForbidden(StoreError):
    """The object store refused these credentials for the object (403); grant them access
    (a deployed broker's IAM role or service account), since retrying cannot help."""

    code = "store_forbidden"


class Conflict(StoreError):
    """The object changed since it was read (compare-and-set lost), or already exists."""

    code = "conflict"


class StoreUnavailable(StoreError):
    """The object store could not be reached or failed; try again shortly."""

    code = "store_unavailable"


class AmbiguousWrite(StoreUnavailable):
    """A write was sent but its answer was lost; it may or may not have landed."""
