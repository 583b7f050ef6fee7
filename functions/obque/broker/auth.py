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

__all__ = ["OPEN_PATHS", "BearerAuth", "CrossSiteGuard", "token_matches"]

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


class CrossSiteGuard:
    """For brokers without a token: refuse what a web page could make a browser send.

    A loopback broker is reachable by every page its user opens: a "simple" cross-site
    POST needs no preflight, and DNS rebinding lets a page talk to 127.0.0.1 under its own
    host name. Browsers mark such requests (``Origin``, ``Sec-Fetch-Site``) and carry the
    page's host in ``Host``; programs (the client, curl) send neither an ``Origin`` nor a
    foreign ``Host``. The dashboard, served by the broker itself, is same-origin.
    """

    def __init__(self, app: ASGIApp, hosts: frozenset[str] | None) -> None:
        self.app = app
        #: Host names the broker answers to, or None when any will do (a public bind).
        self.hosts = hosts

    def _allowed(self, scope: Scope) -> bool:
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        if self.hosts is not None and _hostname(host) not in self.hosts:
            return False
        site = headers.get(b"sec-fetch-site")
        if site is not None and site not in (b"same-origin", b"none"):
            return False
        origin = headers.get(b"origin")
        if origin is not None and origin != b"null":
            origin_host = origin.decode("latin-1").partition("://")[2]
            return bool(origin_host.lower() == host.lower())
        return origin is None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        refusal = Unauthorized(
            "cross-site or foreign-host browser requests are refused by a broker without a "
            "token; start it with --token to serve other origins"
        )
        await error_response(refusal)(scope, receive, send)


def _hostname(host: str) -> str:
    """``Host`` without its port (``[::1]:8080`` -> ``::1``)."""
    if host.startswith("["):
        return host[1 : host.find("]")].lower()
    return host.rpartition(":")[0].lower() if host.count(":") == 1 else host.lower()
