"""The queue file codec: round trips, raw payloads, unknown fields, corrupt files.

SPEC section 2: readers accept unknown fields and writers preserve them; a file that does
not parse or has a foreign ``format`` is never overwritten, and every operation fails
naming the object.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obque.commit import Committer, create_queue
from obque.core import (
    Ack,
    Advertise,
    BrokerRecord,
    Claim,
    ClaimResult,
    Configure,
    Heartbeat,
    InvalidRequest,
    LeaseRef,
    Nack,
    NackItem,
    NewJob,
    Op,
    Purge,
    Push,
    PushResult,
    QueueConfig,
    QueueFileCorrupt,
    QueueState,
    Redrive,
    Result,
    apply,
    decode_state,
    encode_state,
)
from obque.store import Store, open_store

T0 = 1_700_000_000_000
WHERE = "mem://codec-tests/queue.json"


def commit(state: QueueState, *ops: Op, now: int = T0) -> tuple[QueueState, list[Result]]:
    return apply(state, list(ops), now, f"nonce-{state.revision}".encode())


def leases(result: Result) -> list[LeaseRef]:
    assert isinstance(result, ClaimResult), result
    return [LeaseRef.of(job.id, job.lease) for job in result.jobs]


def rich_state() -> QueueState:
    """A queue using every part of the format: broker, config, ready, delayed, claimed
    and nacked jobs, per-job max_attempts, keys, dead letters, applied keys, stats."""
    state = QueueState.new("rich", QueueConfig(lease_seconds=20, max_attempts=3))
    state, _ = commit(
        state,
        Advertise(BrokerRecord(url="http://127.0.0.1:8080", id="b-1", epoch=2, heartbeat_ms=T0)),
        Push.of(
            [
                NewJob.of({"video": "a.mp4"}, key="upload-a"),
                NewJob.of("later", delay_seconds=60),
                NewJob.of([1, 2, 3], max_attempts=7),
                NewJob.of(None, key="doomed"),
                NewJob.of({"n": 5}),
            ]
        ),
    )
    state, [claimed] = commit(state, Claim.of("w1", 3), now=T0 + 1)
    one, three, four = leases(claimed)
    state, _ = commit(
        state,
        Nack.of([NackItem.of(one.id, one.lease, delay_seconds=5, error="flaky")]),
        Nack.of([NackItem.of(four.id, four.lease, dead=True, error="poison")]),
        Heartbeat.of([LeaseRef.of(three.id, three.lease)]),
        now=T0 + 2,
    )
    assert list(state.jobs) == ["1", "2", "3", "5"]
    assert [job.id for job in state.dead] == ["4"]
    assert "k:doomed" in state.applied
    return state


# -- round trip -----------------------------------------------------------------------


def test_round_trip_of_a_rich_state() -> None:
    state = rich_state()
    data = encode_state(state)
    decoded = decode_state(data, WHERE)
    assert decoded == state
    assert encode_state(decoded) == data


def test_round_trip_of_a_new_queue() -> None:
    state = QueueState.new("fresh")
    data = encode_state(state)
    assert decode_state(data, WHERE) == state
    assert encode_state(decode_state(data, WHERE)) == data


def test_decoded_state_commits_exactly_like_the_original() -> None:
    state = rich_state()
    decoded = decode_state(encode_state(state), WHERE)
    ops: list[Op] = [
        Push.of([NewJob.of("x", key="upload-a"), NewJob.of("y", key="doomed")]),
        Claim.of("w2", 10),
        Redrive(),
    ]
    want = apply(state, ops, T0 + 10_000, b"same")
    got = apply(decoded, ops, T0 + 10_000, b"same")
    assert got[1] == want[1]
    assert encode_state(got[0]) == encode_state(want[0])


def shared_key_state() -> QueueState:
    """A dead-lettered keyed job is redriven after its key stopped deduplicating and a new
    job took the key: the redriven job gives the key up (one live job per key)."""
    state = QueueState.new("q", QueueConfig(dedup_seconds=10))
    state, _ = commit(state, Push.of([NewJob.of("old", key="k")]))
    state, [claimed] = commit(state, Claim.of("w"))
    [ref] = leases(claimed)
    state, _ = commit(state, Nack.of([NackItem.of(ref.id, ref.lease, dead=True)]))
    later = T0 + 20_000
    state, [pushed] = commit(state, Push.of([NewJob.of("new", key="k")]), now=later)
    assert isinstance(pushed, PushResult) and pushed.duplicates == ()
    state, _ = commit(state, Redrive(), now=later)
    assert sorted(job.key or "" for job in state.jobs.values()) == ["", "k"]
    return state


def test_decoded_state_with_a_key_shared_by_two_live_jobs_is_the_same_state() -> None:
    state = shared_key_state()
    assert decode_state(encode_state(state), WHERE) == state


def test_push_deduplicates_the_same_way_before_and_after_a_reload() -> None:
    state = shared_key_state()
    reloaded = decode_state(encode_state(state), WHERE)
    op = Push.of([NewJob.of("again", key="k")])
    _, [in_memory] = apply(state, [op], T0 + 20_000, b"n")
    _, [after_reload] = apply(reloaded, [op], T0 + 20_000, b"n")
    assert in_memory == after_reload


# -- payloads -------------------------------------------------------------------------

RAW_PAYLOADS = [
    b'{"video":"a.mp4"}',
    b'{ "spaced" :  [1,  2 ,3] ,"k":"v" }',
    b"123456789012345678901234567890123456789",
    b"-0.0",
    b"0.1000000000000000055511151231257827",
    '"café 😀 日本語"'.encode(),
    b'"caf\\u00e9 \\ud83d\\ude00 \\"quoted\\" \\n"',
    b'[[[[{"deep": [true, false, null]}]]]]',
    b'{"a":{"b":{"c":{"d":[1,{"e":"f"}]}}}}',
    b'""',
    b"null",
]


def test_payloads_stay_byte_exact_raw_json() -> None:
    state, [pushed] = commit(
        QueueState.new("q"), Push.of([NewJob.of(msgspec.Raw(p)) for p in RAW_PAYLOADS])
    )
    assert isinstance(pushed, PushResult)
    data = encode_state(state)
    for payload in RAW_PAYLOADS:
        assert b'"payload":' + payload + b"," in data

    decoded = decode_state(data, WHERE)
    assert [bytes(job.payload) for job in decoded.jobs.values()] == RAW_PAYLOADS
    _, [claimed] = commit(decoded, Claim.of("w", len(RAW_PAYLOADS)))
    assert isinstance(claimed, ClaimResult)
    assert [bytes(job.payload) for job in claimed.jobs] == RAW_PAYLOADS


@pytest.mark.parametrize("payload", [b"1.5e+400", b"[-1e999]", b"9" * 4301])
def test_payloads_no_client_could_decode_are_refused(payload: bytes) -> None:
    with pytest.raises(InvalidRequest, match=r"numbers must fit a double"):
        NewJob.of(msgspec.Raw(payload))


def test_payloads_in_a_hand_written_file_stay_byte_exact() -> None:
    payload = b'{\n  "pretty": [1, 2],\n  "big": 98765432109876543210987654321\n}'
    data = (
        b'{"format": "obque/1", "name": "q", "revision": 3, "next_seq": 2,\n'
        b' "jobs": [{"id": "1", "payload": ' + payload + b', "enqueued_ms": 0, "ready_ms": 0}]}'
    )
    state = decode_state(data, WHERE)
    assert bytes(state.jobs["1"].payload) == payload
    after, _ = commit(state, Push.of([NewJob.of("other")]))
    assert b'"payload":' + payload + b"," in encode_state(after)


@settings(max_examples=50, deadline=None)
@given(
    payload=st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=12,
    )
)
def test_any_json_payload_round_trips(payload: Any) -> None:
    state, _ = commit(QueueState.new("q"), Push.of([NewJob.of(payload)]))
    decoded = decode_state(encode_state(state), WHERE)
    assert decoded == state
    assert msgspec.json.decode(bytes(decoded.jobs["1"].payload)) == payload


# -- unknown fields -------------------------------------------------------------------


def with_unknown_fields() -> bytes:
    """The rich state's file with fields a newer obque might add, at every level."""
    doc: dict[str, Any] = msgspec.json.decode(encode_state(rich_state()))
    doc["x_top"] = {"nested": [1, 2, {"z": None}]}
    doc["config"]["x_config"] = "c"
    doc["broker"]["x_broker"] = 7
    doc["stats"]["x_stats"] = [1.5]
    claimed = doc["jobs"][2]
    assert claimed["id"] == "3" and "claim" in claimed
    claimed["x_job"] = {"a": 1}
    claimed["claim"]["x_claim"] = "keep-me"
    doc["jobs"][0]["x_ready"] = True
    doc["dead"][0]["x_dead"] = "d"
    return msgspec.json.encode(doc)


def unknown_fields_of(data: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = msgspec.json.decode(data)
    jobs = {job["id"]: job for job in doc["jobs"]}
    dead = {job["id"]: job for job in doc["dead"]}
    return {
        "top": doc.get("x_top"),
        "config": doc["config"].get("x_config"),
        "broker": doc["broker"].get("x_broker"),
        "stats": doc["stats"].get("x_stats"),
        "job": jobs["3"].get("x_job"),
        "claim": jobs["3"].get("claim", {}).get("x_claim"),
        "ready": jobs["1"].get("x_ready"),
        "dead": dead["4"].get("x_dead"),
    }


EXPECTED_UNKNOWN = {
    "top": {"nested": [1, 2, {"z": None}]},
    "config": "c",
    "broker": 7,
    "stats": [1.5],
    "job": {"a": 1},
    "claim": "keep-me",
    "ready": True,
    "dead": "d",
}


def test_unknown_fields_survive_decode_and_encode() -> None:
    data = with_unknown_fields()
    assert unknown_fields_of(data) == EXPECTED_UNKNOWN
    state = decode_state(data, WHERE)
    assert unknown_fields_of(encode_state(state)) == EXPECTED_UNKNOWN


@pytest.mark.parametrize(
    "op",
    [
        Push.of([NewJob.of("unrelated")]),
        Configure.of({"retry_delay_seconds": 2}),
        Advertise(BrokerRecord(url="http://elsewhere:9000", epoch=3)),
        Purge(("999",)),
    ],
    ids=["push", "configure", "advertise", "purge-nothing"],
)
def test_unknown_fields_survive_an_unrelated_commit(op: Op) -> None:
    state = decode_state(with_unknown_fields(), WHERE)
    after, _ = commit(state, op, now=T0 + 3)
    after, _ = commit(after, Push.of([NewJob.of("more")]), now=T0 + 4)  # and another
    data = encode_state(after)
    assert unknown_fields_of(data) == EXPECTED_UNKNOWN
    assert decode_state(data, WHERE).revision == state.revision + 2


def test_claim_unknown_fields_survive_a_heartbeat() -> None:
    state = decode_state(with_unknown_fields(), WHERE)
    claim_record = state.jobs["3"].claim
    assert claim_record is not None
    after, _ = commit(state, Heartbeat.of([LeaseRef.of("3", claim_record.lease)]), now=T0 + 10)
    assert unknown_fields_of(encode_state(after))["claim"] == "keep-me"


def test_claim_unknown_fields_are_dropped_when_the_job_is_claimed_again() -> None:
    state = decode_state(with_unknown_fields(), WHERE)
    claim_record = state.jobs["3"].claim
    assert claim_record is not None
    # The lease lapses and the job is claimed by someone else: a new claim record.
    after, [result] = commit(state, Claim.of("w2", 10), now=claim_record.expires_ms + 1)
    assert "3" in [ref.id for ref in leases(result)]

    found = unknown_fields_of(encode_state(after))
    assert found["claim"] is None
    assert found["job"] == {"a": 1}  # the job's own unknown fields stay
    assert found["top"] == EXPECTED_UNKNOWN["top"]


def test_job_unknown_fields_follow_the_job_to_the_dead_letters() -> None:
    state = decode_state(with_unknown_fields(), WHERE)
    claim_record = state.jobs["3"].claim
    assert claim_record is not None
    after, _ = commit(state, Nack.of([NackItem.of("3", claim_record.lease, dead=True)]))
    doc: dict[str, Any] = msgspec.json.decode(encode_state(after))
    [buried] = [job for job in doc["dead"] if job["id"] == "3"]
    assert buried["x_job"] == {"a": 1}
    assert "claim" not in buried


def test_unknown_fields_in_applied_entries_are_accepted_and_preserved() -> None:
    doc: dict[str, Any] = msgspec.json.decode(encode_state(rich_state()))
    doc["applied"]["k:doomed"]["x_applied"] = "newer"
    state = decode_state(msgspec.json.encode(doc), WHERE)
    after, _ = commit(state, Push.of([NewJob.of("unrelated")]))
    out: dict[str, Any] = msgspec.json.decode(encode_state(after))
    assert out["applied"]["k:doomed"]["x_applied"] == "newer"


def test_unknown_fields_survive_a_committer_commit() -> None:
    store = open_store(f"mem://codec-{uuid.uuid4().hex}")
    store.write(with_unknown_fields(), None)
    committer = Committer(store, clock=lambda: (T0 + 5) / 1000)
    committer.commit([Push.of([NewJob.of("unrelated")])])
    snap = store.read()
    assert snap is not None
    assert unknown_fields_of(snap.data) == EXPECTED_UNKNOWN


# -- corrupt and foreign files --------------------------------------------------------


def valid_file() -> bytes:
    return encode_state(rich_state())


def edited(edit: Callable[[dict[str, Any]], object]) -> bytes:
    doc: dict[str, Any] = msgspec.json.decode(valid_file())
    edit(doc)
    return msgspec.json.encode(doc)


def duplicate_job(doc: dict[str, Any]) -> None:
    doc["jobs"].append(dict(doc["jobs"][0]))


def drop_job_id(doc: dict[str, Any]) -> None:
    doc["jobs"][0].pop("id")


def with_unknown_field(
    edit: Callable[[dict[str, Any]], object],
) -> Callable[[dict[str, Any]], None]:
    def both(doc: dict[str, Any]) -> None:
        edit(doc)
        doc["x_new"] = 1

    return both


CORRUPT_FILES: dict[str, Callable[[], bytes]] = {
    "not-json": lambda: b"{this is not json",
    "empty": lambda: b"",
    "truncated": lambda: valid_file()[: len(valid_file()) // 2],
    "json-array": lambda: b'[{"format": "obque/1"}]',
    "json-null": lambda: b"null",
    "json-string": lambda: b'"obque/1"',
    "format-obque-2": lambda: edited(lambda d: d.update(format="obque/2")),
    "format-obque-2-with-unknown-fields": lambda: edited(
        lambda d: d.update(format="obque/2", x_new="field")
    ),
    "format-missing": lambda: edited(lambda d: d.pop("format")),
    "missing-revision": lambda: edited(lambda d: d.pop("revision")),
    "missing-name": lambda: edited(lambda d: d.pop("name")),
    "job-missing-id": lambda: edited(drop_job_id),
    "job-missing-payload": lambda: edited(lambda d: d["jobs"][0].pop("payload")),
    "job-missing-id-with-unknown-fields": lambda: edited(with_unknown_field(drop_job_id)),
    "revision-not-an-integer": lambda: edited(lambda d: d.update(revision="42")),
    "jobs-not-a-list": lambda: edited(lambda d: d.update(jobs={"1": {}})),
    "duplicate-job-id": lambda: edited(duplicate_job),
    "duplicate-job-id-with-unknown-fields": lambda: edited(with_unknown_field(duplicate_job)),
}


@pytest.mark.parametrize("make", CORRUPT_FILES.values(), ids=CORRUPT_FILES.keys())
def test_corrupt_file_raises_naming_the_object(make: Callable[[], bytes]) -> None:
    with pytest.raises(QueueFileCorrupt) as caught:
        decode_state(make(), WHERE)
    message = str(caught.value)
    assert WHERE in message
    assert "untouched" in message
    assert caught.value.code == "queue_file_corrupt"


def test_foreign_format_is_named_in_the_error() -> None:
    with pytest.raises(QueueFileCorrupt, match="obque/2"):
        decode_state(edited(lambda d: d.update(format="obque/2")), WHERE)


HOSTILE_FORMATS: dict[str, object] = {
    "long-string": "obque/2" + "x" * 100_000,
    "forged-log-line": "obque/2\n" + "ERROR forged log line " * 10,
    "huge-list": list(range(100_000)),
}


@pytest.mark.parametrize("fmt", HOSTILE_FORMATS.values(), ids=HOSTILE_FORMATS.keys())
@pytest.mark.parametrize("unknown_field", [False, True], ids=["strict", "with-extras"])
def test_a_foreign_format_is_quoted_short_and_on_one_line(fmt: object, unknown_field: bool) -> None:
    # Whoever can write the bucket chooses the format value; it reaches HTTP answers and
    # log lines, so the error quotes only its start, escaped.
    def edit(doc: dict[str, Any]) -> None:
        doc["format"] = fmt

    data = edited(with_unknown_field(edit) if unknown_field else edit)
    with pytest.raises(QueueFileCorrupt) as caught:
        decode_state(data, WHERE)
    message = caught.value.message
    assert message.startswith(f"{WHERE} has format ")
    assert "…, not 'obque/1'" in message
    assert "\n" not in message
    assert len(message) < len(WHERE) + 200
    assert "untouched" in message


def every_operation(store: Store) -> dict[str, Callable[[], object]]:
    def run(op: Op) -> Callable[[], object]:
        return lambda: Committer(store).commit([op])

    return {
        "refresh": lambda: Committer(store).refresh(),
        "commit-nothing": lambda: Committer(store).commit([]),
        "push": run(Push.of([NewJob.of("x")])),
        "claim": run(Claim.of("w")),
        "heartbeat": run(Heartbeat.of([LeaseRef.of("1", "lease")])),
        "ack": run(Ack.of([LeaseRef.of("1", "lease")])),
        "nack": run(Nack.of([NackItem.of("1", "lease")])),
        "redrive": run(Redrive()),
        "purge": run(Purge()),
        "configure": run(Configure.of({"lease_seconds": 5})),
        "advertise": run(Advertise(BrokerRecord(url="http://x"))),
        "create-queue": lambda: create_queue(store, "queue"),
        "create-queue-with-config": lambda: create_queue(store, "queue", {"max_attempts": 2}),
    }


@pytest.mark.parametrize("make", CORRUPT_FILES.values(), ids=CORRUPT_FILES.keys())
def test_every_operation_on_a_corrupt_file_fails_and_never_overwrites_it(
    make: Callable[[], bytes],
) -> None:
    store = open_store(f"mem://corrupt-{uuid.uuid4().hex}")
    store.write(make(), None)
    before = store.read()
    assert before is not None

    for name, operation in every_operation(store).items():
        with pytest.raises(QueueFileCorrupt) as caught:
            operation()
        assert store.uri in str(caught.value), name
        assert store.read() == before, f"{name} changed the stored file"


def test_one_committer_keeps_refusing_a_corrupt_file() -> None:
    store = open_store(f"mem://corrupt-{uuid.uuid4().hex}")
    store.write(b"{not json", None)
    committer = Committer(store)
    for _ in range(3):
        with pytest.raises(QueueFileCorrupt):
            committer.commit([Push.of([NewJob.of("x")])])
    snap = store.read()
    assert snap is not None and snap.data == b"{not json"
