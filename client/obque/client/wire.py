"""Turning a ``Call`` into an HTTP request and an HTTP answer into its value (pure)."""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import urlencode

import msgspec

from obque.client.auth import Auth
from obque.client.calls import Call, error_from_body
from obque.client.resolve import HttpEndpoint

__all__ = ["HttpRequest", "build_request", "read_answer", "read_timeout"]

T = TypeVar("T")
_encoder = msgspec.json.Encoder()

#: Seconds to wait for an answer beyond a long poll's own wait.
ANSWER_SLACK = 30.0


class HttpRequest(msgspec.Struct, frozen=True):
    method: str
    url: str
    headers: dict[str, str]
    body: bytes


def build_request(endpoint: HttpEndpoint, call: Call[Any], auth: Auth) -> HttpRequest:
    url = endpoint.queue_url(call.path)
    if call.query:
        url += "?" + urlencode(dict(call.query))
    body = b"" if call.body is None else _encoder.encode(call.body)
    headers = {"Content-Type": "application/json", **auth.headers(call.method, url, body)}
    return HttpRequest(call.method, url, headers, body)


def read_answer(call: Call[T], status: int, body: bytes, url: str) -> T:
    if 200 <= status < 300:
        return call.from_http(msgspec.json.decode(body))
    error = error_from_body(status, body, url)
    raise error


def read_timeout(call: Call[Any]) -> float:
    return call.wait_seconds + ANSWER_SLACK
