"""The AWS deployment, end to end and offline: what ``cdk deploy`` builds, run locally.

    obque CLI ──HTTP_PROXY──▶ Function URL front ──invoke──▶ Runtime API ──▶ awslambdaric
    (SigV4 from boto3's         (checks the SigV4            (local, as in     environments
     credential chain)           signature, makes the          the Lambda        running
        │                        payload 2.0 event)            service)          obque.broker.aws
        └── reads s3://…/queue.json ─────────▶ moto's S3 server ◀──── CAS ─────────┘

The queue is created by the stack's own custom-resource code (``obque_infra``), which
advertises the Function URL in ``queue.json``; the CLI finds the broker only from there.
The URL is ``http://ID.lambda-url.REGION.on.aws/``: ``HTTP_PROXY`` routes it to the
front on loopback, which stands in for the Function URL service with ``AWS_IAM`` auth: a
request without a valid signature is answered 403 as the real one does. Nothing here is
mocked inside obque: the client signs, the Lambda runtime client runs the handler, and
the handler commits to an S3 server over HTTP.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from e2e_support import Cli, FrontHandler, LoopbackServer, push_work_and_check
from lambda_events import DOMAIN, REGION, function_url_event
from lambda_runtime import LambdaEnvironments, RuntimeApi
from obque_infra.queue_resource import apply_event
from servers import StoreServer

HANDLER = "obque.broker.aws.handler"
BROKER_URL = f"http://{DOMAIN}/"
ENVIRONMENTS = 3
JOBS = 40
#: A signature older than this is refused, as AWS refuses one more than 15 minutes old.
MAX_SKEW_S = 15 * 60


# -- the Function URL front ----------------------------------------------------------------


def signature_problem(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    credentials: Mapping[str, str],
) -> str:
    """Why a request's SigV4 signature for service ``lambda`` is not valid ("" if it is),
    recomputed with botocore's signer from the secret the test's credentials hold."""
    authorization = headers.get("authorization", "")
    if not authorization.startswith("AWS4-HMAC-SHA256 "):
        return "no SigV4 authorization header"
    parts = dict(
        item.strip().split("=", 1)
        for item in authorization.removeprefix("AWS4-HMAC-SHA256 ").split(",")
    )
    key, day, region, service, _ = parts["Credential"].split("/")
    if (region, service) != (REGION, "lambda"):
        return f"signed for {region}/{service}, not {REGION}/lambda"
    stamp = headers.get("x-amz-date", "")
    signed_at = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    if abs(time.time() - signed_at.timestamp()) > MAX_SKEW_S or not stamp.startswith(day):
        return f"stale or inconsistent date {stamp}"
    signed = parts["SignedHeaders"].split(";")
    if "host" not in signed:
        return "host is not signed"
    request = AWSRequest(method=method, url=url, data=body, headers={h: headers[h] for h in signed})
    request.context["timestamp"] = stamp
    secret = credentials.get(key)
    if secret is None:
        return f"unknown access key {key}"
    signer = SigV4Auth(
        Credentials(key, secret, headers.get("x-amz-security-token")), service, region
    )
    expected = signer.signature(
        signer.string_to_sign(request, signer.canonical_request(request)), request
    )
    return "" if expected == parts["Signature"] else "signature does not match"


@dataclass
class FunctionUrlFront:
    """A loopback HTTP proxy that serves ``BROKER_URL`` the way a Function URL does."""

    api: RuntimeApi
    #: Access key -> secret: whom the front accepts (as IAM would).
    credentials: Mapping[str, str]
    signed: int = 0
    refused: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        front = self

        class Handler(FrontHandler):
            def _forward(self) -> None:
                body = self.body()
                url = urlsplit(self.path)
                headers = {name.lower(): value for name, value in self.headers.items()}
                headers.pop("proxy-connection", None)
                if url.hostname != DOMAIN:
                    self.answer(502, {}, b"this front serves only the Function URL")
                    return
                problem = signature_problem(
                    self.command, self.path, headers, body, front.credentials
                )
                if problem:
                    front.refused.append(problem)
                    self.answer(
                        403, {"content-type": "application/json"}, b'{"Message":"Forbidden"}'
                    )
                    return
                front.signed += 1
                event = function_url_event(
                    self.command,
                    url.path,
                    body=body if body else None,
                    query=url.query or None,
                    headers=headers,
                )
                invocation = front.api.invoke(event)
                if invocation.error:
                    self.answer(502, {}, b"Internal Server Error")
                    return
                answer = invocation.payload()
                raw = (answer.get("body") or "").encode()
                if answer.get("isBase64Encoded"):
                    raw = base64.b64decode(raw)
                self.answer(answer["statusCode"], answer.get("headers") or {}, raw)

            do_GET = do_POST = do_PUT = do_DELETE = _forward

        self.http = LoopbackServer(Handler)


# -- the deployment ---------------------------------------------------------------------


@dataclass
class Deployment:
    target: str
    obque: Cli
    front: FunctionUrlFront
    server: StoreServer
    key: str

    def queue_file(self) -> dict[str, Any]:
        with self.server.applied():
            import boto3

            s3 = boto3.session.Session().client("s3")
            body: bytes = s3.get_object(Bucket=self.server.bucket, Key=self.key)["Body"].read()
        doc: dict[str, Any] = json.loads(body)
        return doc


@pytest.fixture(scope="module")
def deployment(
    moto_server: StoreServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    prefix = f"e2e-{uuid.uuid4().hex[:10]}/"
    root = moto_server.uri(prefix)
    # The stack's custom resource: create the queue and advertise the Function URL.
    with moto_server.applied():
        outcome = apply_event(
            {
                "RequestType": "Create",
                "ResourceProperties": {
                    "QueueUri": f"{root}queue.json",
                    "BrokerUrl": BROKER_URL,
                    "BrokerId": "lambda:obque-e2e",
                    "Config": {"lease_seconds": "30", "max_attempts": "2"},
                },
            }
        )
    function_env = moto_server.child_env()
    function_env.update({"OBQUE_ROOT": root, "OBQUE_QUEUES": "queue"})
    function_env.pop("OBQUE_TOKEN", None)
    user_env = moto_server.child_env()
    for name in ("OBQUE_URL", "OBQUE_TOKEN", "OBQUE_ROOT", "HTTPS_PROXY", "https_proxy"):
        user_env.pop(name, None)
    with RuntimeApi() as api:
        environments = LambdaEnvironments(
            api, HANDLER, function_env, tmp_path_factory.mktemp("e2e-lambda")
        )
        with environments.running(ENVIRONMENTS):
            key = moto_server.env["AWS_ACCESS_KEY_ID"]
            front = FunctionUrlFront(api, {key: moto_server.env["AWS_SECRET_ACCESS_KEY"]})
            proxy = front.http.url
            user_env.update({"HTTP_PROXY": proxy, "http_proxy": proxy})
            try:
                yield Deployment(
                    outcome.physical_id, Cli(user_env), front, moto_server, f"{prefix}queue.json"
                )
            finally:
                front.http.close()


def test_the_deployed_queue_advertises_its_function_url(deployment: Deployment) -> None:
    doc = deployment.queue_file()
    assert doc["broker"]["url"] == BROKER_URL
    assert doc["broker"]["mode"] == "serverless"
    assert (doc["config"]["lease_seconds"], doc["config"]["max_attempts"]) == (30, 2)


def test_an_unsigned_request_never_reaches_the_function(deployment: Deployment) -> None:
    """The front is a real gate: without a signature (or with a wrong one) it answers 403."""
    refused_before = len(deployment.front.refused)
    proxy = deployment.front.http.url
    with httpx.Client(proxy=proxy, trust_env=False, timeout=30) as http:
        bare = http.get(f"{BROKER_URL}v1/queues/queue/stats")
        forged = http.get(
            f"{BROKER_URL}v1/queues/queue/stats",
            headers={
                "authorization": "AWS4-HMAC-SHA256 Credential=obquetestkey/20261130/us-east-1/"
                "lambda/aws4_request, SignedHeaders=host;x-amz-date, Signature=00",
                "x-amz-date": datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"),
            },
        )
    assert (bare.status_code, forged.status_code) == (403, 403)
    assert len(deployment.front.refused) == refused_before + 2


def test_push_work_and_stats_through_the_signed_function_url(
    deployment: Deployment, tmp_path: Path
) -> None:
    signed_before, refused_before = deployment.front.signed, len(deployment.front.refused)
    push_work_and_check(deployment.obque, deployment.target, tmp_path, JOBS)
    # Every one of those calls was signed by the client and checked by the front.
    assert deployment.front.signed > signed_before + 2
    assert deployment.front.refused[refused_before:] == []
