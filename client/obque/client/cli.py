"""The ``obque`` command line.

Every command prints one clear line and exits non-zero on error; no stack traces for a
user's mistake. Flags override ``OBQUE_ROOT``, ``OBQUE_TOKEN`` and ``OBQUE_URL``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from obque.core import InvalidRequest, ObqueError, QueueNotFound, QueueState, decode_state
from obque.core.limits import check_queue_name
from obque.store import open_store

if TYPE_CHECKING:
    from obque.client.sync import Client

__all__ = ["main"]

DEFAULT_ROOT = "file://./.obque/"


def _root(args: argparse.Namespace) -> str:
    return str(args.root or os.environ.get("OBQUE_ROOT") or DEFAULT_ROOT)


def _queue_uri(target: str | None, queue: str | None, root: str) -> str:
    """A queue file URI from a target (``…/NAME.json``) or a root plus a queue name."""
    if target:
        return target
    base, sep, query = root.partition("?")
    if not base.endswith("/"):
        base += "/"
    return f"{base}{queue or 'queue'}.json" + (sep + query if sep else "")


def cmd_broker(args: argparse.Namespace) -> int:
    from obque.broker.serve import check_bind, default_advertise, serve
    from obque.broker.settings import BrokerSettings

    settings = BrokerSettings.from_env(
        root=args.root,
        token=args.token,
        advertise=args.advertise or default_advertise(args.host, args.port),
        broker_timeout=args.broker_timeout,
        take_serverless=args.take_serverless or None,
        bind_host=args.host,
    )
    check_bind(settings, args.host, insecure=args.insecure)
    print(
        f"obque broker: serving {settings.root} at http://{args.host}:{args.port} "
        f"(advertised as {settings.advertise})",
        file=sys.stderr,
    )
    serve(settings, args.host, args.port, insecure=args.insecure, log_level=args.log_level)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from obque.commit import create_queue

    uri = _queue_uri(args.target, args.queue, _root(args))
    store = open_store(uri)
    # The name becomes a URL path segment and an object key: refuse one no broker serves.
    name = check_queue_name(store.key.rpartition("/")[2].removesuffix(".json"))
    config: dict[str, object] = {}
    for field in ("lease_seconds", "max_attempts", "max_jobs", "spill_payload_bytes"):
        value = getattr(args, field)
        if value is not None:
            config[field] = value
    created, state = create_queue(store, name, config)
    verb = "created" if created else "exists:"
    print(f"{verb} {store.uri} (revision {state.revision})")
    return 0


def _load(uri: str) -> QueueState:
    store = open_store(uri)
    snap = store.read()
    if snap is None:
        raise QueueNotFound(f"no queue at {store.uri}; create it with `obque init`")
    return decode_state(snap.data, store.uri)


def cmd_inspect(args: argparse.Namespace) -> int:
    uri = _queue_uri(args.target, args.queue, _root(args))
    store = open_store(uri)
    snap = store.read()
    if snap is None:
        raise QueueNotFound(f"no queue at {store.uri}; create it with `obque init`")
    if args.json:
        sys.stdout.write(json.dumps(json.loads(snap.data), indent=2) + "\n")
        return 0
    state = decode_state(snap.data, store.uri)
    now = int(time.time() * 1000)
    counts = state.counts(now)
    s = state.stats
    broker = state.broker
    print(f"{store.uri}  revision {state.revision}  ({len(snap.data):,} bytes)")
    if broker is None:
        print("broker:   none advertised (clients commit directly)")
    elif not broker.url:
        print(f"broker:   none (the last one stopped cleanly; epoch {broker.epoch})")
    else:
        age = (now - broker.heartbeat_ms) / 1000 if broker.heartbeat_ms else None
        beat = f", heartbeat {age:.1f}s ago" if age is not None else ""
        print(f"broker:   {broker.url} ({broker.mode}, epoch {broker.epoch}{beat})")
    print(
        "jobs:     "
        + ", ".join(f"{n} {k}" for k, n in counts.items())
        + f"; next id {state.next_seq}"
    )
    print(
        f"lifetime: {s.pushed} pushed, {s.acked} acked, {s.nacked} nacked, "
        f"{s.expired} expired, {s.dead} dead, {s.commits} commits"
    )
    config = msgspec.structs.asdict(state.config)
    print("config:   " + ", ".join(f"{k}={v}" for k, v in config.items()))
    shown = list(state.jobs.values())[: args.limit]
    for job in shown:
        where = (
            f"claimed by {job.claim.worker} for {(job.claim.expires_ms - now) / 1000:.1f}s"
            if job.claim
            else ("ready" if job.ready_ms <= now else f"in {(job.ready_ms - now) / 1000:.1f}s")
        )
        payload = bytes(job.payload).decode() if job.spilled is None else f"<{job.spilled}>"
        if len(payload) > 60:
            payload = payload[:57] + "..."
        print(f"  {job.id:>8}  {where:<32} attempts={job.attempts}  {payload}")
    if len(state.jobs) > len(shown):
        print(f"  ... {len(state.jobs) - len(shown)} more")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from obque.commit.payloads import Payloads

    uri = _queue_uri(args.target, args.queue, _root(args))
    state = _load(uri)
    payloads = Payloads(open_store(uri))
    try:
        swept = payloads.sweep(state, min_age_s=args.min_age_minutes * 60)
    finally:
        payloads.close()
    print(f"deleted {swept} orphaned payload object(s) of {uri}")
    return 0


def _client(args: argparse.Namespace) -> Client:
    from obque.client.sync import Client

    # OBQUE_URL, when set, overrides what the target resolves to (see Target).
    target = args.target or os.environ.get("OBQUE_URL")
    if target is None:
        target = _queue_uri(None, args.queue, _root(args))
    return Client(target, args.queue, token=args.token)


def _payload(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise InvalidRequest(
            f"payload {text[:40]!r} is not JSON; quote text as '\"text\"' or use --text"
        ) from None


def cmd_push(args: argparse.Namespace) -> int:
    from obque.client.calls import PushItem

    with _client(args) as client:
        if args.payloads == ["-"]:
            return _push_lines(client, sys.stdin, args)
        payloads = [p if args.text else _payload(p) for p in args.payloads]
        items = [PushItem(p, args.key, args.delay, args.max_attempts) for p in payloads]
        if args.key is not None and len(items) > 1:
            raise InvalidRequest("--key names one job; push one payload at a time with it")
        for job_id in client.push_many(items):
            print(job_id)
    return 0


def _push_lines(client: Client, lines: Any, args: argparse.Namespace) -> int:
    from obque.client.calls import PushItem

    batch: list[PushItem] = []
    total = 0

    def flush() -> None:
        nonlocal total
        if batch:
            total += len(client.push_many(batch))
            batch.clear()
            print(f"\rpushed {total}", end="", file=sys.stderr, flush=True)

    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            payload = line.rstrip("\n") if args.text else json.loads(line)
        except json.JSONDecodeError:
            raise InvalidRequest(f"stdin line {number} is not JSON: {line[:60]!r}") from None
        batch.append(PushItem(payload, None, args.delay, args.max_attempts))
        if len(batch) == 1000:
            flush()
    flush()
    print(file=sys.stderr)
    return 0


def cmd_work(args: argparse.Namespace) -> int:
    from obque.client.handlers import command_handler, import_handler
    from obque.client.worker import Worker

    if bool(args.command) == bool(args.handler):
        raise InvalidRequest("give exactly one of --command 'SHELL COMMAND' or --handler mod:func")
    handler = command_handler(args.command) if args.command else import_handler(args.handler)
    with _client(args) as client:
        worker = Worker(
            client,
            handler,
            concurrency=args.concurrency,
            lease_seconds=args.lease_seconds,
            max_jobs=args.max_jobs,
            grace_seconds=args.grace_seconds,
            on_done=_report if args.verbose else None,
        )
        print(
            f"obque work: {worker.worker_id} on queue {client.queue} "
            f"({args.concurrency} at a time); Ctrl-C drains and stops",
            file=sys.stderr,
        )
        stats = worker.run()
    print(
        f"obque work: {stats.succeeded} succeeded, {stats.failed} failed, "
        f"{stats.released} released, {stats.lost} lost their lease",
        file=sys.stderr,
    )
    return 0


def _report(job: Any, error: BaseException | None) -> None:
    outcome = "ok" if error is None else f"failed: {error}"
    print(f"job {job.id} attempt {job.attempt}: {outcome}", file=sys.stderr)


def cmd_stats(args: argparse.Namespace) -> int:
    with _client(args) as client:
        stats = client.stats()
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    width = max(len(k) for k in stats)
    for key, value in stats.items():
        if key == "broker" and isinstance(value, dict):
            value = f"{value.get('url')} ({value.get('mode')}, epoch {value.get('epoch')})"
        print(f"{key:<{width}}  {value}")
    return 0


def cmd_dead(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.action == "list":
            jobs = client.dead(args.limit)
            if args.json:
                print(json.dumps(jobs, indent=2))
            for job in [] if args.json else jobs:
                error = job.get("last_error") or ""
                print(
                    f"{job['id']:>8}  attempts={job['attempts']}  {error[:60]}  "
                    f"{json.dumps(job['payload'])[:60]}"
                )
            if not jobs and not args.json:
                print("no dead letters")
        elif args.action == "redrive":
            print(f"redriven {client.redrive(args.ids or None)}")
        else:
            print(f"purged {client.purge(args.ids or None)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from obque.client.demo import DemoOptions, run_demo

    run_demo(
        DemoOptions(
            root=_root(args),
            jobs=args.jobs,
            producers=args.producers,
            workers=args.workers,
            latency=None if args.latency == "none" else args.latency,
        )
    )
    return 0


def _target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", nargs="?", help="queue file URI or broker URL (default ROOT/QUEUE)")
    p.add_argument("--root", help=f"root URI (OBQUE_ROOT; default {DEFAULT_ROOT})")
    p.add_argument("--queue", "-q", help="queue name (default: from the URI, else 'queue')")
    p.add_argument("--token", help="bearer token for a self-hosted broker (OBQUE_TOKEN)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="obque",
        description="A job queue whose whole state is one JSON object in object storage.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], int], text: str) -> Any:
        p = sub.add_parser(name, help=text, description=text)
        p.set_defaults(func=func)
        return p

    p = command("broker", cmd_broker, "serve every queue under a root over HTTP")
    p.add_argument("--root", help=f"root URI of the queue files (OBQUE_ROOT; {DEFAULT_ROOT})")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--advertise", help="URL written into each queue file (http://HOST:PORT)")
    p.add_argument("--token", help="bearer token clients must send (OBQUE_TOKEN)")
    p.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback bind without token"
    )
    p.add_argument("--broker-timeout", type=float, default=None, help="leader heartbeat timeout")
    p.add_argument("--take-serverless", action="store_true", help="take over serverless queues")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    for name, func, text in (
        ("init", cmd_init, "create a queue file (or show that it exists)"),
        ("inspect", cmd_inspect, "show a queue file in human form"),
        ("sweep", cmd_sweep, "delete spilled payloads no job names (pushes that never committed)"),
    ):
        p = command(name, func, text)
        p.add_argument("target", nargs="?", help="queue file URI (default: ROOT/QUEUE.json)")
        p.add_argument("--root", help=f"root URI (OBQUE_ROOT; default {DEFAULT_ROOT})")
        p.add_argument("--queue", "-q", help="queue name under the root (default: queue)")
        if name == "init":
            p.add_argument("--lease-seconds", type=int)
            p.add_argument("--max-attempts", type=int)
            p.add_argument("--max-jobs", type=int)
            p.add_argument(
                "--spill-payload-bytes",
                type=int,
                help="store larger payloads as separate objects (default 16384)",
            )
        elif name == "sweep":
            p.add_argument(
                "--min-age-minutes",
                type=float,
                default=60.0,
                help="only objects older than this (default 60; a push commits within seconds)",
            )
        else:
            p.add_argument("--json", action="store_true", help="print the raw queue file")
            p.add_argument("--limit", type=int, default=20, help="jobs to list (default 20)")
    p = command("push", cmd_push, "push jobs (JSON payloads; '-' reads JSON lines from stdin)")
    p.add_argument("target", help="queue file URI or broker URL")
    p.add_argument("payloads", nargs="+", metavar="PAYLOAD")
    p.add_argument("--queue", "-q", help="queue name for a broker URL (default: queue)")
    p.add_argument("--token", help="bearer token for a self-hosted broker (OBQUE_TOKEN)")
    p.add_argument("--key", help="idempotency key: a live or recent job with it is not re-added")
    p.add_argument("--delay", type=float, help="seconds before the job becomes ready")
    p.add_argument("--max-attempts", type=int, help="attempts before dead-lettering")
    p.add_argument("--text", action="store_true", help="payloads are plain text, not JSON")

    p = command("work", cmd_work, "run a handler or shell command for each job")
    _target_args(p)
    p.add_argument("--command", "-c", help="shell command; payload JSON on stdin, exit 0 acks")
    p.add_argument("--handler", help="Python handler as module:function, called with the job")
    p.add_argument("--concurrency", "-n", type=int, default=1)
    p.add_argument("--lease-seconds", type=float)
    p.add_argument("--max-jobs", type=int, help="stop after taking this many jobs")
    p.add_argument("--grace-seconds", type=float, default=30.0)
    p.add_argument("--verbose", "-v", action="store_true", help="print each job's outcome")

    p = command("stats", cmd_stats, "show a queue's counters")
    _target_args(p)
    p.add_argument("--json", action="store_true")

    p = command("dead", cmd_dead, "list, redrive or purge dead letters")
    p.add_argument("action", choices=["list", "redrive", "purge"])
    _target_args(p)
    p.add_argument("--ids", nargs="*", help="only these job ids (default: all)")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")

    p = command("demo", cmd_demo, "run a broker, producers and workers locally, with a summary")
    p.add_argument("--root", help=f"root URI (default {DEFAULT_ROOT})")
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--producers", type=int, default=32)
    p.add_argument("--workers", type=int, default=32)
    p.add_argument(
        "--latency",
        default="s3",
        choices=["s3", "gcs", "none"],
        help="store latency model (default s3: 20 ms reads, 60 ms writes)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except ObqueError as exc:
        print(f"obque: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `obque inspect | head`: the reader left, nothing to say
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
