"""Commands that move jobs: ``push`` (arguments or JSON lines) and ``work``."""

from __future__ import annotations

import json
import shutil
import sys
from typing import IO, TYPE_CHECKING, Any

import click
from rich.progress import Progress, SpinnerColumn, TextColumn

from obque.client.cli.common import at_least, err_console, make_client, target_options
from obque.core import InvalidRequest

if TYPE_CHECKING:
    from obque.client.calls import PushItem
    from obque.client.jobs import Job
    from obque.client.sync import Client

__all__ = ["push", "work"]

#: Jobs per commit when pushing JSON lines from stdin.
LINES_PER_BATCH = 1000


def _payload(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise InvalidRequest(
            f"payload {text[:40]!r} is not JSON; quote text as '\"text\"' or use --text"
        ) from None


@click.command()
@click.argument("target")
@click.argument("payloads", nargs=-1, required=True, metavar="PAYLOAD... | -")
@click.option("--queue", "-q", help="Queue name for a broker URL (default: queue).")
@click.option("--token", help="Bearer token for a self-hosted broker (OBQUE_TOKEN).")
@click.option("--key", help="Idempotency key: a live or recent job with it is not re-added.")
@click.option("--delay", type=float, help="Seconds before the job becomes ready.")
@click.option("--max-attempts", type=int, help="Attempts before dead-lettering.")
@click.option("--text", is_flag=True, help="Payloads are plain text, not JSON.")
def push(
    target: str,
    payloads: tuple[str, ...],
    queue: str | None,
    token: str | None,
    key: str | None,
    delay: float | None,
    max_attempts: int | None,
    text: bool,
) -> int:
    """Push jobs: JSON payloads as arguments, or '-' to read JSON lines from stdin
    (pushed in batches of 1000, with a running count)."""
    from obque.client.calls import PushItem

    with make_client(target, queue, None, token) as client:
        if payloads == ("-",):
            if key is not None:
                raise InvalidRequest("--key names one job; it cannot be used with '-'")
            return _push_lines(client, sys.stdin, text, delay, max_attempts)
        if key is not None and len(payloads) > 1:
            raise InvalidRequest("--key names one job; push one payload at a time with it")
        values = [p if text else _payload(p) for p in payloads]
        items = [PushItem(v, key, delay, max_attempts) for v in values]
        for job_id in client.push_many(items):
            click.echo(job_id)
    return 0


def _push_lines(
    client: Client, lines: IO[str], text: bool, delay: float | None, max_attempts: int | None
) -> int:
    from obque.client.calls import PushItem

    batch: list[PushItem] = []
    total = 0
    console = err_console()
    count = TextColumn("pushed {task.completed:.0f} jobs")
    # Progress shows a live count on a terminal and one final line otherwise (a line that
    # a log keeps: no spinner glyph in it).
    columns = (SpinnerColumn(), count) if console.is_terminal else (count,)
    with Progress(*columns, console=console, transient=False) as progress:
        counter = progress.add_task("push", total=None)

        def flush() -> None:
            nonlocal total
            if batch:
                total += len(client.push_many(batch))
                batch.clear()
                progress.update(counter, completed=total)

        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                payload = line.rstrip("\n") if text else json.loads(line)
            except json.JSONDecodeError:
                raise InvalidRequest(f"stdin line {number} is not JSON: {line[:60]!r}") from None
            batch.append(PushItem(payload, None, delay, max_attempts))
            if len(batch) == LINES_PER_BATCH:
                flush()
        flush()
    return 0


class WorkCommand(click.Command):
    """``work`` keeps everything after ``--`` as the program to run, untouched."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            cut = args.index("--")
            ctx.meta["obque.work.argv"] = args[cut + 1 :]
            args = args[:cut]
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return [*super().collect_usage_pieces(ctx), "[-- PROGRAM ARGS...]"]


@click.command(cls=WorkCommand)
@target_options
@click.option(
    "--command",
    "-c",
    "shell_command",
    help="Shell command per job; payload JSON on stdin, exit 0 acks.",
)
@click.option("--handler", help="Python handler as module:function, called with the job.")
@click.option(
    "--concurrency",
    "-n",
    type=at_least(1),
    default=1,
    show_default=True,
    help="Jobs handled at once.",
)
@click.option(
    "--lease-seconds",
    type=click.FloatRange(min=0, min_open=True),
    help="Lease length for each claim (default: the queue's).",
)
@click.option("--max-jobs", type=at_least(1), help="Stop after taking this many jobs.")
@click.option(
    "--grace-seconds",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Time running jobs get to finish on Ctrl-C/SIGTERM.",
)
@click.option("--verbose", "-v", is_flag=True, help="Print each job's outcome.")
@click.pass_context
def work(
    ctx: click.Context,
    target: str | None,
    root: str | None,
    queue: str | None,
    token: str | None,
    shell_command: str | None,
    handler: str | None,
    concurrency: int,
    lease_seconds: float | None,
    max_jobs: int | None,
    grace_seconds: float,
    verbose: bool,
) -> int:
    """Run a handler for each job: `--handler module:function`, `--command 'SHELL'`, or
    `-- PROGRAM ARGS...` (run without a shell). A command gets the payload JSON on stdin;
    exit 0 acks, non-zero nacks with the end of its stderr."""
    from obque.client.handlers import command_handler, import_handler
    from obque.client.worker import Worker

    argv: list[str] | None = ctx.meta.get("obque.work.argv")
    given = [x for x in (shell_command, handler, argv) if x is not None]
    if len(given) != 1 or argv == []:
        raise InvalidRequest(
            "give exactly one of --command 'SHELL COMMAND', --handler module:function "
            "or -- PROGRAM ARGS..."
        )
    if argv is not None and shutil.which(argv[0]) is None:
        raise InvalidRequest(f"-- {argv[0]}: no such program (on PATH or at that path)")
    run_job = (
        import_handler(handler)
        if handler
        else command_handler(shell_command if shell_command is not None else argv or [])
    )
    with make_client(target, queue, root, token) as client:
        worker = Worker(
            client,
            run_job,
            concurrency=concurrency,
            lease_seconds=lease_seconds,
            max_jobs=max_jobs,
            grace_seconds=grace_seconds,
            on_done=_report if verbose else None,
        )
        click.echo(
            f"obque work: {worker.worker_id} on queue {client.queue} "
            f"({concurrency} at a time); Ctrl-C drains and stops",
            err=True,
        )
        stats = worker.run()
    click.echo(
        f"obque work: {stats.succeeded} succeeded, {stats.failed} failed, "
        f"{stats.released} released, {stats.lost} lost their lease",
        err=True,
    )
    return 0


def _report(job: Job, error: BaseException | None) -> None:
    outcome = "ok" if error is None else f"failed: {error}"
    click.echo(f"job {job.id} attempt {job.attempt}: {outcome}", err=True)
