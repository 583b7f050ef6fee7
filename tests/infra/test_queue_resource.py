"""The ``Custom::ObqueQueue`` handler, run against S3 semantics (moto server over HTTP) and
answering a stand-in for CloudFormation's pre-signed response URL."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import Any

import pytest
from conftest import CfnResponses, S3Server
from infra_tools import INFRA, hermetic_env, run
from obque_infra.queue_resource import apply_event, on_event, parse_config

from obque.core import decode_state
from obque.core.errors import InvalidRequest

URL = "https://abc123.lambda-url.us-east-1.on.aws/"
BROKER_ID = "lambda:Obque-Broker"


class Context:
    log_stream_name = "2026/11/29/[$LATEST]abcdef"


def event(
    request: str,
    uri: str,
    responses: CfnResponses,
    *,
    url: str = URL,
    config: dict[str, str] | None = None,
    physical_id: str | None = None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "RequestType": request,
        "ResponseURL": responses.url,
        "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/Obque/guid",
        "RequestId": str(uuid.uuid4()),
        "LogicalResourceId": "Queuequeue",
        "ResourceType": "Custom::ObqueQueue",
        "ResourceProperties": {
            "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:init",
            "ServiceTimeout": "300",
            "QueueUri": uri,
            "BrokerUrl": url,
            "BrokerId": BROKER_ID,
            "Config": config or {},
        },
    }
    if physical_id is not None:
        doc["PhysicalResourceId"] = physical_id
    return doc


def read(s3: S3Server, bucket: str, key: str = "queue.json") -> dict[str, Any]:
    body = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    decode_state(body, f"s3://{bucket}/{key}")  # obque itself can read it
    return json.loads(body)


def test_create_writes_the_queue_with_config_and_broker(
    s3: S3Server, cfn_responses: CfnResponses
) -> None:
    bucket = s3.new_bucket()
    uri = f"s3://{bucket}/queue.json"
    on_event(
        event("Create", uri, cfn_responses, config={"lease_seconds": "120", "max_attempts": "3"}),
        Context(),
    )
    answer = cfn_responses.only()
    assert answer["Status"] == "SUCCESS", answer
    assert answer["PhysicalResourceId"] == uri
    assert answer["Data"] == {"QueueUri": uri, "Created": "true", "Revision": "2"}
    # The URL is signed without a content type; a sent one would break the signature.
    assert cfn_responses.headers[0].get("Content-Type", "") == ""
    doc = read(s3, bucket)
    assert doc["format"] == "obque/1"
    assert doc["name"] == "queue"
    assert doc["revision"] == 2  # created, then advertised
    assert doc["config"]["lease_seconds"] == 120
    assert doc["config"]["max_attempts"] == 3
    broker = doc["broker"]
    assert (broker["url"], broker["mode"], broker["id"], broker["epoch"]) == (
        URL,
        "serverless",
        BROKER_ID,
        1,
    )
    assert broker["heartbeat_ms"] > 0


def test_create_over_an_existing_queue_keeps_its_jobs_and_settings(
    s3: S3Server, cfn_responses: CfnResponses
) -> None:
    from obque.commit import Committer, create_queue
    from obque.core import NewJob, Push
    from obque.store import open_store

    bucket = s3.new_bucket()
    uri = f"s3://{bucket}/queue.json"
    store = open_store(uri)
    create_queue(store, "queue", {"lease_seconds": 45})
    Committer(store).commit([Push.of([NewJob.of({"n": 1})])])
    before = read(s3, bucket)

    answer = apply_event(
        event("Create", uri, cfn_responses, config={"lease_seconds": "999"}),
    )
    assert answer.data["Created"] == "false"
    after = read(s3, bucket)
    assert after["config"] == before["config"]  # create-only: settings untouched
    assert after["jobs"] == before["jobs"]
    assert after["revision"] == before["revision"] + 1
    assert after["broker"]["url"] == URL


def test_update_repoints_the_broker_by_cas_and_bumps_the_epoch(
    s3: S3Server, cfn_responses: CfnResponses
) -> None:
    bucket = s3.new_bucket()
    uri = f"s3://{bucket}/queue.json"
    apply_event(event("Create", uri, cfn_responses))
    created = read(s3, bucket)

    # Same URL on a later deploy: nothing to write.
    unchanged = apply_event(event("Update", uri, cfn_responses, physical_id=uri))
    assert unchanged.data["Revision"] == str(created["revision"])
    assert read(s3, bucket) == created

    moved = "https://def456.lambda-url.us-east-1.on.aws/"
    on_event(
        event(
            "Update", uri, cfn_responses, url=moved, config={"lease_seconds": "5"}, physical_id=uri
        ),
        Context(),
    )
    assert cfn_responses.only()["Status"] == "SUCCESS"
    after = read(s3, bucket)
    assert after["revision"] == created["revision"] + 1
    assert after["broker"]["url"] == moved
    assert after["broker"]["epoch"] == created["broker"]["epoch"] + 1
    assert after["config"] == created["config"]  # updates touch the broker record only


def test_update_fences_a_long_running_leader(s3: S3Server, cfn_responses: CfnResponses) -> None:
    from obque.commit import Committer, create_queue
    from obque.core import Advertise, BrokerRecord
    from obque.store import open_store

    bucket = s3.new_bucket()
    uri = f"s3://{bucket}/queue.json"
    store = open_store(uri)
    create_queue(store, "queue")
    leader = BrokerRecord("http://10.0.0.5:8080", "process", "b-1", 7, 1)
    Committer(store).commit([Advertise(leader)])
    apply_event(event("Update", uri, cfn_responses, physical_id=uri))
    broker = read(s3, bucket)["broker"]
    assert (broker["mode"], broker["epoch"], broker["url"]) == ("serverless", 8, URL)


def test_update_recreates_a_deleted_queue(s3: S3Server, cfn_responses: CfnResponses) -> None:
    bucket = s3.new_bucket()
    uri = f"s3://{bucket}/queue.json"
    outcome = apply_event(event("Update", uri, cfn_responses, physical_id=uri))
    assert outcome.data["Created"] == "true"
    assert read(s3, bucket)["broker"]["url"] == URL


def test_delete_never_deletes_the_queue(s3: S3Server, cfn_responses: CfnResponses) -> None:
    bucket = s3.new_bucket()
    uri = f"s3://{bucket}/queue.json"
    apply_event(event("Create", uri, cfn_responses))
    before = read(s3, bucket)
    on_event(event("Delete", uri, cfn_responses, physical_id=uri), Context())
    answer = cfn_responses.only()
    assert answer["Status"] == "SUCCESS"
    assert answer["PhysicalResourceId"] == uri
    assert read(s3, bucket) == before


def test_a_corrupt_queue_file_fails_and_is_left_alone(
    s3: S3Server, cfn_responses: CfnResponses
) -> None:
    bucket = s3.new_bucket()
    s3.client().put_object(Bucket=bucket, Key="queue.json", Body=b"{not json")
    on_event(event("Create", f"s3://{bucket}/queue.json", cfn_responses), Context())
    answer = cfn_responses.only()
    assert answer["Status"] == "FAILED"
    assert "queue.json" in answer["Reason"]
    assert Context.log_stream_name in answer["Reason"]
    body = s3.client().get_object(Bucket=bucket, Key="queue.json")["Body"].read()
    assert body == b"{not json"


def test_a_missing_bucket_fails_with_a_reason(s3: S3Server, cfn_responses: CfnResponses) -> None:
    uri = f"s3://obque-infra-absent-{uuid.uuid4().hex[:8]}/queue.json"
    on_event(event("Create", uri, cfn_responses), Context())
    answer = cfn_responses.only()
    assert answer["Status"] == "FAILED"
    assert "bucket" in answer["Reason"]
    assert answer["PhysicalResourceId"] == uri


@pytest.mark.parametrize(
    ("props", "message"),
    [
        ({"QueueUri": "s3://b/queue.txt"}, "must name a queue file"),
        ({"QueueUri": "s3://b/Bad Name.json"}, "invalid queue name"),
        ({"BrokerUrl": ""}, "BrokerUrl is required"),
        ({"Config": {"lease_seconds": "soon"}}, "must be a number"),
        ({"Config": {"colour": "1"}}, "unknown queue setting"),
    ],
)
def test_bad_properties_fail(
    props: dict[str, Any], message: str, cfn_responses: CfnResponses
) -> None:
    doc = event("Create", "s3://b/queue.json", cfn_responses)
    doc["ResourceProperties"].update(props)
    on_event(doc, Context())
    answer = cfn_responses.only()
    assert answer["Status"] == "FAILED"
    assert message in answer["Reason"]


def test_parse_config() -> None:
    assert parse_config({"lease_seconds": "60", "retry_delay_seconds": "1.5"}) == {
        "lease_seconds": 60,
        "retry_delay_seconds": 1.5,
    }
    assert parse_config('{"max_attempts": 3}') == {"max_attempts": 3}
    assert parse_config("") == {}
    with pytest.raises(InvalidRequest):
        parse_config(["lease_seconds"])


def _queue_file(s3: S3Server, *args: str) -> subprocess.CompletedProcess[str]:
    """``infra/queue_file.py`` as a Terraform user runs it, against the moto server."""
    return run([sys.executable, str(INFRA / "queue_file.py"), *args], env=hermetic_env(**s3.env))


def test_queue_file_script_creates_once_and_repoints_by_cas(s3: S3Server) -> None:
    """The Terraform module's follow-up (docs/deploy.md): create-only, then re-point the
    broker record by compare-and-set, never overwriting the queue's jobs or settings."""
    bucket = s3.new_bucket()
    uri = f"s3://{bucket}/queue.json"
    first = _queue_file(
        s3, uri, "--broker-url", URL, "--broker-id", "cf:a", "--config", '{"max_attempts": 4}'
    )
    assert first.returncode == 0, first.stderr
    assert "created, revision 2" in first.stdout  # created, then advertised
    s3.client().put_object(Bucket=bucket, Key="other.json", Body=b"{}")
    doc = read(s3, bucket)
    assert doc["broker"]["url"] == URL and doc["config"]["max_attempts"] == 4

    # A queue with jobs, as the broker leaves it: a re-run with other settings keeps it.
    import msgspec

    from obque.commit import Committer
    from obque.core import NewJob, Push
    from obque.store import open_store

    Committer(open_store(uri)).commit([Push((NewJob(msgspec.Raw(b'{"n": 1}')),))])
    same = _queue_file(
        s3, uri, "--broker-url", URL, "--broker-id", "cf:a", "--config", '{"max_attempts": 9}'
    )
    assert same.returncode == 0, same.stderr
    assert "exists, revision 3" in same.stdout  # nothing written
    moved = _queue_file(s3, uri, "--broker-url", "https://new.example/", "--broker-id", "cf:a")
    assert moved.returncode == 0, moved.stderr
    doc = read(s3, bucket)
    assert doc["broker"]["url"] == "https://new.example/"
    assert doc["broker"]["epoch"] == 2  # fences whoever led the queue before
    assert (doc["revision"], len(doc["jobs"]), doc["config"]["max_attempts"]) == (4, 1, 4)

    refused = _queue_file(s3, f"s3://{bucket}/other.json", "--broker-url", URL, "--broker-id", "x")
    assert refused.returncode == 1
    assert refused.stderr.startswith("queue_file: ") and "other.json" in refused.stderr
    assert "Traceback" not in refused.stderr
