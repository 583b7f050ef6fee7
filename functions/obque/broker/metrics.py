"""``/metrics``: every queue this broker has open, in Prometheus text, by prometheus-client.

Each app has its own :class:`BrokerMetrics` and registry (tests build several apps in one
process; nothing is registered globally). Two sources:

* counts read from the engines at scrape time, by a collector: jobs by state and the
  oldest ready job's age (from the last committed state, so a scrape costs no store
  request), the file's lifetime event counters, this broker's commits, operations and
  lost compare-and-sets, store requests by kind, leadership, parked long polls;
* two histograms observed by the engine's writer after every commit that landed
  (``QueueEngine.commit_listeners``): operations per commit and seconds per commit.

Store request counts (and injected faults) are kept by the root's store wrapper, so every
queue of one root reports the same figures under its own ``queue`` label.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4 as CONTENT_TYPE
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from obque.broker.queues import QueueRegistry
from obque.commit import Committer, Engine, QueueEngine
from obque.commit.events import CommitRecord
from obque.store import Store
from obque.store.shaping import FaultBackend

__all__ = ["CONTENT_TYPE", "OPS_BUCKETS", "SECONDS_BUCKETS", "BrokerMetrics"]

#: Operations per commit: one caller at a time up to ``MAX_BATCH_OPS`` (5000).
OPS_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)

#: Seconds per commit: a local file's milliseconds to GCS's paced second and retries.
SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_EVENTS = ("pushed", "acked", "nacked", "expired", "dead")


class BrokerMetrics:
    """The metrics of one app's queues. Watches every engine ``queues`` makes from now on
    (by wrapping its engine factory), so their commits are observed from the first one."""

    content_type = CONTENT_TYPE

    def __init__(self, queues: QueueRegistry, clock: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry()
        self.ops_per_commit = Histogram(
            "obque_commit_ops",
            "Operations carried by each commit of this broker (0: a heartbeat alone).",
            ["queue"],
            buckets=OPS_BUCKETS,
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "obque_commit_seconds",
            "Seconds from taking a batch to its write landing, retries and pacing included.",
            ["queue"],
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_QueueCollector(queues, clock))
        make = queues.engine_factory

        def watched(store: Store, name: str) -> Engine:
            engine = make(store, name)
            self.watch(engine)
            return engine

        queues.engine_factory = watched
        for engine in queues.known().values():
            self.watch(engine)

    def watch(self, engine: Engine) -> None:
        """Observe the commits of ``engine`` (group-commit engines report each commit)."""
        if isinstance(engine, QueueEngine):
            engine.commit_listeners.append(self.observe)

    def observe(self, record: CommitRecord) -> None:
        self.ops_per_commit.labels(record.queue).observe(record.ops)
        self.commit_seconds.labels(record.queue).observe(record.seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _QueueCollector:
    """Counts and gauges read from the engines at scrape time."""

    def __init__(self, queues: QueueRegistry, clock: Callable[[], float]) -> None:
        self.queues = queues
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        q = ["queue"]
        jobs = GaugeMetricFamily("obque_jobs", "Jobs by state.", labels=[*q, "state"])
        oldest = GaugeMetricFamily(
            "obque_oldest_ready_age_seconds",
            "How long the oldest ready job has waited (0 when none is ready).",
            labels=q,
        )
        revision = GaugeMetricFamily("obque_revision", "Revision of the queue file.", labels=q)
        events = CounterMetricFamily(
            "obque_events",
            "Lifetime job events recorded in the queue file.",
            labels=[*q, "event"],
        )
        commits = CounterMetricFamily(
            "obque_commits", "Commits (CAS writes) made by this broker.", labels=q
        )
        ops = CounterMetricFamily(
            "obque_ops", "Operations carried by this broker's commits.", labels=q
        )
        conflicts = CounterMetricFamily(
            "obque_commit_conflicts",
            "Compare-and-sets this broker lost to another writer (each re-read and retried).",
            labels=q,
        )
        largest = GaugeMetricFamily(
            "obque_largest_batch", "Most operations this broker put in one commit.", labels=q
        )
        requests = CounterMetricFamily(
            "obque_store_requests",
            "Store requests by kind (counted per root: every queue of a root shows the same).",
            labels=[*q, "kind"],
        )
        leader = GaugeMetricFamily("obque_leader", "1 while this broker leads the queue.", labels=q)
        parked = GaugeMetricFamily(
            "obque_parked_claims", "Long-poll claims waiting here for a job.", labels=q
        )
        faults = CounterMetricFamily(
            "obque_store_faults_injected",
            "Faults injected by a ?faults= store (tests, demos), by kind; shared by a root.",
            labels=[*q, "kind"],
        )
        now_ms = int(self.clock() * 1000)
        for name, engine in sorted(self.queues.known().items()):
            state = engine.state
            if state is not None:
                for kind, n in state.counts(now_ms).items():
                    jobs.add_metric([name, kind], n)
                since = state.oldest_ready_ms(now_ms)
                oldest.add_metric([name], 0 if since is None else max(0, now_ms - since) / 1000)
                revision.add_metric([name], state.revision)
                for event in _EVENTS:
                    events.add_metric([name, event], getattr(state.stats, event))
            commits.add_metric([name], engine.stats.commits)
            ops.add_metric([name], engine.stats.ops)
            largest.add_metric([name], engine.stats.largest_batch)
            committer = getattr(engine, "committer", None)
            if isinstance(committer, Committer):
                conflicts.add_metric([name], committer.stats.conflicts)
            if isinstance(engine, QueueEngine):
                parked.add_metric([name], engine.parked_claims)
            if engine.leadership is not None:
                leader.add_metric([name], 1 if engine.leadership.is_leader else 0)
            counts = engine.store.counts
            if counts is not None:
                for kind, n in counts.as_dict().items():
                    requests.add_metric([name, kind], n)
            for kind, n in _injected_faults(engine.store).items():
                faults.add_metric([name, kind], n)
        families: list[Metric] = [jobs, oldest, revision, events, commits, ops, conflicts]
        families += [largest, requests, leader, parked, faults]
        # A family without samples would still print its HELP and TYPE lines.
        yield from (family for family in families if family.samples)


def _injected_faults(store: Store) -> dict[str, int]:
    """The counters of the store's fault-injecting wrapper, if it has one."""
    backend: object = store.backend
    while backend is not None:
        if isinstance(backend, FaultBackend):
            return dict(backend.injected)
        backend = getattr(backend, "inner", None)
    return {}
