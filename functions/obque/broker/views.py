"""Engine results and queue states as API answers (pure conversions)."""

from __future__ import annotations

from typing import Any

import msgspec

from obque.broker.wire import (
    ClaimedOut,
    ClaimOut,
    ItemOut,
    JobsOut,
    JobView,
    PurgeOut,
    PushOut,
    QueueOut,
    RedriveOut,
    ResultsOut,
    StatsOut,
)
from obque.core import ClaimResult, CountResult, ItemsResult, PushResult, QueueState, Result
from obque.core.summary import Fetch, list_jobs, stats_summary

__all__ = [
    "ClaimOut",
    "JobsOut",
    "PurgeOut",
    "PushOut",
    "QueueOut",
    "RedriveOut",
    "ResultsOut",
    "StatsOut",
    "claim_out",
    "count",
    "jobs_out",
    "push_out",
    "queue_out",
    "results_out",
    "stats_out",
]


def _expect(result: Result, kind: type[Any]) -> Any:
    if not isinstance(result, kind):
        raise TypeError(f"expected {kind.__name__}, got {result!r}")
    return result


def push_out(result: Result) -> PushOut:
    r: PushResult = _expect(result, PushResult)
    return PushOut(list(r.ids), list(r.duplicates), r.revision)


def claim_out(result: Result) -> ClaimOut:
    r: ClaimResult = _expect(result, ClaimResult)
    return ClaimOut(
        [ClaimedOut(j.id, j.payload, j.attempt, j.lease, j.lease_expires_ms) for j in r.jobs]
    )


def results_out(result: Result) -> ResultsOut:
    r: ItemsResult = _expect(result, ItemsResult)
    return ResultsOut([ItemOut(i.id, i.ok, i.error, i.lease_expires_ms) for i in r.results])


def count(result: Result) -> int:
    r: CountResult = _expect(result, CountResult)
    return r.count


def queue_out(state: QueueState) -> QueueOut:
    return QueueOut(state.name, msgspec.structs.asdict(state.config), state.revision)


def stats_out(state: QueueState, now_ms: int) -> StatsOut:
    return StatsOut(**stats_summary(state, now_ms))


def jobs_out(
    state: QueueState, wanted: str, limit: int, now_ms: int, fetch: Fetch | None = None
) -> JobsOut:
    return JobsOut([JobView(**job) for job in list_jobs(state, wanted, limit, now_ms, fetch)])
