"""Lambda Function URL events (payload format 2.0) and the answers functions give them.

A Function URL hands its function an event shaped like API Gateway's HTTP API payload
2.0: lower-case header names (repeated headers joined by commas), ``rawPath`` and
``rawQueryString`` with the parsed ``queryStringParameters`` (absent when there is no
query), the body as text or base64 (``isBase64Encoded``; absent when there is no body),
``cookies``, and ``requestContext.http`` with the method, path and caller. With the
``AWS_IAM`` auth type ``requestContext.authorizer.iam`` names the signed caller.

The function answers ``{"statusCode", "headers", "body", "isBase64Encoded", "cookies"?}``;
:func:`to_response` turns that into an ``httpx.Response`` so tests check it as they would
any HTTP answer.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx

__all__ = ["ACCOUNT", "NO_BODY", "REGION", "URL_ID", "function_url_event", "to_response"]

ACCOUNT = "123456789012"
REGION = "us-east-1"
URL_ID = "abcdefghijklmnopqrstuvwxyz012345"
DOMAIN = f"{URL_ID}.lambda-url.{REGION}.on.aws"
SOURCE_IP = "203.0.113.7"
USER_AGENT = "obque-tests/1"

#: ``json_body`` when the request has no JSON body (``None`` is the JSON ``null``).
NO_BODY: Any = object()


def _query(query: Mapping[str, str | list[str]] | str | None) -> tuple[str, dict[str, str]]:
    """``rawQueryString`` and ``queryStringParameters`` (repeated values comma-joined)."""
    if query is None:
        return "", {}
    raw = query if isinstance(query, str) else urlencode(query, doseq=True)
    params: dict[str, str] = {}
    for name, value in parse_qsl(raw, keep_blank_values=True):
        params[name] = f"{params[name]},{value}" if name in params else value
    return raw, params


def function_url_event(
    method: str,
    path: str,
    json_body: Any = NO_BODY,
    *,
    body: bytes | str | None = None,
    base64_body: bool = False,
    query: Mapping[str, str | list[str]] | str | None = None,
    headers: Mapping[str, str] | None = None,
    token: str | None = None,
    iam: bool = True,
) -> dict[str, Any]:
    """The event a Function URL gives its function for one HTTP request.

    ``json_body`` is encoded as JSON (with ``content-type: application/json``); ``body``
    is sent as given. ``base64_body`` delivers the body base64-encoded, as Lambda does
    for binary content types. ``token`` adds ``authorization: Bearer TOKEN``; ``iam``
    fills ``requestContext.authorizer`` as the ``AWS_IAM`` auth type does.
    """
    now = time.time()
    raw_query, params = _query(query)
    all_headers = {
        "host": DOMAIN,
        "user-agent": USER_AGENT,
        "accept": "application/json",
        "accept-encoding": "gzip, deflate",
        "x-amzn-trace-id": f"Root=1-{int(now):08x}-{uuid.uuid4().hex[:24]}",
        "x-forwarded-for": SOURCE_IP,
        "x-forwarded-port": "443",
        "x-forwarded-proto": "https",
    }
    data: bytes | None = None
    if json_body is not NO_BODY:
        data = json.dumps(json_body).encode()
        all_headers["content-type"] = "application/json"
    elif body is not None:
        data = body.encode() if isinstance(body, str) else body
    if data is not None:
        all_headers["content-length"] = str(len(data))
    if token is not None:
        all_headers["authorization"] = f"Bearer {token}"
    for name, value in (headers or {}).items():
        all_headers[name.lower()] = value

    request_context: dict[str, Any] = {
        "accountId": ACCOUNT if iam else "anonymous",
        "apiId": URL_ID,
        "domainName": DOMAIN,
        "domainPrefix": URL_ID,
        "http": {
            "method": method.upper(),
            "path": path,
            "protocol": "HTTP/1.1",
            "sourceIp": SOURCE_IP,
            "userAgent": all_headers["user-agent"],
        },
        "requestId": str(uuid.uuid4()),
        "routeKey": "$default",
        "stage": "$default",
        "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
        "timeEpoch": int(now * 1000),
    }
    if iam:
        request_context["authorizer"] = {
            "iam": {
                "accessKey": "AKIAIOSFODNN7EXAMPLE",
                "accountId": ACCOUNT,
                "callerId": "AIDACKCEVSQ6C2EXAMPLE",
                "cognitoIdentity": None,
                "principalOrgId": None,
                "userArn": f"arn:aws:iam::{ACCOUNT}:user/obque-tests",
                "userId": "AIDACKCEVSQ6C2EXAMPLE",
            }
        }
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": raw_query,
        "headers": all_headers,
        "requestContext": request_context,
        "isBase64Encoded": base64_body,
    }
    if params:
        event["queryStringParameters"] = params
    if data is not None:
        event["body"] = base64.b64encode(data).decode() if base64_body else data.decode()
    return event


def to_response(event: Mapping[str, Any], answer: Mapping[str, Any]) -> httpx.Response:
    """The HTTP answer a Function URL makes of the function's ``answer`` to ``event``."""
    assert isinstance(answer.get("statusCode"), int), answer
    raw = answer.get("body") or ""
    content = base64.b64decode(raw) if answer.get("isBase64Encoded") else raw.encode()
    headers = list((answer.get("headers") or {}).items())
    headers += [("set-cookie", cookie) for cookie in answer.get("cookies") or ()]
    context = event["requestContext"]
    query = f"?{event['rawQueryString']}" if event.get("rawQueryString") else ""
    request = httpx.Request(
        context["http"]["method"], f"https://{context['domainName']}{event['rawPath']}{query}"
    )
    return httpx.Response(answer["statusCode"], headers=headers, content=content, request=request)
