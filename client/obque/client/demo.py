"""``obque demo``: a broker, producers and workers on a local root, end to end.

Everything runs in this process but talks HTTP to a real broker on loopback, exactly as
a deployment would: producers push through ``Client``, a ``Worker`` pool claims, acks and
occasionally fails jobs (retried by the queue), and the summary shows how few store
writes the group commit needed.

By default the queue lives under a fresh temporary folder, removed at the end, so every
run starts from an empty queue. With a root of the user's choosing the queue file stays,
and may hold jobs and counters from earlier runs: the demo therefore counts only the jobs
*it* pushed (their ids) and the commits made while it ran, never the file's lifetime
counters.
"""

from __future__ import annotations

import random
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from obque.client.jobs import Job
from obque.client.sync import Client
from obque.client.worker import Worker
from obque.commit import create_queue
from obque.core import (
    InvalidRequest,
    InvalidStoreURI,
    ObqueError,
    StoreUnavailable,
    decode_state,
)
from obque.store import Store, open_root

__all__ = ["DemoOptions", "DemoResult", "run_demo"]

#: The demo gives up when no job of its own was acked for this long (a stuck run).
STALL_SECONDS = 60.0


@dataclass(frozen=True)
class DemoOptions:
    #: None: a fresh temporary folder, removed at the end.
    root: str | None = None
    queue: str = "demo"
    jobs: int = 1000
    producers: int = 64
    workers: int = 64
    latency: str | None = "s3"
    fail_rate: float = 0.02

    def check(self) -> None:
        for name, value, low in (
            ("jobs", self.jobs, 0),
            ("producers", self.producers, 1),
            ("workers", self.workers, 1),
        ):
            if value < low:
                raise InvalidRequest(f"--{name} must be at least {low}, got {value}")


@dataclass
class DemoResult:
    jobs: int
    seconds: float
    acked: int
    lost: int
    retried: int
    commits: int
    store_writes: int
    operations: int
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def jobs_per_second(self) -> float:
        return self.acked / self.seconds if self.seconds > 0 else 0.0

    @property
    def ops_per_commit(self) -> float:
        return self.operations / max(self.commits, 1)

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _with_latency(root: str, latency: str | None) -> str:
    if not latency or latency == "none":
        return root
    return f"{root}{'&' if '?' in root else '?'}latency={latency}"


def _await_advertised(store: Store, url: str, timeout: float = 10.0) -> None:
    """Wait until the broker has written itself into the queue file, so clients find it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = store.read()
        if snap is not None:
            broker = decode_state(snap.data, store.uri).broker
            if broker is not None and broker.url == url:
                return
        time.sleep(0.05)
    raise StoreUnavailable(f"the demo broker did not advertise itself in {store.uri}")


class _Tally:
    """What the producers and workers did, keyed by the ids this run pushed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pushed_at: dict[str, float] = {}
        self.acked_at: dict[str, float] = {}
        self.failures = 0
        self.push_errors: list[BaseException] = []

    def acked_ours(self) -> int:
        with self.lock:
            return sum(1 for job_id in self.acked_at if job_id in self.pushed_at)


def run_demo(opts: DemoOptions, out: TextIO, progress_to: TextIO) -> DemoResult:
    """Run the demo, showing progress bars on ``progress_to`` and the summary on ``out``."""
    opts.check()
    temporary = opts.root is None
    base = Path(tempfile.mkdtemp(prefix="obque-demo-")).as_uri() + "/" if temporary else None
    try:
        return _run(opts, base or str(opts.root), out, progress_to, temporary)
    finally:
        if base is not None:
            shutil.rmtree(base.removeprefix("file://"), ignore_errors=True)


def _run(
    opts: DemoOptions, base: str, out: TextIO, progress_to: TextIO, temporary: bool
) -> DemoResult:
    import uvicorn

    from obque.broker import BrokerSettings, create_app

    root_uri = _with_latency(base, opts.latency)
    try:
        root = open_root(root_uri)
    except InvalidStoreURI as exc:  # name the user's --root, not the one with ?latency=
        hint = f"; for a folder use file://{base.rstrip('/')}/" if "://" not in base else ""
        raise InvalidStoreURI(f"--root: {exc.message.replace(root_uri, base)}{hint}") from None
    store = root.queue(opts.queue)
    create_queue(store, opts.queue, {"lease_seconds": 30, "max_attempts": 5}, update=False)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    app = create_app(BrokerSettings(root=root_uri, advertise=url, broker_timeout=5))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, name="obque-demo-broker", daemon=True)
    thread.start()
    started = time.monotonic()
    while not server.started:
        if not thread.is_alive() or time.monotonic() - started > 15:
            raise StoreUnavailable(f"the demo broker could not start on {url}")
        time.sleep(0.02)
    try:
        _await_advertised(store, url)
        return _drive(opts, app, store.uri, url, root.uri, out, progress_to, temporary)
    finally:
        server.should_exit = True
        thread.join(10)


def _drive(
    opts: DemoOptions,
    app: Any,
    queue_uri: str,
    url: str,
    root_uri: str,
    out: TextIO,
    progress_to: TextIO,
    temporary: bool,
) -> DemoResult:
    where = "a temporary folder, removed at the end" if temporary else root_uri
    out.write(f"broker   {url} serving {where} (store latency model: {opts.latency or 'none'})\n")
    out.write(
        f"queue    {opts.queue}: {opts.jobs} jobs, {opts.producers} producers, "
        f"{opts.workers} workers, {opts.fail_rate:.0%} of first attempts fail\n"
    )
    out.flush()
    tally = _Tally()
    rng = random.Random(7)

    def handle(job: Job) -> None:
        with tally.lock:
            fail = job.attempt == 1 and rng.random() < opts.fail_rate
        if fail:
            raise RuntimeError("simulated failure (the queue retries it)")

    def done(job: Job, error: BaseException | None) -> None:
        with tally.lock:
            if error is None and job.settled == "acked":
                tally.acked_at.setdefault(job.id, time.monotonic())
            elif error is not None:
                tally.failures += 1

    client = Client(queue_uri)
    first = client.stats()
    counts = app.state.queues.root.backend.counts  # the broker's own store requests
    ops_before = _ops_committed(app)
    writes_before = counts.as_dict().get("writes", 0) if counts else 0
    worker = Worker(client, handle, concurrency=opts.workers, worker_id="demo", on_done=done)
    consumer = threading.Thread(target=worker.run, name="obque-demo-worker", daemon=True)

    def produce(share: int) -> None:
        try:
            with Client(queue_uri) as producer:
                for i in range(share):
                    sent = time.monotonic()
                    job_id = producer.push({"task": "resize", "n": i})
                    with tally.lock:
                        tally.pushed_at[job_id] = sent
        except ObqueError as exc:
            with tally.lock:
                tally.push_errors.append(exc)

    shares = [
        opts.jobs // opts.producers + (i < opts.jobs % opts.producers)
        for i in range(opts.producers)
    ]
    producers = [threading.Thread(target=produce, args=(n,), daemon=True) for n in shares]
    began: list[float] = []

    def begin() -> None:
        began.append(time.monotonic())
        consumer.start()
        for p in producers:
            p.start()

    try:
        _watch(opts, tally, producers, progress_to, begin)
        elapsed = time.monotonic() - began[0]
        worker.stop()
        last = client.stats()
        if tally.push_errors:
            raise tally.push_errors[0]
        with tally.lock:
            ours = dict(tally.pushed_at)
            latencies = [
                (tally.acked_at[j] - t) * 1000 for j, t in ours.items() if j in tally.acked_at
            ]
            failures = tally.failures
        writes = (counts.as_dict().get("writes", 0) if counts else 0) - writes_before
        result = DemoResult(
            jobs=opts.jobs,
            seconds=elapsed,
            acked=len(latencies),
            lost=len(ours) - len(latencies),
            retried=failures,
            commits=int(last["commits"]) - int(first["commits"]),
            store_writes=writes,
            operations=_ops_committed(app) - ops_before,
            latencies_ms=latencies,
        )
        # Shown at once; the worker's last long poll may take a few seconds to return.
        _summarize(result, queue_uri, int(last["revision"]), temporary, out)
        return result
    finally:
        worker.stop()
        if consumer.is_alive():
            consumer.join(35)
        client.close()


def _ops_committed(app: Any) -> int:
    """Operations the demo broker's engines have committed so far (as counted by the
    engines themselves, the figure ``obque_ops_total`` reports)."""
    return sum(int(getattr(e.stats, "ops", 0)) for e in app.state.queues.known().values())


def _watch(
    opts: DemoOptions,
    tally: _Tally,
    producers: list[threading.Thread],
    progress_to: TextIO,
    begin: Callable[[], None],
) -> None:
    """Start the run (``begin``) under live progress bars, and show them until every job
    this run pushed was acked (or nothing moved for ``STALL_SECONDS``)."""
    console = Console(file=progress_to, highlight=False)
    columns = (
        TextColumn("{task.description:>7}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, refresh_per_second=8) as progress:
        pushed_bar = progress.add_task("pushed", total=opts.jobs)
        acked_bar = progress.add_task("acked", total=opts.jobs)
        begin()
        last_acked, last_move = -1, time.monotonic()
        while True:
            with tally.lock:
                pushed = len(tally.pushed_at)
            acked = tally.acked_ours()
            progress.update(pushed_bar, completed=pushed)
            progress.update(acked_bar, completed=acked)
            producing = any(p.is_alive() for p in producers)
            if not producing and acked >= pushed:
                return
            if acked != last_acked:
                last_acked, last_move = acked, time.monotonic()
            elif time.monotonic() - last_move > STALL_SECONDS:
                return  # reported as lost jobs
            time.sleep(0.1)


def _summarize(
    result: DemoResult, queue_uri: str, revision: int, temporary: bool, out: TextIO
) -> None:
    out.write("\nsummary\n")
    out.write(
        f"  {result.acked} of {result.jobs} jobs pushed, processed and acked in "
        f"{result.seconds:.1f}s ({result.jobs_per_second:.0f} jobs/s)\n"
    )
    out.write(
        f"  latency push to ack: p50 {result.percentile(50):.0f} ms, "
        f"p99 {result.percentile(99):.0f} ms\n"
    )
    out.write(f"  {result.retried} failures retried by the queue; {result.lost} jobs lost\n")
    out.write(
        f"  {result.commits} commits ({result.store_writes} store writes) for "
        f"{result.operations} operations (a claim or an ack may cover several jobs) = "
        f"{result.ops_per_commit:.1f} operations per commit\n"
    )
    if temporary:
        out.write("  the queue lived in a temporary folder, now removed (--root keeps it)\n")
    else:
        out.write(
            f"  queue file: {queue_uri} (revision {revision}); "
            f"inspect it with `obque inspect {queue_uri}`\n"
        )
    out.flush()
