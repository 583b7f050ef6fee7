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
from typing import Any

import msgspec

from obque.core import ObqueError, QueueNotFound, QueueState, decode_state
from obque.store import open_store

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
    from obque.broker.serve import default_advertise, serve
    from obque.broker.settings import BrokerSettings

    settings = BrokerSettings.from_env(
        root=args.root,
        token=args.token,
        advertise=args.advertise or default_advertise(args.host, args.port),
        broker_timeout=args.broker_timeout,
        take_serverless=args.take_serverless or None,
    )
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
    name = store.key.rpartition("/")[2].removesuffix(".json")
    config: dict[str, object] = {}
    for field in ("lease_seconds", "max_attempts", "max_jobs"):
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
        payload = bytes(job.payload).decode()
        if len(payload) > 60:
            payload = payload[:57] + "..."
        print(f"  {job.id:>8}  {where:<32} attempts={job.attempts}  {payload}")
    if len(state.jobs) > len(shown):
        print(f"  ... {len(state.jobs) - len(shown)} more")
    return 0


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
    ):
        p = command(name, func, text)
        p.add_argument("target", nargs="?", help="queue file URI (default: ROOT/QUEUE.json)")
        p.add_argument("--root", help=f"root URI (OBQUE_ROOT; default {DEFAULT_ROOT})")
        p.add_argument("--queue", "-q", help="queue name under the root (default: queue)")
        if name == "init":
            p.add_argument("--lease-seconds", type=int)
            p.add_argument("--max-attempts", type=int)
            p.add_argument("--max-jobs", type=int)
        else:
            p.add_argument("--json", action="store_true", help="print the raw queue file")
            p.add_argument("--limit", type=int, default=20, help="jobs to list (default 20)")
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


if __name__ == "__main__":
    sys.exit(main())
