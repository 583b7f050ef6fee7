"""Large payloads: the group-commit engine with 64 KiB payloads kept in the queue file
(``spill_payload_bytes`` at its maximum: the same-run baseline) against spilled to their
own objects (the default, 16 KiB).

The store is a real local directory (``file://``, every byte written and fsynced) behind
the S3 latency model (``?latency=s3``: 20 ms reads, 60 ms writes), so a commit costs what
it costs to encode and write the file, plus the modelled round trip. The queue starts
``--depth`` jobs deep; ``--producers`` threads push one job at a time while ``--workers``
threads claim one and ack it, for ``--seconds``. Reported: pushes and acks per second,
push latency, the queue file's size, and the store requests per job.

Run from the repository root: ``.venv/bin/python -m bench.payload_spill`` (about a
minute per depth; ``--depth 1000`` for one); ``--json`` for machine-readable output.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from bench._common import machine, markdown_table, percentile
from obque.commit import Committer, QueueEngine, create_queue
from obque.core import Ack, Claim, ClaimResult, LeaseRef, NewJob, Op, Push
from obque.core.limits import MAX_INLINE_BYTES_LIMIT, MAX_PAYLOAD_BYTES_LIMIT
from obque.store import open_store

SIZE = 64 * 1024


@dataclass(frozen=True)
class Result:
    mode: str  # "inline" or "spilled"
    depth: int
    pushes_per_s: float
    acks_per_s: float
    push_p50_ms: float
    push_p99_ms: float
    file_mb: float
    commits: int
    requests_per_job: float


def payload(n: int) -> dict[str, Any]:
    return {"n": n, "blob": "x" * (SIZE - 24)}


def run(mode: str, depth: int, producers: int, workers: int, seconds: float) -> Result:
    spill = 16_384 if mode == "spilled" else MAX_PAYLOAD_BYTES_LIMIT
    with tempfile.TemporaryDirectory(prefix="obque-spill-") as tmp:
        uri = f"file://{tmp}/queue.json?latency=s3"
        store = open_store(uri)
        config: dict[str, object] = {
            "max_payload_bytes": 1_048_576,
            "spill_payload_bytes": spill,
            # The inline baseline holds depth x 64 KiB in the file: lift the byte cap.
            "max_inline_bytes": MAX_INLINE_BYTES_LIMIT,
        }
        create_queue(store, "queue", config)
        engine = QueueEngine(store)
        # Prefill through the engine's own spilling (100 jobs per push).
        for start in range(0, depth, 100):
            batch = [NewJob.of(payload(n)) for n in range(start, min(start + 100, depth))]
            engine.run(Push.of(batch))
        assert store.counts is not None
        before = store.counts.as_dict()
        stop = time.monotonic() + seconds
        latencies: list[float] = []
        acked = [0]
        lock = threading.Lock()

        def produce(index: int) -> None:
            n = 10_000_000 * (index + 1)
            while time.monotonic() < stop:
                start = time.perf_counter()
                engine.run(Push.of([NewJob.of(payload(n))]))
                with lock:
                    latencies.append(time.perf_counter() - start)
                n += 1

        def work(index: int) -> None:
            while time.monotonic() < stop:
                got = engine.run(Claim(f"w{index}", max=1))
                assert isinstance(got, ClaimResult)
                ops: list[Op] = [Ack((LeaseRef(j.id, j.lease),)) for j in got.jobs]
                for op in ops:
                    engine.run(op)
                with lock:
                    acked[0] += len(got.jobs)

        threads = [threading.Thread(target=produce, args=(i,)) for i in range(producers)]
        threads += [threading.Thread(target=work, args=(i,)) for i in range(workers)]
        began = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - began
        after = store.counts.as_dict()
        requests = sum(after[k] - before[k] for k in ("reads", "writes", "lists", "deletes"))
        snap = Committer(open_store(uri)).store.read()
        assert snap is not None
        engine.close()
        jobs = len(latencies) + acked[0]
        return Result(
            mode=mode,
            depth=depth,
            pushes_per_s=len(latencies) / elapsed,
            acks_per_s=acked[0] / elapsed,
            push_p50_ms=statistics.median(latencies) * 1000,
            push_p99_ms=percentile(latencies, 0.99) * 1000,
            file_mb=len(snap.data) / 1e6,
            commits=engine.stats.commits,
            requests_per_job=requests / max(jobs, 1),
        )


def table(results: list[Result]) -> str:
    """One row per run; "vs inline" compares pushes+acks with the inline run of that depth."""
    base = {r.depth: r for r in results if r.mode == "inline"}
    rows = [
        [
            r.mode,
            f"{r.depth:,}",
            f"{r.pushes_per_s:,.1f}",
            f"{r.acks_per_s:,.1f}",
            _vs(r, base.get(r.depth)),
            f"{r.push_p50_ms:,.0f}",
            f"{r.push_p99_ms:,.0f}",
            f"{r.file_mb:,.2f}",
            f"{r.requests_per_job:.2f}",
        ]
        for r in results
    ]
    return markdown_table(
        [
            "payloads",
            "depth",
            "pushes/s",
            "acks/s",
            "vs inline",
            "push p50 ms",
            "push p99 ms",
            "file MB at end",
            "store requests per job",
        ],
        rows,
    )


def _vs(run: Result, base: Result | None) -> str:
    if base is None:
        return "-"
    return f"{(run.pushes_per_s + run.acks_per_s) / (base.pushes_per_s + base.acks_per_s):.1f}x"


def markdown(info: dict[str, Any], results: list[Result], args: argparse.Namespace) -> str:
    return "\n".join(
        [
            f"Machine: {info['nproc']} CPUs ({info['cpu_model']}), {info['implementation']} "
            f"{info['python']}; load average at start {info['loadavg_1m']}.",
            "",
            f"64 KiB payloads, `file://` + `?latency=s3`, {args.producers} pushing and "
            f"{args.workers} claim+ack threads for {args.seconds:g} s on one engine.",
            "",
            table(results),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--producers", type=int, default=16)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    info = machine()
    results = [
        run(mode, depth, args.producers, args.workers, args.seconds)
        for depth in args.depth
        for mode in ("inline", "spilled")
    ]
    if args.json:
        print(json.dumps({"machine": info, "results": [asdict(r) for r in results]}, indent=2))
    else:
        print(markdown(info, results, args))


if __name__ == "__main__":
    main()
