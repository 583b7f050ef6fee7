"""What every ``obque`` command shares: where the queue is, the client, the consoles."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console, RenderableType

from obque.core import QueueNotFound, QueueState, decode_state
from obque.store import open_store

if TYPE_CHECKING:
    from obque.client.sync import Client

__all__ = [
    "DEFAULT_ROOT",
    "at_least",
    "emit",
    "err_console",
    "load_state",
    "make_client",
    "queue_uri",
    "root_of",
    "target_options",
]

DEFAULT_ROOT = "file://./.obque/"

F = TypeVar("F", bound=Callable[..., Any])


def emit(*renderables: RenderableType) -> None:
    """Print text and Rich tables on stdout. Markup is off (payloads hold brackets). When
    stdout is not a terminal, lines are never wrapped and carry no trailing padding, so a
    script (or a test) can split them."""
    if sys.stdout.isatty():
        tty = Console(markup=False, highlight=False)
        for renderable in renderables:
            tty.print(renderable)
        return
    console = Console(markup=False, highlight=False, width=1000, soft_wrap=True)
    with console.capture() as captured:
        for renderable in renderables:
            console.print(renderable)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def err_console() -> Console:
    return Console(stderr=True, markup=False, highlight=False)


def at_least(low: int) -> click.IntRange:
    """An integer option with a lower bound; Click's error names the option and range."""
    return click.IntRange(min=low)


def root_of(root: str | None) -> str:
    return str(root or os.environ.get("OBQUE_ROOT") or DEFAULT_ROOT)


def queue_uri(target: str | None, queue: str | None, root: str | None) -> str:
    """A queue file URI from a target (``…/NAME.json``) or a root plus a queue name."""
    if target:
        return target
    base, sep, query = root_of(root).partition("?")
    if not base.endswith("/"):
        base += "/"
    return f"{base}{queue or 'queue'}.json" + (sep + query if sep else "")


def load_state(uri: str) -> tuple[QueueState, bytes, str]:
    """The queue file at ``uri``: decoded, raw, and the store's canonical URI."""
    store = open_store(uri)
    snap = store.read()
    if snap is None:
        # The exact URI: a bare `obque init` would create the default queue, not this one.
        create = f"obque init {shlex.quote(store.uri)}"
        raise QueueNotFound(f"no queue at {store.uri}; create it with `{create}`")
    return decode_state(snap.data, store.uri), snap.data, store.uri


def make_client(
    target: str | None, queue: str | None, root: str | None, token: str | None
) -> Client:
    from obque.client.sync import Client

    # OBQUE_URL, when set, overrides what the target resolves to (see Target).
    resolved = target or os.environ.get("OBQUE_URL") or queue_uri(None, queue, root)
    return Client(resolved, queue, token=token)


def file_options(func: F) -> F:
    """``[TARGET] --root --queue``: a queue file, read or written directly."""
    func = click.option("--queue", "-q", help="Queue name under the root (default: queue).")(func)
    func = click.option("--root", help=f"Root URI (OBQUE_ROOT; default {DEFAULT_ROOT}).")(func)
    return click.argument("target", required=False)(func)


def target_options(func: F) -> F:
    """``[TARGET] --root --queue --token``: a queue reached through a client."""
    func = click.option("--token", help="Bearer token for a self-hosted broker (OBQUE_TOKEN).")(
        func
    )
    return file_options(func)
