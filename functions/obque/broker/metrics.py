"""Prometheus text exposition of every queue this broker has open."""

from __future__ import annotations

from obque.broker.queues import QueueRegistry
from obque.store import Store
from obque.store.shaping import FaultBackend

__all__ = ["render_metrics"]

_HELP = {
    "obque_jobs": ("gauge", "Jobs by state."),
    "obque_revision": ("gauge", "Revision of the queue file."),
    "obque_events_total": ("counter", "Lifetime job events recorded in the queue file."),
    "obque_commits_total": ("counter", "Commits (CAS writes) made by this broker."),
    "obque_ops_total": ("counter", "Operations carried by this broker's commits."),
    "obque_largest_batch": ("gauge", "Most operations this broker put in one commit."),
    "obque_store_requests_total": ("counter", "Store requests by kind."),
    "obque_leader": ("gauge", "1 while this broker leads the queue."),
    "obque_store_faults_injected_total": (
        "counter",
        "Faults injected by a ?faults= store (tests, demos), by kind; shared by a root.",
    ),
}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _injected_faults(store: Store) -> dict[str, int]:
    """The counters of the store's fault-injecting wrapper, if it has one."""
    backend: object = store.backend
    while backend is not None:
        if isinstance(backend, FaultBackend):
            return dict(backend.injected)
        backend = getattr(backend, "inner", None)
    return {}


def render_metrics(queues: QueueRegistry, now_s: float) -> str:
    rows: dict[str, list[str]] = {name: [] for name in _HELP}
    now_ms = int(now_s * 1000)
    for name, engine in sorted(queues.known().items()):
        q = f'queue="{_label(name)}"'
        state = engine.state
        if state is not None:
            for kind, n in state.counts(now_ms).items():
                rows["obque_jobs"].append(f'obque_jobs{{{q},state="{kind}"}} {n}')
            rows["obque_revision"].append(f"obque_revision{{{q}}} {state.revision}")
            for event in ("pushed", "acked", "nacked", "expired", "dead"):
                value = getattr(state.stats, event)
                rows["obque_events_total"].append(
                    f'obque_events_total{{{q},event="{event}"}} {value}'
                )
        rows["obque_commits_total"].append(f"obque_commits_total{{{q}}} {engine.stats.commits}")
        rows["obque_ops_total"].append(f"obque_ops_total{{{q}}} {engine.stats.ops}")
        rows["obque_largest_batch"].append(
            f"obque_largest_batch{{{q}}} {engine.stats.largest_batch}"
        )
        if engine.leadership is not None:
            lead = 1 if engine.leadership.is_leader else 0
            rows["obque_leader"].append(f"obque_leader{{{q}}} {lead}")
        counts = engine.store.counts
        if counts is not None:
            for kind, n in counts.as_dict().items():
                rows["obque_store_requests_total"].append(
                    f'obque_store_requests_total{{{q},kind="{kind}"}} {n}'
                )
        for kind, n in _injected_faults(engine.store).items():
            rows["obque_store_faults_injected_total"].append(
                f'obque_store_faults_injected_total{{{q},kind="{kind}"}} {n}'
            )
    lines: list[str] = []
    for metric, (kind, text) in _HELP.items():
        if rows[metric]:
            lines += [f"# HELP {metric} {text}", f"# TYPE {metric} {kind}", *rows[metric]]
    return "\n".join(lines) + "\n"
