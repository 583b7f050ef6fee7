"""``obque demo``: a broker, producers and workers on the embedded default, end to end.

Everything runs in this process but talks HTTP to a real broker on loopback, exactly as
a deployment would: producers push through ``Client``, a ``Worker`` pool claims, acks and
occasionally fails jobs (retried by the queue), and the summary shows how few store
writes the group commit needed.
"""

from __future__ import annotations

import random
import socket
import sys
import threading
import time
from dataclasses import dataclass

from obque.client.jobs import Job
from obque.client.sync import Client
from obque.client.worker import Worker
from obque.commit import create_queue
from obque.core import StoreUnavailable, decode_state
from obque.store import Store, open_root

__all__ = ["DemoOptions", "run_demo"]


@dataclass(frozen=True)
class DemoOptions:
    root: str = "file://./.obque/"
    queue: str = "demo"
    jobs: int = 2000
    producers: int = 32
    workers: int = 32
    latency: str | None = "s3"
    fail_rate: float = 0.02


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


def run_demo(opts: DemoOptions, out: object = sys.stderr) -> dict[str, float]:
    import uvicorn

    from obque.broker import BrokerSettings, create_app

    write = getattr(out, "write")  # noqa: B009 - any text stream
    root_uri = _with_latency(opts.root, opts.latency)
    root = open_root(root_uri)
    store = root.queue(opts.queue)
    create_queue(store, opts.queue, {"lease_seconds": 30, "max_attempts": 5})
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    app = create_app(BrokerSettings(root=root_uri, advertise=url, broker_timeout=5))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, name="obque-demo-broker", daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    _await_advertised(store, url)
    queue_uri = store.uri
    write(f"broker   {url} serving {root.uri} (store latency model: {opts.latency or 'none'})\n")
    write(f"queue    {queue_uri}: {opts.jobs} jobs, {opts.producers} producers, ")
    write(f"{opts.workers} workers, {opts.fail_rate:.0%} of first attempts fail\n")

    done = threading.Event()
    handled: dict[str, int] = {}
    lock = threading.Lock()
    rng = random.Random(7)

    def handle(job: Job) -> None:
        with lock:
            handled[job.id] = handled.get(job.id, 0) + 1
            fail = job.attempt == 1 and rng.random() < opts.fail_rate
        if fail:
            raise RuntimeError("simulated failure (the queue retries it)")

    client = Client(queue_uri)
    worker = Worker(client, handle, concurrency=opts.workers, worker_id="demo-worker")

    def consume() -> None:
        worker.run()
        done.set()

    consumer = threading.Thread(target=consume, daemon=True)
    start = time.monotonic()
    counts = app.state.queues.root.backend.counts  # the broker's own store requests
    before = counts.as_dict() if counts else {}
    consumer.start()

    pushed: list[str] = []

    def produce(share: int) -> None:
        with Client(queue_uri) as producer:
            for i in range(share):
                job_id = producer.push({"task": "resize", "n": i})
                with lock:
                    pushed.append(job_id)

    shares = [
        opts.jobs // opts.producers + (i < opts.jobs % opts.producers)
        for i in range(opts.producers)
    ]
    producers = [threading.Thread(target=produce, args=(n,)) for n in shares]
    for p in producers:
        p.start()
    acked = 0
    while acked < opts.jobs:
        time.sleep(0.25)
        stats = client.stats()
        acked = int(stats["acked"])
        write(
            f"\r  pushed {len(pushed):>6}  acked {acked:>6}  ready {stats['ready']:>5}  "
            f"claimed {stats['claimed']:>4}  commits {stats['commits']:>5}"
        )
    for p in producers:
        p.join()
    elapsed = time.monotonic() - start
    worker.stop()
    done.wait(30)
    stats = client.stats()
    client.close()
    server.should_exit = True
    thread.join(10)
    after = counts.as_dict() if counts else {}
    writes = after.get("writes", 0) - before.get("writes", 0)
    ops = opts.jobs * 3 + int(stats["nacked"])
    missing = [j for j in pushed if j not in handled]
    summary = {
        "jobs": float(opts.jobs),
        "seconds": elapsed,
        "jobs_per_second": opts.jobs / elapsed,
        "store_writes": float(writes),
        "ops_per_write": ops / max(writes, 1),
        "retried": float(stats["nacked"]),
        "missing": float(len(missing)),
    }
    write("\n\nsummary\n")
    write(
        f"  {opts.jobs} jobs pushed, processed and acked in {elapsed:.1f}s "
        f"({summary['jobs_per_second']:.0f} jobs/s)\n"
    )
    write(f"  {int(stats['nacked'])} failures retried by the queue; {len(missing)} jobs lost\n")
    write(
        f"  {writes} store writes for {ops} push/claim/ack/nack operations "
        f"= {summary['ops_per_write']:.1f} operations per compare-and-set\n"
    )
    write(
        f"  queue file: {queue_uri} (revision {stats['revision']}); "
        f"inspect it with `obque inspect {queue_uri}`\n"
    )
    return summary
