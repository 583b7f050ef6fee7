"""The deployed broker under its own IAM policy: moto's server with IAM enforced, the
broker role's policy as ``cdk synth`` writes it, and the Lambda handler in its own process
with an access key that carries only that policy.

What it shows: the routes a deployment serves work within the policy (``GET /v1/queues``
answers from ``OBQUE_QUEUES`` rather than a bucket LIST the policy refuses), a queue the
deployment does not serve is refused before S3 is asked, and when S3 does refuse the
broker's credentials the answer is 500 ``store_forbidden`` naming the object -- never a
retryable 503.

moto enforces IAM per process, so this server runs in its own process (enforcement
switched on through its ``/moto-api/reset-auth`` route once the test's setup is done),
apart from the session's unenforced moto server. moto checks actions and resources, but
it does not hold a LIST to the policy's ``s3:prefix`` condition (it allows listing the
bucket root that real S3 refuses this role), so what this test can show about listing is
that ``GET /v1/queues`` no longer needs it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from conftest import Assembly
from infra_tools import function_url_event, hermetic_env, need_module

need_module("aws_cdk")

_RUNNER = textwrap.dedent(
    """
    import json, sys

    class Context:
        def get_remaining_time_in_millis(self):
            return 30_000

    from obque.broker.aws import handler
    events = json.loads(sys.stdin.read())
    print(json.dumps([handler(event, Context()) for event in events]))
    """
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def enforcing_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto server process whose IAM enforcement the test switches on."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("moto-iam") / "moto.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env=hermetic_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log_path.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.2)
        yield endpoint
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def _resolve(value: Any, bucket_id: str, bucket: str) -> Any:
    """CloudFormation intrinsics of the broker policy, with the real bucket's name."""
    if isinstance(value, list):
        return [_resolve(v, bucket_id, bucket) for v in value]
    if not isinstance(value, dict):
        return value
    if "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(_resolve(parts, bucket_id, bucket))
    if "Fn::GetAtt" in value:
        logical_id, attribute = value["Fn::GetAtt"]
        assert attribute == "Arn", value
        if logical_id == bucket_id:
            return f"arn:aws:s3:::{bucket}"
        return f"arn:aws:logs:us-east-1:123456789012:log-group:{logical_id}"
    if "Ref" in value:
        return bucket if value["Ref"] == bucket_id else value["Ref"]
    return {k: _resolve(v, bucket_id, bucket) for k, v in value.items()}


def _broker_policy(assembly: Assembly, bucket: str) -> dict[str, Any]:
    (bucket_id,) = assembly.resources("AWS::S3::Bucket")
    (policy,) = [
        p
        for p in assembly.resources("AWS::IAM::Policy").values()
        if p["Properties"]["PolicyName"].startswith("BrokerRole")
    ]
    document: dict[str, Any] = _resolve(policy["Properties"]["PolicyDocument"], bucket_id, bucket)
    return document


def _invoke(endpoint: str, keys: dict[str, str], env: dict[str, str], events: list[Any]) -> Any:
    """The Lambda handler in its own process, holding only the broker's access key."""
    done = subprocess.run(
        [sys.executable, "-c", _RUNNER],
        input=json.dumps(events),
        env=hermetic_env(AWS_ENDPOINT_URL_S3=endpoint, **keys, **env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _error(answer: dict[str, Any]) -> tuple[int, str, str]:
    body = json.loads(answer["body"])
    return answer["statusCode"], body["error"]["code"], body["error"]["message"]


def test_the_broker_policy_allows_what_the_broker_does_and_refusals_are_not_retryable(
    enforcing_moto: str,
    default_assembly: Assembly,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from obque.commit import create_queue
    from obque.store import open_root

    session = boto3.session.Session(
        aws_access_key_id="setup", aws_secret_access_key="setup", region_name="us-east-1"
    )
    s3 = session.client("s3", endpoint_url=enforcing_moto)
    iam = session.client("iam", endpoint_url=enforcing_moto)
    bucket = "obque-iam-test"
    s3.create_bucket(Bucket=bucket)
    for key, value in {
        "AWS_ENDPOINT_URL_S3": enforcing_moto,
        "AWS_ACCESS_KEY_ID": "setup",
        "AWS_SECRET_ACCESS_KEY": "setup",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    create_queue(open_root(f"s3://{bucket}/").queue("queue"), "queue", {})
    create_queue(open_root(f"s3://{bucket}/").queue("other"), "other", {})
    # The role of a deployment whose `queues` context is the default, `queue`.
    policy = _broker_policy(default_assembly, bucket)
    iam.create_user(UserName="broker")
    iam.put_user_policy(UserName="broker", PolicyName="broker", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="broker")["AccessKey"]
    keys = {
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
    }
    switch_on = urllib.request.Request(
        f"{enforcing_moto}/moto-api/reset-auth",
        data=b"0",  # requests allowed before enforcement: none from now on
        headers={"Content-Type": "text/plain"},
        method="POST",
    )
    urllib.request.urlopen(switch_on, timeout=10).close()

    # Enforcement is on: the setup credentials are refused now.
    with pytest.raises(s3.exceptions.ClientError, match=r"InvalidAccessKeyId|AccessDenied"):
        s3.list_objects_v2(Bucket=bucket)

    served = {"OBQUE_ROOT": f"s3://{bucket}/", "OBQUE_QUEUES": "queue"}
    listed, pushed, stats, create_other, other = _invoke(
        enforcing_moto,
        keys,
        served,
        [
            function_url_event("GET", "/v1/queues"),
            function_url_event("POST", "/v1/queues/queue/push", {"jobs": [{"payload": {"n": 1}}]}),
            function_url_event("GET", "/v1/queues/queue/stats"),
            function_url_event("PUT", "/v1/queues/emails", {}),
            function_url_event("GET", "/v1/queues/other/stats"),
        ],
    )
    assert listed["statusCode"] == 200, listed
    assert json.loads(listed["body"])["queues"] == [
        {"name": "queue", "uri": f"s3://{bucket}/queue.json"}
    ]
    assert pushed["statusCode"] == 200, pushed
    assert stats["statusCode"] == 200, stats
    assert json.loads(stats["body"])["ready"] == 1
    status, code, message = _error(create_other)
    assert (status, code) == (400, "invalid_request")
    assert "'emails' is not one this deployment serves (queue)" in message
    status, code, message = _error(other)
    assert (status, code) == (404, "queue_not_found")
    assert "add it to the deployment's queues" in message

    # A broker told to serve a queue its role does not cover: S3 refuses, and the answer
    # says so once, without inviting a retry.
    misconfigured = {"OBQUE_ROOT": f"s3://{bucket}/", "OBQUE_QUEUES": "queue,other"}
    (refused,) = _invoke(
        enforcing_moto, keys, misconfigured, [function_url_event("GET", "/v1/queues/other/stats")]
    )
    status, code, message = _error(refused)
    assert (status, code) == (500, "store_forbidden"), refused
    assert f"s3://{bucket}/other.json" in message
    assert "403" in message and "may not access this object" in message
    assert "retry-after" not in {h.lower() for h in refused.get("headers", {})}


@pytest.fixture
def refusing_gcs() -> Iterator[str]:
    """A loopback stand-in for the GCS JSON API that refuses every request as IAM does."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    body = json.dumps(
        {
            "error": {
                "code": 403,
                "message": "broker@p.iam.gserviceaccount.com does not have "
                "storage.objects.get access to the Google Cloud Storage object.",
                "errors": [{"reason": "forbidden", "domain": "global"}],
            }
        }
    ).encode()

    class Refuse(BaseHTTPRequestHandler):
        def _refuse(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            self.rfile.read(length)
            self.send_response(403)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = _refuse

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_gcs_refusal_is_store_forbidden(
    refusing_gcs: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GCS's 403 (IAM, or an IAM condition on the object's name) is not retried and not
    answered as 503: the broker says ``store_forbidden`` and names the object."""
    need_module("google.cloud.storage")
    from obque.core.errors import StoreForbidden, StoreUnavailable
    from obque.store import open_store

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", refusing_gcs)
    store = open_store("gs://obque-iam-test/other.json")
    with pytest.raises(StoreForbidden) as read:
        store.read()
    with pytest.raises(StoreForbidden) as write:
        store.write(b"{}", expected=None)
    for refused in (read.value, write.value):
        assert not isinstance(refused, StoreUnavailable)
        assert refused.code == "store_forbidden"
        assert "gs://obque-iam-test/other.json" in refused.message
        assert "may not access this object" in refused.message
