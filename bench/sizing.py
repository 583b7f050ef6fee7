"""What a queue's size costs each commit (docs/reliability.md, "Sizing").

Builds three queues through a ``Committer`` (the way a broker writes them) and times, on
each: a cold ``decode_state`` of the file, ``encode_state`` of the decoded state, the
BLAKE2b content hash the file store takes of the file (its compare-and-set token, taken of
the current file and of the new one on every write), and a one-operation commit (one push
of one small job) through ``mem://`` (apply + encode, no I/O) and through ``file://``
(apply, encode, read and hash the current file, write, fsync, rename, hash).

- 10,000 and 100,000 small jobs (payload ``{"video":"a.mp4","n":i}``);
- a queue at the default ``max_inline_bytes`` (64 MiB): 4,100 jobs whose payloads are
  16,000 bytes each, just below the default ``spill_payload_bytes`` (16 KiB), so they stay
  in the file.

Each figure is the median of N calls (decode/encode/hash 5, commits 15). Run from the
repository root: ``.venv/bin/python -m bench.sizing`` (about a minute on an idle machine;
``--json`` prints the figures as JSON). The 1-minute load average before and after is
printed with them, since other work on a shared machine skews every timing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

from bench._common import machine, markdown_table
from obque.commit import Committer, create_queue
from obque.core import NewJob, Push, decode_state, encode_state
from obque.store import open_store

BIG_PAYLOAD = 16_000  # bytes of JSON, below the default spill_payload_bytes (16,384)
CASES = [("small", 10_000), ("small", 100_000), ("16,000 B", 4_100)]


def _payload(kind: str, n: int) -> Any:
    if kind == "small":
        return {"video": "a.mp4", "n": n}
    pad = BIG_PAYLOAD - len(json.dumps({"n": n, "d": ""}, separators=(",", ":")))
    return {"n": n, "d": "x" * pad}


def _median_ms(call: Callable[[], object], times: int) -> float:
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(samples), 1)


def _one_op_commit_ms(committer: Committer, times: int) -> float:
    def commit() -> None:
        committer.commit([Push.of([NewJob.of({"video": "b.mp4"})])])

    commit()  # warm-up
    return _median_ms(commit, times)


def _build(uri: str, kind: str, jobs: int) -> Committer:
    store = open_store(uri)
    create_queue(store, "q", {"max_jobs": 1_000_000, "max_inline_bytes": 1 << 30})
    committer = Committer(store, trust_cache=True)
    step = 1000 if kind == "small" else 100
    for start in range(0, jobs, step):
        batch = [NewJob.of(_payload(kind, n)) for n in range(start, min(jobs, start + step))]
        committer.commit([Push.of(batch)])
    return committer


def measure(kind: str, jobs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        on_file = _build(f"file://{directory}/q.json", kind, jobs)
        with open(os.path.join(directory, "q.json"), "rb") as f:
            data = f.read()
        state = decode_state(data, "sizing")
        figures = {
            "jobs": jobs,
            "payload": kind,
            "file_mb": round(len(data) / 1e6, 1),
            "cold_decode_ms": _median_ms(lambda: decode_state(data, "sizing"), 5),
            "encode_ms": _median_ms(lambda: encode_state(state), 5),
            "blake2b_ms": _median_ms(lambda: hashlib.blake2b(data, digest_size=16).digest(), 5),
            "commit_file_ms": _one_op_commit_ms(on_file, 15),
        }
    on_mem = Committer(open_store(f"mem://sizing-{uuid.uuid4().hex}/q.json"), trust_cache=True)
    on_mem.store.write(data, None)
    on_mem.refresh()
    figures["commit_mem_ms"] = _one_op_commit_ms(on_mem, 15)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    args = parser.parse_args()
    before = os.getloadavg()[0]
    rows = [measure(kind, jobs) for kind, jobs in CASES]
    about = machine() | {"loadavg_1m_before": round(before, 2)}
    about["loadavg_1m_after"] = about.pop("loadavg_1m")
    if args.json:
        print(json.dumps({"machine": about, "rows": rows}, indent=2))
        return
    print(f"Machine: {about}\n")
    header = ["jobs", "payload", "file MB", "cold decode", "encode", "BLAKE2b of the file"]
    header += ["1-op commit, file://", "1-op commit, mem://"]
    keys = ["payload", "file_mb", "cold_decode_ms", "encode_ms", "blake2b_ms"]
    keys += ["commit_file_ms", "commit_mem_ms"]
    table = [[f"{r['jobs']:,}", *(r[key] for key in keys)] for r in rows]
    print("Times in ms, medians.\n")
    print(markdown_table(header, table))


if __name__ == "__main__":
    main()
