"""The job routes without the framework's per-request machinery.

Push, claim, heartbeat, ack and nack are the requests a busy queue answers thousands of
times a second, and their handlers already do their own work: they read the body with
msgspec, check every limit and answer with ``Response`` objects. FastAPI's routing,
dependency resolution, exception and exit-stack middleware add about as much CPU again
per request (measured with py-spy under ``bench.http_load``); on the event loop that
answers a whole group commit's callers one after another, that delay decides whether a
caller makes the next commit.

``HotRoutes`` sits inside the authentication guard and outside FastAPI: a
``POST /v1/queues/{name}/{verb}`` for one of those verbs goes straight to the same handler
the router would call, and its errors become the same answers the app's exception
handlers give. Everything else -- other methods and paths, the OpenAPI document, which
still describes these routes -- goes on to the framework untouched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from obque.broker.errors import error_response, unexpected_error_response
from obque.core import ObqueError

__all__ = ["HOT_VERBS", "Handler", "HotRoutes"]

Handler = Callable[[str, Request], Awaitable[Response]]
HOT_VERBS = ("push", "claim", "heartbeat", "ack", "nack")
_PREFIX = "/v1/queues/"


class HotRoutes:
    def __init__(self, app: ASGIApp, handlers: dict[str, Handler]) -> None:
        self.app = app
        #: verb -> handler; filled in once the app's routes are defined.
        self.handlers = handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler, name = self._match(scope)
        if handler is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        try:
            response = await handler(name, request)
        except ObqueError as exc:
            response = error_response(exc)
        except Exception as exc:  # the app's catch-all handler, as the router would reach it
            response = unexpected_error_response(exc)
        await response(scope, receive, send)

    def _match(self, scope: Scope) -> tuple[Handler | None, str]:
        if scope["type"] != "http" or scope["method"] != "POST":
            return None, ""
        path = _route_path(scope)
        if not path.startswith(_PREFIX):
            return None, ""
        name, slash, verb = path[len(_PREFIX) :].partition("/")
        # The router's ``{name}`` is one non-empty path segment, as here.
        if not slash or not name or "/" in verb:
            return None, ""
        return self.handlers.get(verb), name


def _route_path(scope: Scope) -> str:
    """The path the router matches: without the ``root_path`` a proxy mounted us under."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] == "/":
        return path[len(root) :]
    return path
