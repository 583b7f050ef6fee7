"""Read-only views of a queue state: the numbers ``stats`` shows and the jobs it lists."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from obque.core.model import Job
from obque.core.state import QueueState

__all__ = ["JOB_STATES", "Fetch", "job_state", "list_jobs", "stats_summary"]

#: Reads spilled payload objects by name; a name it cannot find is left out.
Fetch = Callable[[Sequence[str]], Mapping[str, msgspec.Raw]]

JOB_STATES = ("ready", "delayed", "claimed", "dead")


def stats_summary(state: QueueState, now_ms: int) -> dict[str, Any]:
    counts = state.counts(now_ms)
    oldest = state.oldest_ready_ms(now_ms)
    s = state.stats
    return {
        "name": state.name,
        "revision": state.revision,
        **counts,
        "pushed": s.pushed,
        "acked": s.acked,
        "nacked": s.nacked,
        "expired": s.expired,
        "commits": s.commits,
        "oldest_ready_age_seconds": None if oldest is None else max(0, now_ms - oldest) / 1000,
        "broker": None if state.broker is None else msgspec.structs.asdict(state.broker),
    }


def job_state(job: Job, now_ms: int) -> str:
    if job.claim is not None:
        return "claimed"
    return "delayed" if job.ready_ms > now_ms else "ready"


def _summary(job: Job, state: str) -> dict[str, Any]:
    """A job as listed; the lease token is never shown (it is the worker's secret)."""
    out: dict[str, Any] = {
        "id": job.id,
        "state": state,
        "payload": job.payload,
        "attempts": job.attempts,
        "enqueued_ms": job.enqueued_ms,
        "ready_ms": job.ready_ms,
    }
    if job.key is not None:
        out["key"] = job.key
    if job.claim is not None:
        out["worker"] = job.claim.worker
        out["lease_expires_ms"] = job.claim.expires_ms
    if job.last_error is not None:
        out["last_error"] = job.last_error
    return out


def list_jobs(
    state: QueueState, wanted: str, limit: int, now_ms: int, fetch: Fetch | None = None
) -> list[dict[str, Any]]:
    """Up to ``limit`` jobs in ``wanted`` state, FIFO order (payloads as raw JSON).

    Spilled payloads are read with ``fetch``; without it (or when an object is missing)
    such a job's payload shows as ``null``."""
    if wanted == "dead":
        jobs = list(state.dead[:limit])
    else:
        jobs = []
        for job in state.jobs.values():
            if job_state(job, now_ms) == wanted:
                jobs.append(job)
                if len(jobs) >= limit:
                    break
    found = [_summary(job, wanted) for job in jobs]
    spilled = [job.spilled for job in jobs if job.spilled is not None]
    if spilled and fetch is not None:
        payloads = fetch(spilled)
        for job, out in zip(jobs, found, strict=True):
            if job.spilled is not None and job.spilled in payloads:
                out["payload"] = payloads[job.spilled]
    return found
