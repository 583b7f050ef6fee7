"""The queue file, ``obque/1``, as typed records.

These structs are the wire format: ``codec`` decodes a whole file into them in one pass
(payloads stay undecoded ``Raw`` JSON, so the broker never parses or re-encodes them) and
encodes them back. All records are frozen: a commit builds new records for the jobs it
changes and shares the rest with the previous state. Jobs, claims and ``applied``
entries hold only strings, numbers and raw JSON, so they cannot form reference cycles:
``gc=False`` keeps 100,000 of them out of the garbage collector's way (measured: a
1,000-operation commit at 100k jobs went from 18 to 15.5 ms).

Optional job fields are omitted when empty, which keeps a file of 100,000 jobs small;
readers treat a missing field as its default.
"""

from __future__ import annotations

from typing import Any

import msgspec

#: ``Applied.result`` of entries that carry none (push keys).
NO_RESULT = msgspec.Raw(b"null")

__all__ = [
    "NO_RESULT",
    "Applied",
    "BrokerRecord",
    "Job",
    "JobClaim",
    "QueueConfig",
    "QueueDoc",
    "Stats",
]


class JobClaim(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """Who holds a job, with which lease token, until when."""

    worker: str
    lease: str
    expires_ms: int
    heartbeat_ms: int


class Job(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True, gc=False):
    id: str
    payload: msgspec.Raw
    enqueued_ms: int
    ready_ms: int
    attempts: int = 0
    key: str | None = None
    max_attempts: int | None = None
    claim: JobClaim | None = None
    last_error: str | None = None
    #: A payload larger than the queue's ``spill_payload_bytes`` lives in its own object,
    #: ``NAME.json.d/SPILLED``; ``payload`` is then ``null`` (see ``obque.commit.payloads``).
    spilled: str | None = None


class BrokerRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where clients send requests. ``mode`` is ``serverless`` (every function instance is
    the broker) or ``process`` (one long-running leader, fenced by ``epoch``)."""

    url: str
    mode: str = "process"
    id: str = ""
    epoch: int = 0
    heartbeat_ms: int = 0


class QueueConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    lease_seconds: int = 30
    max_attempts: int = 5
    retry_delay_seconds: float = 1.0
    retry_delay_max_seconds: float = 300.0
    dead_retention: int = 10_000
    max_payload_bytes: int = 262_144
    #: How long an acked or dead-lettered job's push key still deduplicates (SQS: 5 min).
    dedup_seconds: int = 300
    #: Pushes beyond this many jobs answer ``queue_full``.
    max_jobs: int = 100_000
    #: Payloads larger than this are stored as separate objects beside the queue file
    #: (written at push, fetched at claim, deleted when the job leaves), which keeps
    #: the file -- rewritten by every commit -- small.
    spill_payload_bytes: int = 16_384
    #: Pushes that would take the payload bytes held in the file -- live jobs and dead
    #: letters; a spilled payload counts as its object's name -- beyond this answer
    #: ``queue_full``. ``max_jobs`` alone would let 100,000 payloads of up to
    #: ``spill_payload_bytes`` make a 1.6 GB file, rewritten by every commit.
    max_inline_bytes: int = 64 * 1024 * 1024


class Stats(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pushed: int = 0
    acked: int = 0
    nacked: int = 0
    expired: int = 0
    dead: int = 0
    commits: int = 0
    redriven: int = 0
    purged: int = 0
    dead_dropped: int = 0


class Applied(
    msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True, gc=False
):
    """A remembered push key (``k:KEY``, with the job id) or intent (``i:ID``, with its
    results), kept ``dedup_seconds`` after ``at_ms``."""

    at_ms: int
    id: str | None = None
    #: An intent's encoded results (``NO_RESULT`` for keys). msgspec cannot decode an
    #: optional ``Raw``, so absence is the JSON ``null`` itself.
    result: msgspec.Raw = NO_RESULT


class QueueDoc(msgspec.Struct, forbid_unknown_fields=True):
    format: str
    name: str
    revision: int
    broker: BrokerRecord | None = None
    config: QueueConfig = msgspec.field(default_factory=QueueConfig)
    next_seq: int = 1
    jobs: list[Job] = msgspec.field(default_factory=list)
    dead: list[Job] = msgspec.field(default_factory=list)
    applied: dict[str, Applied] = msgspec.field(default_factory=dict)
    stats: Stats = msgspec.field(default_factory=Stats)


#: The fields each record knows, for finding the unknown ones a newer writer added.
KNOWN_FIELDS: dict[str, frozenset[str]] = {
    name: frozenset(cls.__struct_fields__)
    for name, cls in (
        ("doc", QueueDoc),
        ("job", Job),
        ("claim", JobClaim),
        ("broker", BrokerRecord),
        ("config", QueueConfig),
        ("stats", Stats),
        ("applied", Applied),
    )
}

JSONObject = dict[str, Any]
