"""CloudFormation custom resource ``Custom::ObqueQueue``: a queue file and its broker record.

    Create, Update   create NAME.json if it is absent (create-only: an existing queue and
                     its settings are left as they are), then point its ``broker`` record
                     at this deployment's Function URL by compare-and-set -- skipped when
                     the record already names it
    Delete           nothing: the queue outlives the stack (its jobs are data), and the
                     stack also retains the resource, so this is rarely even called

Properties (CloudFormation sends every value as a string)::

    QueueUri   s3://BUCKET/NAME.json
    BrokerUrl  the Function URL
    BrokerId   names the deployment in the record (``lambda:FUNCTION``)
    Config     optional settings for a new queue, e.g. {"lease_seconds": "60"}

A plain Lambda-backed resource, no provider framework: the handler answers CloudFormation
itself by PUTting to the pre-signed ``ResponseURL`` -- always, since a request left
unanswered holds the stack until the resource's ServiceTimeout. It needs obque (with
boto3) and the standard library only, and runs from the broker's bundle as the module
``obque_queue_resource``.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from obque.commit import Committer, create_queue
from obque.core import Advertise, BrokerRecord, InvalidRequest, QueueState
from obque.core.limits import check_queue_name
from obque.store import open_store

__all__ = ["Outcome", "apply_event", "ensure_queue", "on_event", "queue_name"]

log = logging.getLogger(__name__)

#: CloudFormation rejects responses over 4096 bytes; the reason is what gets cut.
_REASON_LIMIT = 1500
_SEND_ATTEMPTS = 4


@dataclass(frozen=True)
class Outcome:
    """What the resource did, as CloudFormation will see it."""

    physical_id: str
    data: dict[str, str] = field(default_factory=dict)


def on_event(event: Mapping[str, Any], context: Any) -> None:
    """The Lambda handler: apply the event and answer CloudFormation, whatever happens."""
    log.info("%s %s", event.get("RequestType"), _loggable(event))
    status, reason = "SUCCESS", ""
    try:
        outcome = apply_event(event)
    except Exception as exc:
        # Any failure must still reach CloudFormation, as a FAILED answer it can show.
        log.exception("%s failed", event.get("RequestType"))
        status, reason = "FAILED", f"{type(exc).__name__}: {exc}"
        stream = getattr(context, "log_stream_name", None)
        if stream:
            reason = f"{reason[:_REASON_LIMIT]} (log stream {stream})"
        outcome = Outcome(event.get("PhysicalResourceId") or _physical_id(event))
    send_response(event, status, outcome, reason)


def apply_event(event: Mapping[str, Any], *, clock: Callable[[], float] = time.time) -> Outcome:
    """Carry out one request; raises on failure (``on_event`` turns that into FAILED)."""
    properties = event.get("ResourceProperties") or {}
    request = event["RequestType"]
    if request == "Delete":
        # Never delete a queue: it holds jobs nobody else has.
        return Outcome(event.get("PhysicalResourceId") or _physical_id(event))
    if request not in ("Create", "Update"):
        raise InvalidRequest(f"unknown RequestType {request!r}")
    uri = _required(properties, "QueueUri")
    name = queue_name(uri)
    record = BrokerRecord(
        url=_required(properties, "BrokerUrl"),
        mode="serverless",
        id=_required(properties, "BrokerId"),
    )
    config = parse_config(properties.get("Config") or {})
    created, state = ensure_queue(uri, name, record, config, clock=clock)
    log.info("%s: %s, revision %d", uri, "created" if created else "exists", state.revision)
    return Outcome(
        uri,
        {"QueueUri": uri, "Created": str(created).lower(), "Revision": str(state.revision)},
    )


def ensure_queue(
    uri: str,
    name: str,
    record: BrokerRecord,
    config: Mapping[str, object],
    *,
    clock: Callable[[], float] = time.time,
) -> tuple[bool, QueueState]:
    """Create the queue file if absent (create-only), then make its ``broker`` record name
    ``record`` (by compare-and-set; nothing is written when it already does)."""
    store = open_store(uri)
    try:
        created, state = create_queue(store, name, dict(config), update=False)
        if not _advertises(state, record):
            state = advertise(Committer(store), record, now_ms=int(clock() * 1000))
    finally:
        store.close()
    return created, state


def advertise(committer: Committer, record: BrokerRecord, *, now_ms: int) -> QueueState:
    """Write ``record`` into the queue's ``broker`` field by compare-and-set.

    The epoch goes up by one, so a long-running broker that led the queue until now sees
    a record that is not its own on its next commit and stops (it is fenced).
    """
    current = committer.refresh().broker
    epoch = (current.epoch if current is not None else 0) + 1
    fresh = BrokerRecord(record.url, record.mode, record.id, epoch, now_ms)
    state, _ = committer.commit([Advertise(fresh)])
    return state


def parse_config(raw: object) -> dict[str, object]:
    """Queue settings from resource properties, where numbers arrive as strings."""
    if isinstance(raw, str):
        raw = json.loads(raw) if raw.strip() else {}
    if not isinstance(raw, Mapping):
        raise InvalidRequest(f"Config must be an object of queue settings, got {raw!r}")
    config: dict[str, object] = {}
    for key, value in raw.items():
        if isinstance(value, str):
            try:
                config[key] = int(value)
            except ValueError:
                try:
                    config[key] = float(value)
                except ValueError:
                    raise InvalidRequest(f"Config.{key} must be a number, got {value!r}") from None
        else:
            config[key] = value
    return config


def send_response(event: Mapping[str, Any], status: str, outcome: Outcome, reason: str) -> None:
    """PUT the answer to CloudFormation's pre-signed URL (retried: it is idempotent)."""
    body = json.dumps(
        {
            "Status": status,
            "Reason": reason or f"see CloudWatch Logs of {event.get('LogicalResourceId')}",
            "PhysicalResourceId": outcome.physical_id,
            "StackId": event.get("StackId"),
            "RequestId": event.get("RequestId"),
            "LogicalResourceId": event.get("LogicalResourceId"),
            "NoEcho": False,
            "Data": outcome.data,
        }
    ).encode()
    # The URL is signed without a content type: sending one would break the signature.
    request = urllib.request.Request(
        event["ResponseURL"],
        data=body,
        method="PUT",
        headers={"Content-Type": "", "Content-Length": str(len(body))},
    )
    for attempt in range(1, _SEND_ATTEMPTS + 1):
        try:
            with urllib.request.urlopen(request, timeout=20) as answer:
                log.info("answered %s: HTTP %s", status, answer.status)
                return
        except (urllib.error.URLError, TimeoutError) as exc:
            if attempt == _SEND_ATTEMPTS:
                raise
            log.warning("answering CloudFormation failed (%s); retrying", exc)
            time.sleep(attempt)


def _advertises(state: QueueState, record: BrokerRecord) -> bool:
    current = state.broker
    return current is not None and (current.url, current.mode, current.id) == (
        record.url,
        record.mode,
        record.id,
    )


def queue_name(uri: str) -> str:
    last = uri.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    if not last.endswith(".json"):
        raise InvalidRequest(f"QueueUri must name a queue file (…/NAME.json), got {uri!r}")
    return check_queue_name(last[: -len(".json")])


def _required(properties: Mapping[str, Any], key: str) -> str:
    value = properties.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"property {key} is required")
    return value


def _physical_id(event: Mapping[str, Any]) -> str:
    uri = (event.get("ResourceProperties") or {}).get("QueueUri")
    return uri if isinstance(uri, str) and uri else f"obque-queue-{event.get('RequestId')}"


def _loggable(event: Mapping[str, Any]) -> dict[str, Any]:
    # The response URL is a bearer credential for the answer: keep it out of logs.
    return {k: v for k, v in event.items() if k != "ResponseURL"}
