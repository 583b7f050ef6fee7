"""The in-memory queue: what a commit reads, and the new value it produces.

``QueueState`` holds the decoded file plus derived indexes (jobs by id in FIFO order,
live push keys). It is never mutated: ``apply`` copies the containers it changes (a
100,000-entry dict copies in under a millisecond) and shares every unchanged job, so a
failed compare-and-set simply drops the new state and keeps the old one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from obque.core.model import Applied, BrokerRecord, Job, QueueConfig, Stats

__all__ = ["Extras", "QueueState", "job_inline_bytes"]


def job_inline_bytes(job: Job) -> int:
    """What a job's payload adds to the queue file: its raw JSON, or for a payload spilled
    to its own object, the ``null`` and the object's name that stand for it."""
    return len(job.payload) + (len(job.spilled) if job.spilled is not None else 0)


@dataclass(frozen=True, slots=True)
class Extras:
    """Fields a newer writer put in the file that this version does not know.

    They are written back unchanged (readers accept unknown fields, writers preserve
    them). Job-level extras follow the job by id; a claim's extras follow the claim only
    while its lease is unchanged, since a new claim is a new record.
    """

    top: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    broker: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    claims: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    #: By ``applied`` entry name, while the entry lives.
    applied: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(
            self.top
            or self.config
            or self.broker
            or self.stats
            or self.jobs
            or self.claims
            or self.applied
        )


@dataclass(frozen=True, slots=True)
class QueueState:
    name: str
    revision: int
    next_seq: int
    config: QueueConfig
    broker: BrokerRecord | None
    #: Live jobs (ready, delayed, claimed) by id, in FIFO order of their sequence.
    jobs: dict[str, Job]
    #: Dead letters, oldest first.
    dead: tuple[Job, ...]
    applied: dict[str, Applied]
    stats: Stats
    #: Derived: push key -> id of the live job holding it.
    keys: dict[str, str]
    extras: Extras | None = None
    #: Spilled payload objects the commit that built this state stopped referencing
    #: (jobs acked, purged, dropped from the dead list): deleted once it has landed.
    #: Never stored in the file.
    released: tuple[str, ...] = ()
    #: Derived: ``job_inline_bytes`` summed over live jobs and dead letters (what
    #: ``max_inline_bytes`` bounds). Summed once when a file is decoded (left at -1);
    #: every commit then carries it forward by what each operation added or removed.
    inline_bytes: int = -1

    def __post_init__(self) -> None:
        if self.inline_bytes < 0:
            total = sum(map(job_inline_bytes, self.jobs.values())) + sum(
                map(job_inline_bytes, self.dead)
            )
            object.__setattr__(self, "inline_bytes", total)

    @classmethod
    def new(
        cls, name: str, config: QueueConfig | None = None, broker: BrokerRecord | None = None
    ) -> QueueState:
        """A fresh, empty queue at revision 0 (the first commit writes revision 1)."""
        return cls(
            name=name,
            revision=0,
            next_seq=1,
            config=config or QueueConfig(),
            broker=broker,
            jobs={},
            dead=(),
            applied={},
            stats=Stats(),
            keys={},
            inline_bytes=0,
        )

    def counts(self, now_ms: int) -> dict[str, int]:
        """Jobs by state: ready, delayed, claimed, dead."""
        ready = delayed = claimed = 0
        for job in self.jobs.values():
            if job.claim is not None:
                claimed += 1
            elif job.ready_ms > now_ms:
                delayed += 1
            else:
                ready += 1
        return {"ready": ready, "delayed": delayed, "claimed": claimed, "dead": len(self.dead)}

    def oldest_ready_ms(self, now_ms: int) -> int | None:
        """The earliest time a job that is ready now became ready, if any is."""
        return min(
            (j.ready_ms for j in self.jobs.values() if j.claim is None and j.ready_ms <= now_ms),
            default=None,
        )
