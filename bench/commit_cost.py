"""Commit cost of the pure core with a deep queue (SPEC §11, issue 2).

Measures, on files of 1k / 10k / 100k jobs:

- cold decode: ``decode_state`` of the whole file (what a broker or a Lambda does on start
  and after every lost compare-and-set);
- commit: ``apply`` of a mixed batch of single-job operations, then ``encode_state``;
- growth: depth ratios, and batch-size sweeps at 10k and 100k showing O(jobs + batch);
- a same-run codec baseline: orjson ``loads`` into dicts and ``dumps`` of the same file.

The base state is decoded from a real file, exactly as a broker would hold it (payloads are
``Raw`` views into the file's bytes). Each timed call is pure, so it is repeated on the same
base state; the median and best of N are reported. The garbage collector stays enabled, as
in production, but a full collection runs before each sample so that one sample does not
pay for the garbage of the previous one. Freeing a sample's results is not timed.

Run from the repository root: ``.venv/bin/python -m bench.commit_cost`` (about a minute;
``--json`` for machine-readable output, ``--quick`` for a smoke run at 1k and 10k jobs).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import msgspec
import orjson

from bench._common import machine, markdown_table
from obque.core import (
    Ack,
    Claim,
    ClaimResult,
    ItemsResult,
    LeaseRef,
    NewJob,
    Op,
    Push,
    PushResult,
    QueueConfig,
    QueueState,
    apply,
    decode_state,
    encode_state,
)
from obque.core.limits import MAX_CLAIM, MAX_INLINE_BYTES_LIMIT, MAX_JOBS_LIMIT, MAX_PUSH_BATCH

T0_MS = 1_764_432_000_000  # a fixed clock keeps runs reproducible
COMMIT_AT_MS = T0_MS + 1_000  # leases (30 s) taken at T0 are still held
BUILD_NONCE = bytes(range(32))
COMMIT_NONCE = bytes(range(32, 64))
WHERE = "bench/queue.json"

#: One group commit's arrival order: 4 pushes, 3 claims, 3 acks per 10 operations.
MIX = "PCAPCAPCAP"
KEYED_EVERY = 10  # ~10% of jobs carry a push key
CLAIMED_FRACTION = 0.01

DECODE_TARGET_MS = 80.0
COMMIT_TARGET_MS = 30.0


# -- workload ---------------------------------------------------------------------------


def payload(n: int, size: int) -> msgspec.Raw:
    """``{"video": "a.mp4", "n": n}``, padded to exactly ``size`` bytes when ``size`` > 0."""
    head = b'{"video":"a.mp4","n":%d' % n
    if size <= 0:
        return msgspec.Raw(head + b"}")
    pad = size - len(head) - len(b',"pad":""}')
    return msgspec.Raw(head + b',"pad":"' + b"x" * pad + b'"}')


def new_job(n: int, size: int, spilled: bool = False) -> NewJob:
    """A job of ``payload(n, size)``; ``spilled``: as the engine pushes it when the payload
    is above ``spill_payload_bytes`` (the file names an object instead)."""
    job = NewJob.of(payload(n, size), key=f"upload-{n}" if n % KEYED_EVERY == 0 else None)
    if not spilled:
        return job
    name = f"payloads/{T0_MS:013d}-{n:016x}.json"
    return dataclasses.replace(
        job, payload=msgspec.Raw(b"null"), spilled=name, spilled_bytes=len(job.payload)
    )


def build_file(depth: int, size: int, claimed: int, spilled: bool = False) -> bytes:
    """A queue file of ``depth`` jobs, the oldest ``claimed`` of them held by workers."""
    # The limits at their maximum: this measures commit cost at every size, not the caps.
    config = QueueConfig(max_jobs=MAX_JOBS_LIMIT, max_inline_bytes=MAX_INLINE_BYTES_LIMIT)
    state = QueueState.new("bench", config)
    pushes: list[Op] = [
        Push.of(new_job(n, size, spilled) for n in range(start, min(start + MAX_PUSH_BATCH, depth)))
        for start in range(0, depth, MAX_PUSH_BATCH)
    ]
    state, _ = apply(state, pushes, T0_MS, BUILD_NONCE)
    claims: list[Op] = [
        Claim.of(f"worker-{i}", min(MAX_CLAIM, claimed - start))
        for i, start in enumerate(range(0, claimed, MAX_CLAIM))
    ]
    state, _ = apply(state, claims, T0_MS, BUILD_NONCE)
    return encode_state(state)


def commit_batch(state: QueueState, size: int, batch: int, spilled: bool = False) -> list[Op]:
    """``batch`` single-job operations in ``MIX`` order; acks name leases held in ``state``."""
    held = (
        LeaseRef(job.id, job.claim.lease) for job in state.jobs.values() if job.claim is not None
    )
    fresh = state.next_seq + 1_000_000  # payload numbers unlike any in the file
    ops: list[Op] = []
    for i in range(batch):
        kind = MIX[i % len(MIX)]
        if kind == "P":
            ops.append(Push.of([new_job(fresh + i, size, spilled)]))
        elif kind == "C":
            ops.append(Claim.of(f"worker-{i}", 1))
        else:
            ops.append(Ack.of([next(held)]))
    return ops


def acks_in(batch: int) -> int:
    return sum(1 for i in range(batch) if MIX[i % len(MIX)] == "A")


def check_commit(state: QueueState, ops: list[Op]) -> None:
    """Make sure the timed batch does what it says: every op succeeds, none is a no-op."""
    _, results = apply(state, ops, COMMIT_AT_MS, COMMIT_NONCE)
    for op, result in zip(ops, results, strict=True):
        ok = (
            (isinstance(result, PushResult) and not result.duplicates)
            or (isinstance(result, ClaimResult) and len(result.jobs) == 1)
            or (isinstance(result, ItemsResult) and all(r.ok for r in result.results))
        )
        if not ok:
            raise AssertionError(f"benchmark batch misbehaves: {op!r} -> {result!r}")


# -- timing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    median_ms: float
    best_ms: float
    runs: int

    def __str__(self) -> str:
        return f"{self.median_ms:.2f} ({self.best_ms:.2f})"


def measure(fn: Callable[[], object], budget_s: float = 1.5, lo: int = 5, hi: int = 40) -> Timing:
    """Median and best of N calls of ``fn``; N fits ``budget_s`` after one warm-up call."""
    samples: list[float] = []
    runs = 1
    while len(samples) < runs + 1:
        gc.collect()
        start = time.perf_counter()
        out = fn()
        elapsed = time.perf_counter() - start
        del out  # freeing the result is not part of the measured call
        samples.append(elapsed)
        if len(samples) == 1:
            runs = max(lo, min(hi, int(budget_s / max(elapsed, 1e-6))))
    timed = samples[1:]
    return Timing(statistics.median(timed) * 1e3, min(timed) * 1e3, len(timed))


# -- cases -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    depth: int
    payload_bytes: int  # 0: the small payload {"video": "a.mp4", "n": i}
    spilled: bool  # payloads live in their own objects; the file names them
    claimed: int
    file_mb: float
    decode: Timing
    apply: Timing
    encode: Timing
    commit: Timing
    commit_gc_off: Timing
    decode_gc_off: Timing
    orjson_loads: Timing
    orjson_loads_gc_off: Timing
    orjson_dumps: Timing


@dataclass(frozen=True)
class SweepPoint:
    depth: int
    claimed: int
    batch: int
    apply: Timing
    encode: Timing
    commit: Timing


@dataclass(frozen=True)
class Fit:
    """commit ms = fixed_ms + per_op_us * batch / 1000, least squares over a sweep."""

    depth: int
    fixed_ms: float
    per_op_us: float


@contextmanager
def gc_disabled() -> Iterator[None]:
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def commit_fn(state: QueueState, ops: list[Op]) -> Callable[[], object]:
    def commit() -> object:
        new, results = apply(state, ops, COMMIT_AT_MS, COMMIT_NONCE)
        return new, results, encode_state(new)  # all freed outside the timed call

    return commit


def measure_dumps(data: bytes, lo: int) -> Timing:
    as_dicts = orjson.loads(data)  # freed on return, before the commit is measured
    return measure(lambda: orjson.dumps(as_dicts), lo=lo)


def run_case(depth: int, size: int, batch: int = 1_000, spilled: bool = False) -> Case:
    claimed = max(int(depth * CLAIMED_FRACTION), acks_in(batch))
    data = build_file(depth, size, claimed, spilled)
    lo = 7 if size > 4096 else 5  # few, slow, noisy samples: take a few more

    # The codecs first, while only the file is alive, so msgspec and orjson allocate into
    # the same heap (a full collection's cost grows with every tracked object alive).
    decode = measure(lambda: decode_state(data, WHERE), lo=lo)
    orjson_loads = measure(lambda: orjson.loads(data), lo=lo)
    with gc_disabled():
        decode_gc_off = measure(lambda: decode_state(data, WHERE), lo=lo)
        orjson_loads_gc_off = measure(lambda: orjson.loads(data), lo=lo)
    orjson_dumps = measure_dumps(data, lo)

    state = decode_state(data, WHERE)
    ops = commit_batch(state, size, batch, spilled)
    check_commit(state, ops)
    after, _ = apply(state, ops, COMMIT_AT_MS, COMMIT_NONCE)
    commit = commit_fn(state, ops)
    apply_t = measure(lambda: apply(state, ops, COMMIT_AT_MS, COMMIT_NONCE), lo=lo)
    encode = measure(lambda: encode_state(after), lo=lo)
    commit_t = measure(commit, lo=lo)
    with gc_disabled():
        commit_gc_off = measure(commit, lo=lo)
    return Case(
        depth=depth,
        payload_bytes=size,
        spilled=spilled,
        claimed=claimed,
        file_mb=len(data) / 1e6,
        decode=decode,
        apply=apply_t,
        encode=encode,
        commit=commit_t,
        commit_gc_off=commit_gc_off,
        decode_gc_off=decode_gc_off,
        orjson_loads=orjson_loads,
        orjson_loads_gc_off=orjson_loads_gc_off,
        orjson_dumps=orjson_dumps,
    )


def run_sweep(depth: int, batches: list[int]) -> list[SweepPoint]:
    claimed = max(int(depth * CLAIMED_FRACTION), acks_in(max(batches)))
    state = decode_state(build_file(depth, 0, claimed), WHERE)
    points = []
    for batch in batches:
        ops = commit_batch(state, 0, batch)
        check_commit(state, ops)
        after, _ = apply(state, ops, COMMIT_AT_MS, COMMIT_NONCE)
        points.append(
            SweepPoint(
                depth=depth,
                claimed=claimed,
                batch=batch,
                apply=measure(lambda: apply(state, ops, COMMIT_AT_MS, COMMIT_NONCE)),  # noqa: B023
                encode=measure(lambda: encode_state(after)),  # noqa: B023
                commit=measure(commit_fn(state, ops)),
            )
        )
    return points


def fit(points: list[SweepPoint]) -> Fit:
    slope, intercept = statistics.linear_regression(
        [float(p.batch) for p in points], [p.commit.median_ms for p in points]
    )
    return Fit(depth=points[0].depth, fixed_ms=intercept, per_op_us=slope * 1e3)


# -- report ------------------------------------------------------------------------------


def payload_label(size: int, spilled: bool = False) -> str:
    label = "small (~25 B)" if size <= 0 else f"{size // 1024} KiB"
    return f"{label}, spilled" if spilled else label


def verdict(value: float, target: float) -> str:
    return f"{'met' if value <= target else 'MISSED'} ({value:.1f} ms, target <= {target:.0f} ms)"


def ratio(a: Timing, b: Timing) -> str:
    return f"{a.median_ms / b.median_ms:.1f}x"


def markdown(info: dict[str, Any], cases: list[Case], sweeps: dict[int, list[SweepPoint]]) -> str:
    out = [
        f"Machine: {info['nproc']} CPUs ({info['cpu_model']}), {info['implementation']} "
        f"{info['python']}, msgspec {info['msgspec']}, orjson {info['orjson']}, "
        f"{info['platform']}; 1-minute load average at start {info['load_1m']:.2f}.",
        "",
        "Times in ms: median (best) of N, gc enabled unless the column says otherwise. Commit = "
        "`apply` of 1,000 single-job operations (400 pushes, 300 claims of 1, 300 acks, "
        "interleaved) then `encode_state`, timed as one call.",
        "",
        markdown_table(
            [
                "jobs",
                "payload",
                "claimed",
                "file MB",
                "cold decode",
                "apply",
                "encode",
                "**commit**",
                "commit, gc off",
            ],
            [
                [
                    f"{c.depth:,}",
                    payload_label(c.payload_bytes, c.spilled),
                    f"{c.claimed:,}",
                    f"{c.file_mb:,.1f}",
                    c.decode,
                    c.apply,
                    c.encode,
                    f"**{c.commit}**",
                    c.commit_gc_off,
                ]
                for c in cases
            ],
        ),
        "",
        "Codec baseline on the same file: `decode_state` (msgspec, typed, payloads left raw) "
        "against `orjson.loads` into dicts; `encode_state` against `orjson.dumps` of those "
        "dicts.",
        "",
        markdown_table(
            [
                "jobs",
                "payload",
                "decode_state",
                "orjson loads",
                "loads / decode",
                "decode, gc off",
                "loads, gc off",
                "encode_state",
                "orjson dumps",
            ],
            [
                [
                    f"{c.depth:,}",
                    payload_label(c.payload_bytes, c.spilled),
                    c.decode,
                    c.orjson_loads,
                    ratio(c.orjson_loads, c.decode),
                    c.decode_gc_off,
                    c.orjson_loads_gc_off,
                    c.encode,
                    c.orjson_dumps,
                ]
                for c in cases
            ],
        ),
    ]
    small = {c.depth: c for c in cases if c.payload_bytes == 0}
    if len(small) > 1:
        out += [
            "",
            "Growth with depth (small payloads, ratio of medians; linear in jobs is 10x):",
            "",
            markdown_table(
                ["ratio", "cold decode", "apply", "encode", "commit"],
                [
                    [
                        f"{hi // 1000}k / {lo // 1000}k",
                        ratio(small[hi].decode, small[lo].decode),
                        ratio(small[hi].apply, small[lo].apply),
                        ratio(small[hi].encode, small[lo].encode),
                        ratio(small[hi].commit, small[lo].commit),
                    ]
                    for lo, hi in itertools.pairwise(sorted(small))
                ],
            ),
        ]
    if sweeps:
        fits = [fit(points) for points in sweeps.values()]
        out += [
            "",
            "Batch-size sweep (same 4:3:3 mix, small payloads):",
            "",
            markdown_table(
                [
                    "jobs",
                    "claimed",
                    "batch",
                    "apply",
                    "encode",
                    "commit",
                    "commit / smallest batch",
                ],
                [
                    [
                        f"{p.depth:,}",
                        f"{p.claimed:,}",
                        f"{p.batch:,}",
                        p.apply,
                        p.encode,
                        p.commit,
                        f"{p.commit.median_ms / points[0].commit.median_ms:.2f}x",
                    ]
                    for points in sweeps.values()
                    for p in points
                ],
            ),
            "",
            "Least-squares fit, commit ms = fixed + per-op cost x batch. O(jobs + batch) means "
            "the fixed part grows with jobs and the per-op cost does not; O(jobs x batch) "
            "would make the per-op cost grow 10x with the queue.",
            "",
            markdown_table(
                ["jobs", "fixed (ms)", "per op (us)"],
                [[f"{f.depth:,}", f"{f.fixed_ms:.2f}", f"{f.per_op_us:.2f}"] for f in fits],
            ),
        ]
    if (top := small.get(100_000)) is not None:
        out += [
            "",
            "Targets at 100,000 jobs: cold decode "
            f"{verdict(top.decode.median_ms, DECODE_TARGET_MS)}; "
            f"commit {verdict(top.commit.median_ms, COMMIT_TARGET_MS)}.",
        ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Commit cost of the pure core (SPEC §11).")
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1k and 10k jobs, small payloads only"
    )
    args = parser.parse_args(argv)
    # Other work on the machine skews these numbers: record how busy it was when we began.
    info = {**machine(), "orjson": orjson.__version__, "load_1m": os.getloadavg()[0]}

    depths = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    cases = [run_case(depth, 0) for depth in depths]
    if not args.quick:
        cases += [run_case(10_000, size) for size in (1024, 64 * 1024)]
        cases.append(run_case(10_000, 64 * 1024, spilled=True))
    batches = [10, 100, 1_000, 5_000]
    sweeps = {depth: run_sweep(depth, batches) for depth in depths[1:]}

    if args.json:
        report = {
            "machine": info,
            "cases": [asdict(c) for c in cases],
            "sweeps": [asdict(p) for points in sweeps.values() for p in points],
            "fits": [asdict(fit(points)) for points in sweeps.values()],
        }
        print(json.dumps(report, indent=2))
    else:
        print(markdown(info, cases, sweeps))


if __name__ == "__main__":
    main()
