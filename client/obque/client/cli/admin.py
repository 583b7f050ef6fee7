"""Commands that look after a queue through its broker (or in-process): ``stats``, ``dead``."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table

from obque.client.cli.common import at_least, emit, make_client, target_options

__all__ = ["dead", "stats"]


def _shown(key: str, value: Any) -> str:
    if value is None:
        return "none"
    if key == "broker" and isinstance(value, dict):
        return f"{value.get('url')} ({value.get('mode')}, epoch {value.get('epoch')})"
    return str(value)


@click.command()
@target_options
@click.option("--json", "as_json", is_flag=True, help="Print the counters as JSON.")
def stats(
    target: str | None, root: str | None, queue: str | None, token: str | None, as_json: bool
) -> int:
    """Show a queue's counters (through its broker, or in-process)."""
    with make_client(target, queue, root, token) as client:
        counters = client.stats()
    if as_json:
        click.echo(json.dumps(counters, indent=2))
        return 0
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in counters.items():
        table.add_row(key, _shown(key, value))
    emit(table)
    return 0


@click.command()
@click.argument("action", type=click.Choice(["list", "redrive", "purge"]))
@target_options
@click.option("--ids", multiple=True, help="Only this job id (repeat, or comma-separate).")
@click.option(
    "--limit", type=at_least(1), default=100, show_default=True, help="Dead letters to list."
)
@click.option("--json", "as_json", is_flag=True, help="List as JSON.")
def dead(
    action: str,
    target: str | None,
    root: str | None,
    queue: str | None,
    token: str | None,
    ids: tuple[str, ...],
    limit: int,
    as_json: bool,
) -> int:
    """List, redrive (push again) or purge dead letters; all of them unless --ids."""
    chosen = [i.strip() for group in ids for i in group.split(",") if i.strip()] or None
    with make_client(target, queue, root, token) as client:
        if action == "redrive":
            click.echo(f"redriven {client.redrive(chosen)}")
        elif action == "purge":
            click.echo(f"purged {client.purge(chosen)}")
        else:
            _list(client.dead(limit), chosen, as_json)
    return 0


def _list(jobs: list[dict[str, Any]], chosen: list[str] | None, as_json: bool) -> None:
    if chosen is not None:
        jobs = [job for job in jobs if job["id"] in chosen]
    if as_json:
        click.echo(json.dumps(jobs, indent=2))
        return
    if not jobs:
        click.echo("no dead letters")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("id", "attempts", "last error", "payload"):
        table.add_column(column, no_wrap=True)
    for job in jobs:
        error = (job.get("last_error") or "").replace("\n", " ")
        table.add_row(job["id"], str(job["attempts"]), error[:60], json.dumps(job["payload"])[:60])
    emit(table)
