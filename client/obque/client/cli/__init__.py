"""The ``obque`` command line (Click, with Rich tables and progress bars).

Every command prints one clear ``obque: …`` line on stderr and exits non-zero on a user's
mistake (a bad flag value, a missing queue, an unreachable broker, a handler module that
does not import, a broker port in use or a root it cannot read); never a stack trace.
Tests in ``tests/integration/test_cli*.py`` hold each command to this.
Flags override ``OBQUE_ROOT``, ``OBQUE_TOKEN`` and ``OBQUE_URL``.

    __init__ (here)  the group, and the one place errors become exit codes
    common.py        queue URIs, the client, consoles, shared options
    files.py         init, inspect, sweep: the queue file itself
    jobs.py          push, work
    admin.py         stats, dead
    serve.py         broker, demo
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from obque.client.cli.admin import dead, stats
from obque.client.cli.files import init, inspect, sweep
from obque.client.cli.jobs import push, work
from obque.client.cli.serve import broker, demo
from obque.core import ObqueError

__all__ = ["cli", "main"]

#: A usage mistake (bad flag, value out of range) and an obque error both exit 2.
USAGE_EXIT = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """A job queue whose whole state is one JSON object in object storage."""


for command in (broker, init, push, work, inspect, sweep, stats, dead, demo):
    cli.add_command(command)


def _one_line(exc: click.ClickException) -> str:
    """A Click error as one line naming the command, e.g. ``obque demo: Invalid value
    for '--workers': 0 is not in the range x>=1.``"""
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if ctx is not None else "obque"
    where = f"{ctx.info_name}: " if ctx is not None and ctx.parent is not None else ""
    message = " ".join(exc.format_message().split()).rstrip(".")
    hint = f" (see `{path} --help`)" if isinstance(exc, click.UsageError) else ""
    return f"obque: {where}{message}{hint}"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        click.echo(
            cli.get_help(click.Context(cli, info_name="obque", help_option_names=["-h", "--help"])),
            err=True,
        )
        return USAGE_EXIT
    try:
        code = cli.main(args, prog_name="obque", standalone_mode=False)
    except click.ClickException as exc:
        click.echo(_one_line(exc), err=True)
        return exc.exit_code if exc.exit_code else USAGE_EXIT
    except click.Abort:  # Ctrl-C while Click itself was prompting or parsing
        return 130
    except ObqueError as exc:
        click.echo(f"obque: {exc.message}", err=True)
        return USAGE_EXIT
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `obque inspect | head`: the reader left, nothing to say
        sys.stderr.close()
        return 0
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
