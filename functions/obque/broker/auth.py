"""Bearer-token authentication for self-hosted brokers (a pure ASGI middleware).

The token is compared in constant time (``hmac.compare_digest``), so response timing says
nothing about how much of a guess was right. ``/healthz`` and the dashboard's static page
stay open; the page itself asks for the token before it calls the API.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from obque.broker.errors import error_response
from obque.core.errors import Unauthorized

__all__ = ["OPEN_PATHS", "BearerAuth", "token_matches"]

OPEN_PATHS = frozenset({"/healthz", "/"})


def token_matches(header: bytes | None, token: bytes) -> bool:
    if header is None or header[:7].lower() != b"bearer ":
        return False
    return hmac.compare_digest(header[7:].strip(), token)


class BearerAuth:
    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if not token_matches(header, self.token):
            await error_response(Unauthorized())(scope, receive, send)
            return
        await self.app(scope, receive, send)
