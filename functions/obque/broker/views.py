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
from obque.core import ClaimResult, CountResult, ItemsResult, Job, PushResult, QueueState, Result

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
    counts = state.counts(now_ms)
    oldest = state.oldest_ready_ms(now_ms)
    s = state.stats
    return StatsOut(
        name=state.name,
        revision=state.revision,
        ready=counts["ready"],
        delayed=counts["delayed"],
        claimed=counts["claimed"],
        dead=counts["dead"],
        pushed=s.pushed,
        acked=s.acked,
        nacked=s.nacked,
        expired=s.expired,
        commits=s.commits,
        oldest_ready_age_seconds=None if oldest is None else max(0, now_ms - oldest) / 1000,
        broker=None if state.broker is None else msgspec.structs.asdict(state.broker),
    )


def job_state(job: Job, now_ms: int) -> str:
    if job.claim is not None:
        return "claimed"
    return "delayed" if job.ready_ms > now_ms else "ready"


def _view(job: Job, state: str) -> JobView:
    claim = job.claim
    return JobView(
        id=job.id,
        state=state,
        payload=job.payload,
        attempts=job.attempts,
        enqueued_ms=job.enqueued_ms,
        ready_ms=job.ready_ms,
        key=job.key,
        worker=None if claim is None else claim.worker,
        lease_expires_ms=None if claim is None else claim.expires_ms,
        last_error=job.last_error,
    )


def jobs_out(state: QueueState, wanted: str, limit: int, now_ms: int) -> JobsOut:
    if wanted == "dead":
        return JobsOut([_view(job, "dead") for job in state.dead[:limit]])
    found: list[JobView] = []
    for job in state.jobs.values():
        if job_state(job, now_ms) == wanted:
            found.append(_view(job, wanted))
            if len(found) >= limit:
                break
    return JobsOut(found)
