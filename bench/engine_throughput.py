"""Group-commit throughput of the engine API on a latency-model store (SPEC §11).

Every figure runs twice in the same process, on fresh in-memory queues shaped like S3
(``?latency=s3``: 20 ms reads, 60 ms writes) or GCS (``?latency=gcs``: 1 write/s):

- **engine**: the callers share one ``QueueEngine`` (one writer thread, one CAS per
  gathered batch). Callers are asyncio tasks awaiting ``engine.arun(op)`` in one event
  loop, which is how a broker's request handlers call the engine; single-job pushes are
  also run with OS threads calling ``engine.run(op)``.
- **baseline**: the same number of callers, each an OS thread with its own ``Committer``
  (one CAS per operation, re-read and retry on conflict, no broker). Baseline runs are
  short; when the measurement window ends their store starts failing, so callers stuck in
  conflict retries stop at once instead of draining for seconds.

The limit is SPEC §11's: a caller that waits for its own commit finishes at most one
operation per commit, so C callers reach at most C / W operations per second (claim+ack
needs two commits: C / 2W). Throughput is measured between commit boundaries (see
``burst_rate``) after a short warm-up. Operations are built once per caller: encoding a
payload is the caller's cost, not the engine's.

Run: ``.venv/bin/python -m bench.engine_throughput`` (about 90 s; ``--quick`` for a
shorter smoke run, ``--json`` for machine-readable output, ``--only push,claim`` for some
figures, ``--uvloop`` to run the callers on uvloop).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from bench._common import burst_rate, commit_period, machine, markdown_table, percentile
from bench._drive import (
    PAYLOAD,
    Queue,
    Run,
    Window,
    committers,
    drive_tasks,
    drive_threads,
    run_loop,
)
from obque.commit import QueueEngine
from obque.core import Ack, Claim, ClaimResult, LeaseRef, NewJob, Op, Push

FIGURES = ("push", "claim", "batch", "latency", "writes", "gcs")


# -- figures --------------------------------------------------------------------------------


@dataclass
class Figure:
    key: str
    title: str
    unit: str
    limit: float | None
    target: str
    value: float
    met: bool
    engine: Run
    baseline: Run
    variants: list[Run] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Bench:
    quick: bool
    use_uvloop: bool
    log: Callable[[str], None]
    peak_push_rate: float | None = None

    def seconds(self, full: float) -> float:
        return full / 2 if self.quick else full

    def engine_tasks(
        self,
        queue: Queue,
        callers: int,
        step: Callable[[QueueEngine, int], Awaitable[int]],
        seconds: float,
        warmup: float = 0.5,
    ) -> tuple[Window, QueueEngine]:
        engine = QueueEngine(queue.store)
        w = drive_tasks(
            queue, engine, callers, lambda i: step(engine, i), warmup, seconds, self.use_uvloop
        )
        engine.close()
        return w, engine

    # 1. single-job pushes --------------------------------------------------------------

    def push(self) -> Figure:
        c, wlat = 256, commit_period("s3")
        op = Push.of([NewJob.of(PAYLOAD)])
        gap = wlat / 4

        async def push_one(engine: QueueEngine, i: int) -> int:
            await engine.arun(op)
            return 1

        self.log("push: engine, asyncio tasks")
        q = Queue.fresh("s3")
        w, _ = self.engine_tasks(q, c, push_one, self.seconds(4))
        engine_run = Run.of("engine, asyncio tasks (`arun`)", c, w, gap)
        q.drop()

        self.log("push: engine, threads")
        q = Queue.fresh("s3")
        engine = QueueEngine(q.store)
        w = drive_threads(q, engine, c, lambda i: (engine.run(op), 1)[1], 0.5, self.seconds(4))
        engine.close()
        threads_run = Run.of("engine, OS threads (`run`)", c, w, gap)
        q.drop()

        self.log("push: baseline")
        q = Queue.fresh("s3")
        cs = committers(q, c)
        w = drive_threads(q, None, c, lambda i: (cs[i].commit([op]), 1)[1], 0, self.seconds(3))
        base = Run.of("baseline: a Committer per caller", c, w, gap)
        q.drop()

        limit = c / wlat
        self.peak_push_rate = engine_run.rate
        return Figure(
            "push",
            "single-job pushes, S3-like",
            "ops/s",
            limit,
            "≥ 0.9 x C/W",
            engine_run.rate,
            engine_run.rate >= 0.9 * limit,
            engine_run,
            base,
            [threads_run],
        )

    # 2. claim+ack cycles ------------------------------------------------------------------

    def claim(self) -> Figure:
        c, wlat = 128, commit_period("s3")
        seconds = self.seconds(5)
        limit = c / (2 * wlat)
        claims = [Claim.of(f"w{i}", 1) for i in range(c)]

        async def cycle(engine: QueueEngine, i: int) -> int:
            got = await engine.arun(claims[i])
            assert isinstance(got, ClaimResult)
            if not got.jobs:
                return 0
            job = got.jobs[0]
            await engine.arun(Ack.of([LeaseRef(job.id, job.lease)]))
            return 1

        self.log("claim: engine, asyncio tasks")
        q = Queue.fresh("s3", prefill=int(limit * (seconds + 1) * 1.5))
        w, _ = self.engine_tasks(q, c, cycle, seconds)
        engine_run = Run.of("engine, asyncio tasks (`arun`)", c, w, wlat / 4)
        q.drop()

        self.log("claim: baseline")
        q = Queue.fresh("s3", prefill=2000)
        cs = committers(q, c)

        def sync_cycle(i: int) -> int:
            _, (got,) = cs[i].commit([claims[i]])
            assert isinstance(got, ClaimResult)
            if not got.jobs:
                return 0
            job = got.jobs[0]
            cs[i].commit([Ack.of([LeaseRef(job.id, job.lease)])])
            return 1

        w = drive_threads(q, None, c, sync_cycle, 0, self.seconds(3))
        base = Run.of("baseline: a Committer per worker", c, w, wlat / 4)
        q.drop()
        return Figure(
            "claim",
            "claim+ack cycles, S3-like",
            "cycles/s",
            limit,
            "≥ 0.85 x C/2W",
            engine_run.rate,
            engine_run.rate >= 0.85 * limit,
            engine_run,
            base,
        )

    # 3. batched pushes ------------------------------------------------------------------------

    def batch(self) -> Figure:
        c, wlat, size = 64, commit_period("s3"), 100
        op = Push.of([NewJob.of(PAYLOAD)] * size)

        async def push_batch(engine: QueueEngine, i: int) -> int:
            await engine.arun(op)
            return size

        self.log("batch: engine, asyncio tasks")
        q = Queue.fresh("s3")
        w, engine = self.engine_tasks(q, c, push_batch, self.seconds(3))
        engine_run = Run.of("engine, asyncio tasks (`arun`)", c, w, wlat / 4)
        assert engine.state is not None
        depth = len(engine.state.jobs)
        third = (w.end - w.start) / 3
        first, _ = burst_rate(w.done, w.start, w.start + third, wlat / 4)
        last, _ = burst_rate(w.done, w.end - third, w.end, wlat / 4)
        q.drop()

        self.log("batch: baseline")
        q = Queue.fresh("s3")
        cs = committers(q, c)
        w = drive_threads(q, None, c, lambda i: (cs[i].commit([op]), size)[1], 0, self.seconds(3))
        base = Run.of("baseline: a Committer per caller", c, w, wlat / 4)
        q.drop()
        return Figure(
            "batch",
            f"batched pushes ({size} jobs a call), S3-like",
            "jobs/s",
            c * size / wlat,
            "≥ 50,000 jobs/s",
            engine_run.rate,
            engine_run.rate >= 50_000,
            engine_run,
            base,
            notes=[
                f"queue grew from 0 to {depth:,} jobs during the run; every commit "
                "rewrites the whole file, so the rate falls as the queue deepens: "
                f"{first:,.0f} jobs/s in the first third of the window, {last:,.0f} in "
                "the last"
            ],
        )

    # 4. push latency at half the peak load ------------------------------------------------

    def latency(self) -> Figure:
        c, wlat = 128, commit_period("s3")
        op = Push.of([NewJob.of(PAYLOAD)])
        seconds = self.seconds(3)

        async def push_one(engine: QueueEngine, i: int) -> int:
            await engine.arun(op)
            return 1

        self.log("latency: engine, closed loop")
        q = Queue.fresh("s3")
        w, _ = self.engine_tasks(q, c, push_one, seconds)
        closed = Run.of("engine, 128 closed-loop tasks", c, w, wlat / 4)
        q.drop()

        peak = self.peak_push_rate or 256 / wlat
        rate = peak / 2
        self.log(f"latency: engine, open loop at {rate:.0f}/s")
        q = Queue.fresh("s3")
        open_run = self.open_loop(q, op, rate, seconds)
        q.drop()

        self.log("latency: baseline")
        q = Queue.fresh("s3")
        cs = committers(q, c)
        w = drive_threads(q, None, c, lambda i: (cs[i].commit([op]), 1)[1], 0, seconds)
        base = Run.of("baseline: a Committer per caller, closed loop", c, w, wlat / 4)
        q.drop()

        assert closed.p50_ms is not None and closed.p99_ms is not None
        assert open_run.p50_ms is not None and open_run.p99_ms is not None
        met = all(
            r.p50_ms is not None
            and r.p99_ms is not None
            and r.p50_ms <= 1.5 * wlat * 1000
            and r.p99_ms <= 3 * wlat * 1000
            for r in (closed, open_run)
        )
        return Figure(
            "latency",
            "push latency at half the peak load, S3-like",
            "ms",
            None,
            "p50 ≤ 1.5 W, p99 ≤ 3 W",
            closed.p50_ms,
            met,
            closed,
            base,
            [open_run],
            notes=[
                f"closed loop: 128 tasks without think time carry {closed.rate:,.0f} ops/s = "
                f"{closed.rate / peak:.2f} x the measured 256-caller peak ({peak:,.0f}/s)",
                f"open loop: Poisson arrivals at {rate:,.0f}/s (half the measured peak), "
                "latency from the scheduled arrival time",
            ],
        )

    def open_loop(self, queue: Queue, op: Op, rate: float, seconds: float) -> Run:
        engine = QueueEngine(queue.store)
        w = Window()

        async def main() -> None:
            rng = random.Random(7)
            pending: set[asyncio.Task[None]] = set()

            async def one(at: float) -> None:
                await engine.arun(op)
                w.record(at, 1)

            t0 = time.monotonic()
            at = t0
            warm = t0 + 0.5
            opened = False
            while at < warm + seconds:
                at += rng.expovariate(rate)
                delay = at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if not opened and at >= warm:
                    w.open(queue, engine)
                    opened = True
                task = asyncio.create_task(one(at))
                pending.add(task)
                task.add_done_callback(pending.discard)
            w.close(queue, engine)  # arrivals end here; their answers are still awaited
            await asyncio.gather(*pending)

        run_loop(main, self.use_uvloop)
        engine.close()
        # Latencies of the operations that arrived inside the window.
        w.latencies = [(t - lat, lat) for t, lat in w.latencies]
        lat = [lat for t, lat in w.latencies if w.start <= t <= w.end]
        run = Run.of(f"engine, open loop at {rate:,.0f}/s", 0, w, commit_period("s3") / 4)
        run.rate = len(lat) / max(1e-9, w.end - w.start)
        run.p50_ms = percentile(lat, 0.5) * 1000
        run.p99_ms = percentile(lat, 0.99) * 1000
        return run

    # 5. store writes per 1M jobs ----------------------------------------------------------

    def writes(self) -> Figure:
        pushers, workers, wlat = 64, 128, commit_period("s3")
        jobs = 4_000 if self.quick else 20_000
        cap = 10.0 if self.quick else 30.0
        push = Push.of([NewJob.of(PAYLOAD)])
        claims = [Claim.of(f"w{i}", 1) for i in range(workers)]

        self.log(f"writes: engine, {pushers} pushers + {workers} workers, {jobs:,} jobs")
        q = Queue.fresh("s3", prefill=1000)
        engine = QueueEngine(q.store)
        w = Window()

        async def main() -> None:
            acked = 0
            stop = asyncio.Event()

            async def pusher() -> None:
                while not stop.is_set():
                    await engine.arun(push)

            async def worker(i: int) -> None:
                nonlocal acked
                while not stop.is_set():
                    got = await engine.arun(claims[i])
                    assert isinstance(got, ClaimResult)
                    for job in got.jobs:
                        await engine.arun(Ack.of([LeaseRef(job.id, job.lease)]))
                        acked += 1
                        w.done.append((time.monotonic(), 1))
                    if acked >= jobs:
                        stop.set()

            tasks = [asyncio.create_task(pusher()) for _ in range(pushers)]
            tasks += [asyncio.create_task(worker(i)) for i in range(workers)]
            await asyncio.sleep(0.5)
            w.done.clear()
            acked = 0
            w.open(q, engine)
            with_timeout = asyncio.wait_for(stop.wait(), cap)
            try:
                await with_timeout
            except TimeoutError:
                stop.set()
            w.close(q, engine)
            await asyncio.gather(*tasks)

        run_loop(main, self.use_uvloop)
        engine.close()
        engine_run = Run.of(f"engine, {pushers} pushers + {workers} workers", 192, w, wlat / 4)
        engine_run.units = sum(n for t, n in w.done if t <= w.end)
        q.drop()

        self.log("writes: baseline")
        q = Queue.fresh("s3", prefill=1000)
        cs = committers(q, pushers + workers)

        def mixed(i: int) -> int:
            if i < pushers:
                cs[i].commit([push])
                return 0
            _, (got,) = cs[i].commit([claims[i - pushers]])
            assert isinstance(got, ClaimResult)
            for job in got.jobs:
                cs[i].commit([Ack.of([LeaseRef(job.id, job.lease)])])
            return len(got.jobs)

        w = drive_threads(q, None, pushers + workers, mixed, 0, self.seconds(3))
        base = Run.of("baseline: a Committer per caller", 192, w, wlat / 4)
        q.drop()

        def per_million(r: Run) -> float:
            return r.writes / r.units * 1e6 if r.units else float("inf")

        value = per_million(engine_run)
        return Figure(
            "writes",
            "store writes per 1M jobs (push+claim+ack), S3-like",
            "writes",
            None,
            "≤ 30,000",
            value,
            value <= 30_000,
            engine_run,
            base,
            notes=[
                f"engine: {engine_run.units:,} jobs acked with {engine_run.writes:,} writes "
                f"({engine_run.reads:,} reads, {engine_run.conflicts:,} conflicts); baseline: "
                f"{base.units:,} jobs acked with {base.writes:,} writes "
                f"({base.conflicts:,} conflicts) -> {per_million(base):,.0f} per 1M",
                "64 single-job pushers and 128 workers (claim 1, ack 1) share every commit, "
                "so pushes and acks run at the same rate",
            ],
        )

    # 6. GCS-like -----------------------------------------------------------------------------

    def gcs(self) -> Figure:
        c, period = 2000, commit_period("gcs")
        op = Push.of([NewJob.of(PAYLOAD)])

        async def push_one(engine: QueueEngine, i: int) -> int:
            await engine.arun(op)
            return 1

        self.log("gcs: engine, asyncio tasks")
        q = Queue.fresh("gcs")
        w, _ = self.engine_tasks(q, c, push_one, self.seconds(7), warmup=1.5)
        engine_run = Run.of("engine, asyncio tasks (`arun`)", c, w, period / 4)
        q.drop()

        # Every baseline write reserves the next 1-second slot before it can learn it
        # conflicts, so its threads sleep far past the window: leave them behind.
        self.log("gcs: baseline (threads left sleeping)")
        q = Queue.fresh("gcs")
        cs = committers(q, c)
        w = drive_threads(
            q, None, c, lambda i: (cs[i].commit([op]), 1)[1], 0, self.seconds(5), abandon=True
        )
        base = Run.of("baseline: a Committer per caller", c, w, period / 4)
        limit = c / period
        return Figure(
            "gcs",
            "single-job pushes, GCS-like (1 write/s)",
            "ops/s",
            limit,
            "≥ 0.9 x C/1 s",
            engine_run.rate,
            engine_run.rate >= 0.9 * limit,
            engine_run,
            base,
        )


# -- report ---------------------------------------------------------------------------------


def _num(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _bound(run: Run) -> str:
    return "≥ " if run.censored else ""


def _ratio(a: float, b: float) -> str:
    if b <= 0:
        return "∞" if a > 0 else "-"
    return f"{a / b:,.0f}x" if a / b >= 10 else f"{a / b:.2f}x"


def markdown(info: dict[str, Any], command: str, figures: list[Figure]) -> str:
    wlat = commit_period("s3") * 1000
    head = [
        "figure",
        "callers",
        "engine",
        "limit",
        "engine / limit",
        "baseline",
        "engine / baseline",
        "target",
        "met",
    ]
    rows: list[list[object]] = []
    for f in figures:
        if f.key == "latency":
            r, o = f.engine, f.variants[0]
            rows.append(
                [
                    f.title,
                    "128",
                    f"closed: p50 {_num(r.p50_ms)} / p99 {_num(r.p99_ms)} ms "
                    f"({_num((r.p50_ms or 0) / wlat, 2)} W / {_num((r.p99_ms or 0) / wlat, 2)} W); "
                    f"open: p50 {_num(o.p50_ms)} / p99 {_num(o.p99_ms)} ms "
                    f"({_num((o.p50_ms or 0) / wlat, 2)} W / {_num((o.p99_ms or 0) / wlat, 2)} W)",
                    "-",
                    "-",
                    f"p50 {_bound(f.baseline)}{_num(f.baseline.p50_ms)} / "
                    f"p99 {_bound(f.baseline)}{_num(f.baseline.p99_ms)} ms",
                    f"p50 {_ratio(f.baseline.p50_ms or 0, r.p50_ms or 1)} lower",
                    f.target,
                    "yes" if f.met else "**no**",
                ]
            )
        elif f.key == "writes":
            base = f.baseline.writes / f.baseline.units * 1e6 if f.baseline.units else 0.0
            rows.append(
                [
                    f.title,
                    "64 + 128",
                    f"{f.value:,.0f}",
                    "-",
                    "-",
                    f"{base:,.0f}",
                    f"{_ratio(base, f.value)} fewer",
                    f.target,
                    "yes" if f.met else "**no**",
                ]
            )
        else:
            assert f.limit is not None
            rows.append(
                [
                    f.title,
                    f"{f.engine.callers:,}",
                    f"{f.value:,.0f} {f.unit}",
                    f"{f.limit:,.0f}",
                    f"{f.value / f.limit:.2f}",
                    f"{f.baseline.rate:,.1f}",
                    _ratio(f.value, f.baseline.rate),
                    f.target,
                    "yes" if f.met else "**no**",
                ]
            )
    detail_head = [
        "run",
        "callers",
        "rate /s",
        "units",
        "s",
        "commits",
        "ops/commit",
        "writes",
        "reads",
        "conflicts",
        "p50 ms",
        "p99 ms",
    ]
    detail: list[list[object]] = []
    for f in figures:
        for r in [f.engine, *f.variants, f.baseline]:
            detail.append(
                [
                    f"{f.key}: {r.label}",
                    r.callers or "open",
                    _num(r.rate, 1),
                    f"{r.units:,}",
                    _num(r.seconds, 1),
                    _num(r.commits),
                    _num(r.ops_per_commit, 1),
                    f"{r.writes:,}",
                    f"{r.reads:,}",
                    f"{r.conflicts:,}",
                    _bound(r) + _num(r.p50_ms, 1),
                    _bound(r) + _num(r.p99_ms, 1),
                ]
            )
    notes = [f"- {f.key}: {n}" for f in figures for n in f.notes]
    return "\n".join(
        [
            f"Command: `{command}`",
            "",
            f"Machine: {info['nproc']} CPUs ({info['cpu_model']}), Python {info['python']} "
            f"({info['implementation']}), msgspec {info['msgspec']}, {info['platform']}; "
            f"1-minute load average {info['loadavg_1m_before']} before the run, "
            f"{info['loadavg_1m']} after.",
            "",
            markdown_table(head, rows),
            "",
            markdown_table(detail_head, detail),
            "",
            *notes,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (smoke test)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    parser.add_argument("--uvloop", action="store_true", help="run callers on uvloop")
    parser.add_argument(
        "--only", default=",".join(FIGURES), help=f"comma-separated subset of {FIGURES}"
    )
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(FIGURES))
    if unknown:
        parser.error(f"unknown figure(s) {unknown}; choose from {FIGURES}")
    # gcs leaves baseline threads sleeping, so it runs last.
    order = [name for name in FIGURES if name in chosen]

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    bench = Bench(quick=args.quick, use_uvloop=args.uvloop, log=log)
    load_before = machine()["loadavg_1m"]
    started = time.monotonic()
    figures = [getattr(bench, name)() for name in order]
    elapsed = time.monotonic() - started
    command = " ".join([".venv/bin/python -m bench.engine_throughput", *(argv or sys.argv[1:])])
    info = {**machine(), "loadavg_1m_before": load_before}
    if args.json:
        print(
            json.dumps(
                {
                    "command": command,
                    "machine": info,
                    "elapsed_s": elapsed,
                    "figures": [asdict(f) for f in figures],
                },
                indent=2,
            )
        )
    else:
        print(markdown(info, command, figures))
        print(f"\n_Whole run: {elapsed:.0f} s._")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
