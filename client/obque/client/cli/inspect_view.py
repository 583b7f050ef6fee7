"""``obque inspect``: a queue file summarised, as a table for people or JSON for scripts."""

from __future__ import annotations

from typing import Any

import msgspec
from rich.console import RenderableType
from rich.table import Table

from obque.core import QueueState
from obque.core.summary import stats_summary

__all__ = ["inspect_summary", "render_inspect"]

#: Claimed jobs the human view lists, whatever ``--limit`` says (``--json`` has them all):
#: they are bounded by the workers' concurrency, and the ones stuck are what one looks for.
CLAIMED_SHOWN = 100


def _claimed(state: QueueState, now_ms: int) -> list[dict[str, Any]]:
    """Every claimed job (not only those a job listing shows), soonest expiry first."""
    claimed: list[dict[str, Any]] = [
        {
            "id": job.id,
            "worker": job.claim.worker,
            "attempts": job.attempts,
            "lease_expires_ms": job.claim.expires_ms,
            "lease_expires_in_seconds": (job.claim.expires_ms - now_ms) / 1000,
        }
        for job in state.jobs.values()
        if job.claim is not None
    ]
    claimed.sort(key=lambda c: c["lease_expires_ms"])
    return claimed


def inspect_summary(state: QueueState, uri: str, size: int, now_ms: int) -> dict[str, Any]:
    """What ``inspect --json`` prints: the ``stats`` view computed from the file itself,
    plus its size, lifetime counters, config and every claimed job."""
    summary = stats_summary(state, now_ms)
    broker = summary["broker"]
    if broker is not None and broker.get("heartbeat_ms"):
        broker["heartbeat_age_seconds"] = (now_ms - broker["heartbeat_ms"]) / 1000
    return {
        "uri": uri,
        "bytes": size,
        **summary,
        "next_id": state.next_seq,
        "lifetime": msgspec.structs.asdict(state.stats),
        "config": msgspec.structs.asdict(state.config),
        "claimed_jobs": _claimed(state, now_ms),
    }


def _broker_line(summary: dict[str, Any]) -> str:
    broker = summary["broker"]
    if broker is None:
        return "none advertised (clients commit directly)"
    if not broker.get("url"):
        return f"none (the last one stopped cleanly; epoch {broker.get('epoch')})"
    age = broker.get("heartbeat_age_seconds")
    beat = f", heartbeat {age:.1f}s ago" if age is not None else ""
    return f"{broker['url']} ({broker.get('mode')}, epoch {broker.get('epoch')}{beat})"


def _age(seconds: float | None) -> str:
    return "no job ready" if seconds is None else f"a job has been ready for {seconds:.1f}s"


def render_inspect(
    summary: dict[str, Any], state: QueueState, now_ms: int, limit: int
) -> list[RenderableType]:
    """The human view: a header, the queue's numbers, claimed jobs, then the first jobs."""
    shown: list[RenderableType] = []
    shown.append(f"{summary['uri']}  revision {summary['revision']}  ({summary['bytes']:,} bytes)")
    life = summary["lifetime"]
    rows = [
        ("broker:", _broker_line(summary)),
        (
            "jobs:",
            ", ".join(f"{summary[k]} {k}" for k in ("ready", "delayed", "claimed", "dead"))
            + f"; next id {summary['next_id']}",
        ),
        ("oldest:", _age(summary["oldest_ready_age_seconds"])),
        (
            "lifetime:",
            f"{life['pushed']} pushed, {life['acked']} acked, {life['nacked']} nacked, "
            f"{life['expired']} expired, {life['dead']} dead, {life['commits']} commits",
        ),
        ("config:", ", ".join(f"{k}={v}" for k, v in summary["config"].items())),
    ]
    head = Table.grid(padding=(0, 1))
    head.add_column(no_wrap=True)
    head.add_column()
    for label, value in rows:
        head.add_row(label, value)
    shown.append(head)
    claimed = summary["claimed_jobs"]
    if claimed:
        table = Table(title=f"claimed ({len(claimed)})", title_justify="left", box=None)
        for column in ("id", "worker", "attempts", "lease expires in"):
            table.add_column(column, no_wrap=True)
        for c in claimed[:CLAIMED_SHOWN]:
            expires = c["lease_expires_in_seconds"]
            when = f"{expires:.1f}s" if expires >= 0 else f"lapsed {-expires:.1f}s ago"
            table.add_row(c["id"], c["worker"], str(c["attempts"]), when)
        shown.append(table)
        if len(claimed) > CLAIMED_SHOWN:
            shown.append(f"  ... {len(claimed) - CLAIMED_SHOWN} more claimed")
    shown.extend(_jobs_table(state, now_ms, limit))
    return shown


def _jobs_table(state: QueueState, now_ms: int, limit: int) -> list[RenderableType]:
    shown = list(state.jobs.values())[:limit]
    if not shown:
        return []
    table = Table(title=f"jobs (first {len(shown)})", title_justify="left", box=None)
    for column in ("id", "state", "attempts", "payload"):
        table.add_column(column, no_wrap=True)
    for job in shown:
        if job.claim:
            where = f"claimed by {job.claim.worker}"
        elif job.ready_ms <= now_ms:
            where = "ready"
        else:
            where = f"ready in {(job.ready_ms - now_ms) / 1000:.1f}s"
        payload = bytes(job.payload).decode() if job.spilled is None else f"<{job.spilled}>"
        if len(payload) > 60:
            payload = payload[:57] + "..."
        table.add_row(job.id, where, str(job.attempts), payload)
    more = len(state.jobs) - len(shown)
    return [table, f"  ... {more} more"] if more else [table]
