"""Google Cloud Functions (2nd gen) / Cloud Run entry point: ``obque.broker.gcp.handler``.

The target is registered with ``functions_framework.aio.http``, so functions-framework
(3.10+) serves it as ASGI however it is started: ``functions-framework --asgi`` (or
``FUNCTION_USE_ASGI``) builds the ASGI app directly, and a launcher that calls the WSGI
``create_app()`` (as the Cloud Functions runtime may) detects the decorator and hands
over to the same ASGI app. Without it, that launcher would serve the target through Flask.
An instance handles many requests at once (concurrency > 1), so they share the in-process
group-commit engine; GCS allows about one write per second per object, which the
``gs://`` store advertises and the engine's pacing respects (``min_write_interval``).
Credentials are the function's service account, through google-cloud-storage's default
chain. Configuration: ``OBQUE_ROOT`` (``gs://BUCKET/``, required), ``OBQUE_QUEUES`` (the
deployment's queue names, comma-separated: listed by ``GET /v1/queues`` instead of the
bucket), optional ``OBQUE_TOKEN``.

Instances do not elect a leader (``mode: serverless``): when several run, their commits
meet as ordinary compare-and-set conflicts, retried on a fresh read.
"""

from __future__ import annotations

import functools
from typing import Any

import functions_framework.aio
from starlette.requests import Request
from starlette.types import ASGIApp

from obque.broker.app import create_app
from obque.broker.settings import BrokerSettings

__all__ = ["build_app", "handler"]


def build_app(settings: BrokerSettings | None = None) -> Any:
    return create_app(settings or BrokerSettings.serverless_from_env())


@functools.cache
def _app() -> ASGIApp:
    # Built on the first request, in the serving process: not at import (tools import
    # this module without OBQUE_ROOT) and not in functions-framework's parent process,
    # whose threads would not survive gunicorn's fork.
    app: ASGIApp = build_app()
    return app


# The stubs promise a Response; what the wrapper really needs is an ASGI callable, which
# it passes through to Starlette (see the docstring below).
@functions_framework.aio.http  # type: ignore[arg-type]
async def handler(request: Request) -> ASGIApp:
    """The functions-framework target.

    functions-framework accepts only a plain function as its target (not an ASGI app
    object) and sends whatever ASGI response the function returns with the request's
    own scope and receive channel. The app is such a callable, so each request reaches
    it whole: method, path, query, headers and the still unread body.
    """
    return _app()
