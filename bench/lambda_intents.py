"""Lambda intents: concurrent single-op invocations meeting in the bucket (SPEC §11).

Each simulated execution environment is one handler from ``obque.broker.aws.build_handler``
(FastAPI through mangum, one ``IntentEngine`` per queue), driven by its own OS thread with
its own event loop, one invocation at a time, as Lambda does. Every invocation is a
Function URL event (payload format 2.0) pushing one job. All handlers share ONE opened
``mem://…?latency=s3`` root, so its request counters see every environment's requests.
``build_handler`` opens its own root from the settings; to share one, the benchmark hands
it a ``QueueRegistry`` bound to the shared root (a module attribute swapped while the
handlers are built; nothing else about the handler changes).

Modes, each at several concurrencies:

- **adaptive**: the shipped engine: direct CAS until a write loses twice, then intents
  for ``contention_memory_s``;
- **direct**: every invocation commits its own operation by CAS (re-read and retry on
  conflict): the SPEC's no-broker baseline;
- **intents**: every invocation writes an intent, always.

Ops per CAS write = operations answered in the window / queue-file writes (intent PUTs
are counted apart). "Lost" = an invocation answered 200 with a job id that is not in the
queue file afterwards.

Run: ``.venv/bin/python -m bench.lambda_intents`` (about 45 s; ``--quick`` shorter).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from bench._common import commit_period, machine, markdown_table, percentile
from bench._drive import QUEUE_CONFIG, _Gate
from obque.broker import aws
from obque.broker.queues import QueueRegistry
from obque.broker.settings import BrokerSettings
from obque.commit import IntentEngine, create_queue
from obque.core import Op, Result
from obque.store import Backend, Root, Store, open_root
from obque.store.memory import MemoryBackend

__all__ = ["LambdaRun", "main", "run_all", "run_lambda"]

QUEUE = "q"
BODY = json.dumps({"jobs": [{"payload": {"video": "a.mp4"}}]})


class DirectEngine(IntentEngine):
    """Every invocation commits its own operation by CAS (the no-broker baseline)."""

    def run(self, op: Op) -> Result:
        with self._lock:
            _, results = self.committer.commit([op])
            self._count(1)
            return results[0]


class IntentsOnlyEngine(IntentEngine):
    """Every invocation goes through an intent, contended or not."""

    def run(self, op: Op) -> Result:
        with self._lock:
            return self._via_intent(op)


ENGINES: dict[str, type[IntentEngine]] = {
    "adaptive": IntentEngine,
    "direct": DirectEngine,
    "intents": IntentsOnlyEngine,
}


class _CountingGate(_Gate):
    """The benchmark's gate, also counting intent PUTs (queue-file writes are the rest)."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.intent_puts = 0
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes, expected: str | None) -> str:
        if "/intents/" in key:
            with self._lock:
                self.intent_puts += 1
        return super().put(key, data, expected)


class _Context:
    """The part of Lambda's context object the handler reads."""

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def push_event() -> dict[str, Any]:
    path = f"/v1/queues/{QUEUE}/push"
    now = time.time()
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {
            "host": "bench.lambda-url.us-east-1.on.aws",
            "content-type": "application/json",
            "content-length": str(len(BODY)),
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "bench",
            "domainName": "bench.lambda-url.us-east-1.on.aws",
            "domainPrefix": "bench",
            "http": {
                "method": "POST",
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "bench",
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "timeEpoch": int(now * 1000),
        },
        "body": BODY,
        "isBase64Encoded": False,
    }


@contextmanager
def _shared_root(
    root: Root, engine: type[IntentEngine], registries: list[QueueRegistry]
) -> Iterator[None]:
    """While running: ``build_handler``'s registry uses ``root``, its engine
    class is ``engine``, and every registry is recorded (to read the engines' stats)."""

    def registry(settings: BrokerSettings, **kw: Any) -> QueueRegistry:
        made = QueueRegistry(settings, root=root, **kw)
        registries.append(made)
        return made

    saved = aws.QueueRegistry, aws.IntentEngine
    aws.QueueRegistry, aws.IntentEngine = registry, engine  # type: ignore[assignment,misc]
    try:
        yield
    finally:
        aws.QueueRegistry, aws.IntentEngine = saved  # type: ignore[misc]


@dataclass
class LambdaRun:
    mode: str
    callers: int
    profile: str
    seconds: float
    ops: int
    rate: float
    limit: float
    cas_writes: int
    intent_puts: int
    reads: int
    lists: int
    deletes: int
    conflicts: int
    ops_per_cas: float
    failed: int
    lost: int
    p50_ms: float
    p99_ms: float
    per_op: dict[str, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list, repr=False)


def run_lambda(
    mode: str, callers: int, seconds: float, warmup: float = 1.0, profile: str = "s3"
) -> LambdaRun:
    bucket = f"bench-lambda-{uuid.uuid4().hex[:10]}"
    opened = open_root(f"mem://{bucket}/?latency={profile}")
    gate = _CountingGate(opened.backend)
    root = Root(gate, opened.prefix)
    counts = opened.backend.counts
    assert counts is not None
    create_queue(root.queue(QUEUE), QUEUE, QUEUE_CONFIG)
    settings = BrokerSettings(root=opened.uri, mode="serverless")
    registries: list[QueueRegistry] = []
    # Engines are made on each handler's first request: keep the swap for the whole run.
    with _shared_root(root, ENGINES[mode], registries):
        handlers = [aws.build_handler(settings) for _ in range(callers)]
        return _drive(
            mode, callers, profile, seconds, warmup, opened, gate, root, handlers, registries
        )


def _drive(
    mode: str,
    callers: int,
    profile: str,
    seconds: float,
    warmup: float,
    opened: Root,
    gate: _CountingGate,
    root: Root,
    handlers: list[Any],
    registries: list[QueueRegistry],
) -> LambdaRun:
    counts = opened.backend.counts
    assert counts is not None

    ids: list[str] = []
    done: list[tuple[float, float]] = []  # (finished, latency)
    failed = [0]
    go, stop = threading.Event(), threading.Event()
    lock = threading.Lock()

    def environment(handler: Callable[[dict[str, Any], Any], dict[str, Any]]) -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())  # mangum runs the app on it
        context = _Context()
        go.wait()
        while not stop.is_set():
            started = time.monotonic()
            answer = handler(push_event(), context)
            ended = time.monotonic()
            if answer["statusCode"] != 200:
                if not stop.is_set():
                    with lock:
                        failed[0] += 1
                continue
            got = json.loads(answer["body"])["ids"]
            with lock:
                ids.extend(got)
                done.append((ended, ended - started))

    threads = [threading.Thread(target=environment, args=(h,), daemon=True) for h in handlers]
    for t in threads:
        t.start()
    go.set()
    time.sleep(warmup)

    def snapshot() -> tuple[dict[str, int], int]:
        return counts.as_dict(), gate.intent_puts

    c0, i0 = snapshot()
    start = time.monotonic()
    time.sleep(seconds)
    c1, i1 = snapshot()
    end = time.monotonic()
    stop.set()
    gate.closed = True  # invocations still retrying fail now (not counted as lost)
    for t in threads:
        t.join(timeout=30)
    for r in registries:
        r.close()

    state = Store(opened.backend, root.queue(QUEUE).key).read()
    assert state is not None
    from obque.core.codec import decode_state

    in_file = decode_state(state.data, "bench").jobs
    lost = sum(1 for i in ids if i not in in_file)
    MemoryBackend.forget(opened.backend.uri("").split("/")[2])

    delta = {k: c1[k] - c0[k] for k in c1}
    intent_puts = i1 - i0
    cas = delta["writes"] - intent_puts
    lat = [x for t, x in done if start <= t <= end]
    ops = len(lat)
    per_op = {
        "intent PUT": intent_puts / ops if ops else 0.0,
        "LIST": delta["lists"] / ops if ops else 0.0,
        "GET": delta["reads"] / ops if ops else 0.0,
        "CAS": cas / ops if ops else 0.0,
        "DELETE": delta["deletes"] / ops if ops else 0.0,
    }
    return LambdaRun(
        mode=mode,
        callers=callers,
        profile=profile,
        seconds=end - start,
        ops=ops,
        rate=ops / (end - start),
        limit=callers / commit_period(profile),
        cas_writes=cas,
        intent_puts=intent_puts,
        reads=delta["reads"],
        lists=delta["lists"],
        deletes=delta["deletes"],
        conflicts=delta["conflicts"],
        ops_per_cas=ops / cas if cas else float("inf"),
        failed=failed[0],
        lost=lost,
        p50_ms=percentile(lat, 0.5) * 1000 if lat else float("nan"),
        p99_ms=percentile(lat, 0.99) * 1000 if lat else float("nan"),
        per_op=per_op,
        latencies=lat,
    )


PLAN: list[tuple[str, int]] = [
    ("adaptive", 64),
    ("intents", 64),
    ("direct", 64),
    ("adaptive", 4),
    ("direct", 4),
    ("intents", 4),
    ("adaptive", 2),
    ("direct", 2),
    ("intents", 2),
    ("adaptive", 1),
    ("intents", 1),
]
QUICK_PLAN = [*PLAN[:3], ("direct", 2), ("intents", 2)]


def run_all(quick: bool = False, log: Callable[[str], None] = print) -> list[LambdaRun]:
    runs = []
    for mode, callers in QUICK_PLAN if quick else PLAN:
        secs = (2.0 if quick else 4.0) if callers == 64 else (1.5 if quick else 3.0)
        log(f"lambda: {mode}, {callers} environments, {secs:.1f} s")
        runs.append(run_lambda(mode, callers, secs, warmup=0.5 if quick else 1.0))
    return runs


def markdown(runs: list[LambdaRun]) -> str:
    head = [
        "mode",
        "environments",
        "ops/s",
        "C/W",
        "ops / CAS write",
        "lost",
        "failed",
        "p50 ms",
        "p99 ms",
        "intent PUT",
        "LIST",
        "GET",
        "CAS",
        "DELETE",
        "requests / op",
        "conflicts",
    ]
    rows = []
    for r in runs:
        total = sum(r.per_op.values())
        rows.append(
            [
                r.mode,
                r.callers,
                f"{r.rate:,.1f}",
                f"{r.limit:,.0f}",
                f"{r.ops_per_cas:.1f}",
                r.lost,
                r.failed,
                f"{r.p50_ms:.0f}",
                f"{r.p99_ms:.0f}",
                *(f"{r.per_op[k]:.2f}" for k in ("intent PUT", "LIST", "GET", "CAS", "DELETE")),
                f"{total:.2f}",
                r.conflicts,
            ]
        )
    return markdown_table(head, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # closing the gate makes handlers log 503s
    runs = run_all(args.quick, log=lambda m: print(m, file=sys.stderr, flush=True))
    if args.json:
        out = [{k: v for k, v in asdict(r).items() if k != "latencies"} for r in runs]
        print(json.dumps({"machine": machine(), "runs": out}, indent=2))
    else:
        print(markdown(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
