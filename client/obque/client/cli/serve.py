"""Commands that run servers: ``broker``, and ``demo`` (a broker with producers and workers)."""

from __future__ import annotations

import os
import sys

import click

from obque.client.cli.common import DEFAULT_ROOT, at_least

__all__ = ["broker", "demo"]


@click.command()
@click.option("--root", help=f"Root URI of the queue files (OBQUE_ROOT; {DEFAULT_ROOT}).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--advertise",
    help="URL written into each queue file (OBQUE_ADVERTISE; http://HOST:PORT).",
)
@click.option("--token", help="Bearer token clients must send (OBQUE_TOKEN).")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback bind without a token.")
@click.option(
    "--broker-timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds without a leader heartbeat before a standby takes over (10).",
)
@click.option(
    "--take-serverless",
    is_flag=True,
    help="Lead queues a serverless deployment (Lambda, Cloud Functions) advertises, "
    "instead of standing by for them.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Least severe JSON log line written on stderr.",
)
def broker(
    root: str | None,
    host: str,
    port: int,
    advertise: str | None,
    token: str | None,
    insecure: bool,
    broker_timeout: float | None,
    take_serverless: bool,
    log_level: str,
) -> int:
    """Serve every queue under a root over HTTP."""
    from obque.broker.serve import check_bind, default_advertise, serve
    from obque.broker.settings import BrokerSettings

    settings = BrokerSettings.from_env(
        root=root,
        token=token,
        # OBQUE_ADVERTISE stands in for the flag; only when neither is given is the
        # bind address the URL clients are told.
        advertise=advertise or os.environ.get("OBQUE_ADVERTISE") or default_advertise(host, port),
        broker_timeout=broker_timeout,
        take_serverless=take_serverless or None,
        bind_host=host,
    )
    check_bind(settings, host, insecure=insecure)

    def announce() -> None:
        click.echo(
            f"obque broker: serving {settings.root} at http://{host}:{port} "
            f"(advertised as {settings.advertise})",
            err=True,
        )

    serve(settings, host, port, insecure=insecure, log_level=log_level, on_ready=announce)
    return 0


@click.command()
@click.option(
    "--root",
    help="Root URI to keep the demo queue in (default: a temporary folder, removed at the end).",
)
@click.option("--jobs", type=at_least(0), default=1000, show_default=True)
@click.option("--producers", type=at_least(1), default=64, show_default=True)
@click.option("--workers", type=at_least(1), default=64, show_default=True)
@click.option(
    "--latency",
    type=click.Choice(["s3", "gcs", "none"]),
    default="s3",
    show_default=True,
    help="Store latency model (s3: 20 ms reads, 60 ms writes).",
)
def demo(root: str | None, jobs: int, producers: int, workers: int, latency: str) -> int:
    """Run a broker, producers and workers locally: live progress, then a summary
    (throughput, push-to-ack latency, commits, operations per commit)."""
    from obque.client.demo import DemoOptions, run_demo

    options = DemoOptions(
        root=root,
        jobs=jobs,
        producers=producers,
        workers=workers,
        latency=None if latency == "none" else latency,
    )
    result = run_demo(options, out=sys.stdout, progress_to=sys.stderr)
    if result.lost:
        click.echo(f"obque: {result.lost} of the demo's jobs were never acked", err=True)
        return 1
    return 0
