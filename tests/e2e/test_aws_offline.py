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
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
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

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                        self.send_header(name, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                url = urlsplit(self.path)
                headers = {name.lower(): value for name, value in self.headers.items()}
                headers.pop("proxy-connection", None)
                if url.hostname != DOMAIN:
                    self._answer(502, {}, b"this front serves only the Function URL")
                    return
                problem = signature_problem(
                    self.command, self.path, headers, body, front.credentials
                )
                if problem:
                    front.refused.append(problem)
                    self._answer(
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
                    self._answer(502, {}, b"Internal Server Error")
                    return
                answer = invocation.payload()
                raw = (answer.get("body") or "").encode()
                if answer.get("isBase64Encoded"):
                    raw = base64.b64decode(raw)
                self._answer(answer["statusCode"], answer.get("headers") or {}, raw)

            do_GET = do_POST = do_PUT = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the deployment ---------------------------------------------------------------------


@dataclass
class Deployment:
    target: str
    env: dict[str, str]
    front: FunctionUrlFront
    server: StoreServer
    key: str

    def obque(self, *args: str, stdin: str | None = None, timeout: float = 120) -> str:
        """Run the ``obque`` CLI as a user on a laptop would; fail with its output."""
        done = subprocess.run(
            [str(Path(sys.executable).parent / "obque"), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )
        assert done.returncode == 0, f"obque {' '.join(args)}: {done.stdout}\n{done.stderr}"
        return done.stdout

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
            user_env.update({"HTTP_PROXY": front.url, "http_proxy": front.url})
            try:
                yield Deployment(
                    outcome.physical_id, user_env, front, moto_server, f"{prefix}queue.json"
                )
            finally:
                front.close()


def test_the_deployed_queue_advertises_its_function_url(deployment: Deployment) -> None:
    doc = deployment.queue_file()
    assert doc["broker"]["url"] == BROKER_URL
    assert doc["broker"]["mode"] == "serverless"
    assert (doc["config"]["lease_seconds"], doc["config"]["max_attempts"]) == (30, 2)


def test_an_unsigned_request_never_reaches_the_function(deployment: Deployment) -> None:
    """The front is a real gate: without a signature (or with a wrong one) it answers 403."""
    refused_before = len(deployment.front.refused)
    proxy = deployment.front.url
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
    lines = "".join(json.dumps({"n": n}) + "\n" for n in range(JOBS))
    deployment.obque("push", deployment.target, "-", stdin=lines)
    # A job whose command fails twice is dead-lettered (the queue allows 2 attempts).
    deployment.obque("push", deployment.target, '{"fail": true}')
    done = tmp_path / "done.jsonl"
    command = (
        f'{sys.executable} -c "import json, sys; p = json.load(sys.stdin); '
        f"sys.exit('refused') if p.get('fail') else "
        f"open({str(done)!r}, 'a').write(json.dumps(p) + chr(10))\""
    )
    deployment.obque("work", deployment.target, "--command", command, "--max-jobs", str(JOBS + 2))
    seen = [json.loads(line)["n"] for line in done.read_text().splitlines()]
    assert sorted(seen) == list(range(JOBS))  # each job exactly once, none lost
    stats = json.loads(deployment.obque("stats", deployment.target, "--json"))
    assert (stats["ready"], stats["claimed"], stats["dead"]) == (0, 0, 1), stats
    assert stats["acked"] >= JOBS, stats
    dead = deployment.obque("dead", "list", deployment.target)
    assert "refused" in dead, dead
    # Every one of those calls was signed by the client and checked by the front.
    assert deployment.front.signed > signed_before + 2
    assert deployment.front.refused[refused_before:] == []
