"""Answering the callers of a commit, each on its own thread or event loop.

A thread's caller waits on a ``concurrent.futures.Future``; a coroutine (``arun``) on an
``asyncio.Future``, which may only be settled on its own loop: the writer thread hands
each loop all its answers of one commit in a single thread-safe call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError

from obque.core import Op, Result

__all__ = ["Answer", "Outcome", "answer"]

#: Where a caller's answer goes: a thread's future, or an asyncio future of ``arun``,
#: which is settled on its own event loop (one thread-safe call per loop and commit).
Answer = Future[Result] | asyncio.Future[Result]

Outcome = Result | BaseException


def answer(batch: list[tuple[Op, Answer]], outcomes: Sequence[Outcome]) -> None:
    """Resolve each caller's future; asyncio futures on their own loops, in one call per
    loop. A future cancelled meanwhile (a caller that gave up) is skipped: its operation
    is committed all the same."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Result], Outcome]]] = {}
    for (_, future), outcome in zip(batch, outcomes, strict=False):
        if isinstance(future, asyncio.Future):
            by_loop.setdefault(future.get_loop(), []).append((future, outcome))
        else:
            with contextlib.suppress(InvalidStateError):  # cancelled by its caller
                _settle(future, outcome)
    for loop, answers in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
            loop.call_soon_threadsafe(_settle_on_loop, answers)


def _settle_on_loop(answers: list[tuple[asyncio.Future[Result], Outcome]]) -> None:
    for future, outcome in answers:
        if not future.done():
            _settle(future, outcome)


def _settle(future: Answer, outcome: Outcome) -> None:
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
