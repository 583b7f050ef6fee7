"""Handlers for ``obque work``: a shell command per job, or an imported Python function."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from obque.client.jobs import Job
from obque.core import InvalidRequest

__all__ = ["CommandFailed", "command_handler", "import_handler"]


class CommandFailed(RuntimeError):
    pass


def command_handler(command: str | Sequence[str]) -> Callable[[Job], None]:
    """Run ``command`` with the payload JSON on stdin; exit 0 acks. A string runs in a
    shell (``--command``); a sequence is a program and its arguments, run without one.

    The job's id and attempt are in ``OBQUE_JOB_ID`` and ``OBQUE_ATTEMPT``. A non-zero
    exit nacks the job with the end of its stderr as the error text."""
    shell = isinstance(command, str)
    argv: str | list[str] = command if isinstance(command, str) else list(command)

    def handle(job: Job) -> None:
        env = {**os.environ, "OBQUE_JOB_ID": job.id, "OBQUE_ATTEMPT": str(job.attempt)}
        try:
            done = subprocess.run(
                argv,
                shell=shell,
                input=json.dumps(job.payload).encode(),
                env=env,
                capture_output=True,
                check=False,
            )
        except OSError as exc:  # the program vanished or is not executable
            raise CommandFailed(f"cannot run {argv[0]!r}: {exc.strerror}") from None
        if done.stdout:
            os.write(1, done.stdout)
        if done.returncode != 0:
            tail = done.stderr.decode("utf-8", "replace").strip()[-500:]
            raise CommandFailed(f"exit {done.returncode}: {tail}")

    return handle


def import_handler(spec: str) -> Callable[[Job], Any]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InvalidRequest(f"--handler {spec!r}: use module:function, e.g. tasks:resize")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # handlers live in the user's project
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidRequest(f"--handler {spec!r}: cannot import {module_name}: {exc}") from None
    except Exception as exc:  # the module itself is broken: a SyntaxError, a raise at import
        raise InvalidRequest(
            f"--handler {spec!r}: cannot import {module_name}: {_where(exc)}"
        ) from None
    handler = getattr(module, attr, None)
    if not callable(handler):
        raise InvalidRequest(f"--handler {spec!r}: {module_name} has no function {attr!r}")
    return handler  # type: ignore[no-any-return]


def _where(exc: Exception) -> str:
    """``Type: message (file:line)``, the line being where the import failed in the
    user's code: a SyntaxError knows it; otherwise the deepest frame in a file under the
    current directory (else the deepest frame at all)."""
    if isinstance(exc, SyntaxError):
        filename, lineno, message = exc.filename or "?", exc.lineno, exc.msg
    else:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename[:1] != "<"]
        here = os.getcwd() + os.sep
        own = [f for f in frames if f.filename.startswith(here)] or frames
        filename, lineno = (own[-1].filename, own[-1].lineno) if own else ("?", None)
        message = str(exc)
    if filename.startswith(os.getcwd() + os.sep):
        filename = os.path.relpath(filename)
    text = " ".join(f"{type(exc).__name__}: {message}".split())
    return f"{text} ({filename}:{lineno})" if lineno else f"{text} ({filename})"
