"""Which requests the job routes' fast path takes, and that it answers as the app would.

The broker's own HTTP tests (``integration/test_broker_http.py`` and the security and
hostile-input suites) go through the fast path for every push, claim, heartbeat, ack and
nack; these pin down the routing decisions they cannot see.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from obque.broker.app import create_app
from obque.broker.hot import HotRoutes
from obque.broker.settings import BrokerSettings
from obque.core import QueueNotFound


def scope(method: str, path: str, root_path: str = "") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "root_path": root_path}


async def _fallback(scope: Scope, receive: Receive, send: Send) -> None:  # pragma: no cover
    raise AssertionError("not called")


async def _handler(name: str, request: Request) -> Response:  # pragma: no cover
    raise AssertionError("not called")


ROUTES = HotRoutes(_fallback, {"push": _handler, "ack": _handler})


@pytest.mark.parametrize(
    ("method", "path", "root", "name"),
    [
        ("POST", "/v1/queues/q/push", "", "q"),
        ("POST", "/v1/queues/q-1/ack", "", "q-1"),
        ("POST", "/stage/v1/queues/q/push", "/stage", "q"),  # mounted under a prefix
    ],
)
def test_job_routes_are_taken(method: str, path: str, root: str, name: str) -> None:
    handler, got = ROUTES._match(scope(method, path, root))
    assert handler is _handler and got == name


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/queues/q/push"),  # the router answers 405
        ("POST", "/v1/queues/q/stats"),  # not a job route
        ("POST", "/v1/queues/q/push/extra"),
        ("POST", "/v1/queues//push"),
        ("POST", "/v1/queues/q"),
        ("POST", "/v2/queues/q/push"),
        ("POST", "/v1/queues/q/claim"),  # no handler registered in this table
    ],
)
def test_everything_else_goes_to_the_framework(method: str, path: str) -> None:
    assert ROUTES._match(scope(method, path))[0] is None


def test_a_lifespan_or_websocket_scope_is_never_taken() -> None:
    assert ROUTES._match({"type": "websocket", "path": "/v1/queues/q/push"})[0] is None


def test_errors_get_the_apps_error_shape_and_status() -> None:
    asyncio.run(_errors())


async def _errors() -> None:
    app = create_app(BrokerSettings(root="mem://hot-routes/", mode="serverless"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        missing = await client.post("/v1/queues/nope/push", json={"jobs": [{"payload": 1}]})
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == QueueNotFound.code
        bad = await client.post("/v1/queues/bad name!/ack", content=b"{")
        assert bad.status_code == 400 and set(bad.json()) == {"error"}
        wrong = await client.get("/v1/queues/nope/push")
        assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
