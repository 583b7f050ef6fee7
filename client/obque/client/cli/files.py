"""Commands that read or write a queue file directly: ``init``, ``inspect``, ``sweep``."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from obque.client.cli.common import emit, file_options, load_state, queue_uri
from obque.client.cli.inspect_view import CLAIMED_SHOWN, inspect_summary, render_inspect
from obque.core import QueueConfig
from obque.core.limits import check_queue_name
from obque.store import open_store

__all__ = ["init", "inspect", "sweep"]

F = TypeVar("F", bound=Callable[..., Any])

#: What each queue setting (SPEC §2 ``config``) does, for ``init --help``.
CONFIG_HELP = {
    "lease_seconds": "Seconds a claim holds a job before it is redelivered.",
    "max_attempts": "Attempts before a job is dead-lettered.",
    "retry_delay_seconds": "First retry delay after a nack; doubles each attempt.",
    "retry_delay_max_seconds": "Cap on the retry delay.",
    "dead_retention": "Dead letters kept; the oldest are dropped first.",
    "max_payload_bytes": "Largest payload accepted.",
    "dedup_seconds": "How long a settled job's push key still deduplicates.",
    "max_jobs": "Pushes beyond this many jobs answer queue_full.",
    "spill_payload_bytes": "Store larger payloads as separate objects beside the file.",
    "max_inline_bytes": "Payload bytes the queue file itself may hold.",
}


def config_options(func: F) -> F:
    """One flag per field of ``QueueConfig`` (so a new setting gets its flag). Ranges are
    checked by the core (``Configure``), whose error names the setting and its limits."""
    defaults = QueueConfig()
    for name in reversed(QueueConfig.__struct_fields__):
        default = getattr(defaults, name)
        text = f"{CONFIG_HELP.get(name, 'Queue setting.')} (default {default})"
        flag = "--" + name.replace("_", "-")
        func = click.option(flag, name, type=type(default), default=None, help=text)(func)
    return func


@click.command()
@file_options
@config_options
def init(target: str | None, root: str | None, queue: str | None, **settings: Any) -> int:
    """Create a queue file, or apply the given settings to an existing one."""
    from obque.commit import create_queue

    store = open_store(queue_uri(target, queue, root))
    # The name becomes a URL path segment and an object key: refuse one no broker serves.
    name = check_queue_name(store.key.rpartition("/")[2].removesuffix(".json"))
    config = {k: v for k, v in settings.items() if v is not None}
    created, state = create_queue(store, name, config)
    verb = "created" if created else "exists:"
    click.echo(f"{verb} {store.uri} (revision {state.revision})")
    return 0


@click.command()
@file_options
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--raw", is_flag=True, help="Print the queue file itself, as stored.")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help=f"Rows of the jobs table. The claimed table is apart: up to {CLAIMED_SHOWN} rows "
    "whatever --limit says (--json has every claim).",
)
def inspect(
    target: str | None, root: str | None, queue: str | None, as_json: bool, raw: bool, limit: int
) -> int:
    """Show a queue file: revision, broker, counts by state, oldest ready job, claimed jobs
    with their worker and lease expiry, and the first jobs. Reads the object directly."""
    state, data, uri = load_state(queue_uri(target, queue, root))
    if raw:
        sys.stdout.write(json.dumps(json.loads(data), indent=2) + "\n")
        return 0
    now = int(time.time() * 1000)
    summary = inspect_summary(state, uri, len(data), now)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return 0
    emit(*render_inspect(summary, state, now, limit))
    return 0


@click.command()
@file_options
@click.option(
    "--min-age-minutes",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Only objects older than this (a push commits within seconds).",
)
def sweep(target: str | None, root: str | None, queue: str | None, min_age_minutes: float) -> int:
    """Delete spilled payload objects no job names (pushes that never committed)."""
    from obque.commit.payloads import Payloads

    uri = queue_uri(target, queue, root)
    state, _, _ = load_state(uri)
    payloads = Payloads(open_store(uri))
    try:
        swept = payloads.sweep(state, min_age_s=min_age_minutes * 60)
    finally:
        payloads.close()
    click.echo(f"deleted {swept} orphaned payload object(s) of {uri}")
    return 0
