"""Fuzzing the HTTP API from its own OpenAPI document (SPEC §12), with schemathesis.

One real ``obque broker`` process (with a token) serves three seeded queues: ``alpha``
(jobs, a dead letter, a small ``max_payload_bytes``), ``beta`` (a tiny ``max_jobs``, so
pushes meet ``queue_full``) and ``broken`` (a corrupt file, so every operation meets the
one documented 500). The schema is loaded from the broker's ``/openapi.json`` over HTTP,
and every operation is fuzzed with schema-valid requests (positive) and, when it takes
input, with requests that break the schema (negative). The ``{name}`` path parameter is drawn from
the seeded queues half the time and generated the other half.

Every answer must:

- never be a 5xx, except ``500 queue_file_corrupt`` for the corrupt queue;
- be an error in the one shape ``{"error": {"code", "message"}}`` whenever it is not 2xx;
- conform to the schema (documented status, content type, body, headers);
- for a positive request, be a 2xx or an answer the queue's state explains
  (``queue_not_found``, ``queue_full``, ``payload_too_large``, ``queue_file_corrupt``);
- for a negative request, be a 4xx (or the corrupt queue's 500, found before the body).

Generation is derandomized (Hypothesis derives its seed from the test), with no example
database, so every run sends the same requests; the budget keeps the module well under
90 s. One adjustment keeps the run bounded, turning a valid value into another valid
one: long polls are cut to ``wait_seconds: 0`` (waiting is tested in
test_broker_http.py). Requests are otherwise sent as generated: an integer field the
generator fills with ``3.0`` (JSON Schema's integer too) must be accepted as ``3``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case, GenerationMode
from schemathesis.core import NOT_SET
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from obque.core.limits import NAME_PATTERN

# broker_proc is also loaded as a plugin (its fixtures and report hook); have its asserts
# rewritten before the import below, as pytest does for plugins.
pytest.register_assert_rewrite("broker_proc")

from broker_proc import BrokerFactory, BrokerProcess, attach_logs  # noqa: E402

pytest_plugins = ["broker_proc"]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TOKEN = "fuzz-token-5b0c1e9d7a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GOOD_QUEUES = ("alpha", "beta")
CORRUPT_QUEUE = "broken"
CORRUPT_BYTES = b"\x00\xffnot a queue file {{{\n"
#: Examples per operation and generation mode: the module takes ~25 s on a 2-core machine.
EXAMPLES = 75

#: Every operation of the published schema; test_schema_publishes_these_operations keeps
#: this list honest, so a new route cannot escape the fuzzing.
OPERATIONS = [
    ("PUT", "/v1/queues/{name}"),
    ("GET", "/v1/queues"),
    ("POST", "/v1/queues/{name}/push"),
    ("POST", "/v1/queues/{name}/claim"),
    ("POST", "/v1/queues/{name}/heartbeat"),
    ("POST", "/v1/queues/{name}/ack"),
    ("POST", "/v1/queues/{name}/nack"),
    ("GET", "/v1/queues/{name}/stats"),
    ("GET", "/v1/queues/{name}/jobs"),
    ("POST", "/v1/queues/{name}/dead/redrive"),
    ("POST", "/v1/queues/{name}/dead/purge"),
    ("GET", "/metrics"),
]
#: Operations with nothing in their request to break: fuzzed with valid requests only.
NO_INPUT = {("GET", "/v1/queues"), ("GET", "/metrics")}
FUZZ_CASES = [
    pytest.param(method, path, mode, id=f"{method} {path}-{mode.value}")
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or (method, path) not in NO_INPUT
]
#: What a schema-valid request may still meet, by the state of the queue it names.
ACCEPTABLE_REFUSALS = {
    404: "queue_not_found",
    413: "payload_too_large",
    429: "queue_full",
    500: "queue_file_corrupt",
}
CONFORMANCE = [
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


# -- the broker and its schema -----------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_broker(module_brokers: BrokerFactory) -> BrokerProcess:
    broker = module_brokers.start(module_brokers.root(), token=TOKEN)
    with broker.client() as http:
        put = http.put("/v1/queues/alpha", json={"max_payload_bytes": 64, "max_attempts": 1})
        assert put.status_code == 201, put.text
        assert http.put("/v1/queues/beta", json={"max_jobs": 5}).status_code == 201
        jobs = [{"payload": {"n": i}, "key": f"seed-{i}"} for i in range(10)]
        assert http.post("/v1/queues/alpha/push", json={"jobs": jobs}).status_code == 200
        (claimed,) = http.post("/v1/queues/alpha/claim", json={"worker": "seed"}).json()["jobs"]
        lease = {"id": claimed["id"], "lease": claimed["lease"]}  # max_attempts 1: buried
        assert http.post("/v1/queues/alpha/nack", json={"leases": [lease]}).status_code == 200
        assert http.post("/v1/queues/alpha/claim", json={"worker": "seed"}).status_code == 200
    (module_brokers.root_dir() / f"{CORRUPT_QUEUE}.json").write_bytes(CORRUPT_BYTES)
    return broker


@pytest.fixture(scope="module")
def api(fuzz_broker: BrokerProcess) -> Any:
    schema = schemathesis.openapi.from_url(f"{fuzz_broker.url}/openapi.json", headers=AUTH)
    schema.config.update(headers=AUTH)  # every generated request carries the token
    return schema


@pytest.fixture
def broker(
    request: pytest.FixtureRequest, fuzz_broker: BrokerProcess, module_brokers: BrokerFactory
) -> Iterator[BrokerProcess]:
    attach_logs(request, module_brokers)
    assert fuzz_broker.alive(), fuzz_broker.log()
    yield fuzz_broker
    assert fuzz_broker.alive(), f"the broker died during the test:\n{fuzz_broker.log()}"
    assert "Traceback" not in fuzz_broker.log()
    assert_queue_files_intact(module_brokers.root_dir())


def assert_queue_files_intact(root: Path) -> None:
    """Every queue file still decodes, the corrupt one is untouched, and nothing else was
    written beside them (a generated name never became an object)."""
    for name in GOOD_QUEUES:
        state = json.loads((root / f"{name}.json").read_bytes())
        assert state["format"] == "obque/1" and state["name"] == name, state
    assert (root / f"{CORRUPT_QUEUE}.json").read_bytes() == CORRUPT_BYTES
    files = {p.name for p in root.iterdir() if p.is_file() and not p.name.startswith(".")}
    created = {name for name in files if name.endswith(".json")} - {
        f"{q}.json" for q in (*GOOD_QUEUES, CORRUPT_QUEUE)
    }
    # PUT with a generated valid name creates a queue: that is the API working. Anything
    # else (a dot-file, a path outside the pattern) would be an escape.
    assert all(is_valid_queue_file(name) for name in created), sorted(created)


def is_valid_queue_file(filename: str) -> bool:
    return filename.endswith(".json") and bool(NAME_PATTERN.fullmatch(filename[: -len(".json")]))


# -- what every answer must be -----------------------------------------------------------


def without_long_polls(case: Case) -> None:
    body = case.body
    if isinstance(body, dict) and "/claim" in case.operation.path:
        wait = body.get("wait_seconds")
        if isinstance(wait, int | float) and not isinstance(wait, bool) and 0 < wait <= 20:
            body["wait_seconds"] = 0


def error_code(response: Any) -> str:
    """The code of an error answer, after checking its shape."""
    described = f"{response.status_code} {response.text[:500]!r}"
    assert response.headers["content-type"][0].startswith("application/json"), described
    assert "Traceback" not in response.text, described
    body = json.loads(response.content)
    code = body.get("error", {}).get("code") if isinstance(body, dict) else None
    expected = {"error", "broker"} if code == "not_leader" else {"error"}
    assert isinstance(body, dict) and set(body) == expected, described
    assert set(body["error"]) == {"code", "message"}, described
    assert isinstance(code, str) and code, described
    message = body["error"]["message"]
    assert isinstance(message, str) and message.strip(), described
    return code


def check_answer(case: Case, response: Any, mode: GenerationMode) -> None:
    status = response.status_code
    described = f"{case.method} {case.formatted_path} -> {status} {response.text[:500]!r}"
    if status < 300:
        assert status in (200, 201), described
        return
    code = error_code(response)
    name = (case.path_parameters or {}).get("name")
    if status >= 500:
        assert (status, code) == (500, "queue_file_corrupt"), described
        assert name == CORRUPT_QUEUE, described
    if mode is GenerationMode.POSITIVE:
        assert ACCEPTABLE_REFUSALS.get(status) == code, described
    else:
        assert 400 <= status < 500 or code == "queue_file_corrupt", described


# -- the fuzzing ---------------------------------------------------------------------------


def test_schema_publishes_these_operations(api: Any, broker: BrokerProcess) -> None:
    published = {
        (operation.ok().method.upper(), operation.ok().path)
        for operation in api.get_all_operations()
    }
    assert published == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path", "mode"), FUZZ_CASES)
def test_fuzz(
    api: Any, broker: BrokerProcess, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api[path][method]
    strategy = operation.as_strategy(generation_mode=mode)
    if "{name}" in path:
        seeded = st.sampled_from((*GOOD_QUEUES, CORRUPT_QUEUE)).flatmap(
            lambda name: operation.as_strategy(generation_mode=mode, path_parameters={"name": name})
        )
        strategy = st.one_of(seeded, strategy)
    body_optional = method == "PUT" or "/dead/" in path

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def one_request(case: Case) -> None:
        without_long_polls(case)
        response = case.call(timeout=30)
        check_answer(case, response, mode)
        checks = list(CONFORMANCE)
        # A negative case may leave out an optional body; that request is valid.
        if mode is GenerationMode.NEGATIVE and not (body_optional and case.body is NOT_SET):
            checks.append(negative_data_rejection)
        case.validate_response(response, checks=checks)

    one_request()


def test_the_broker_still_serves_after_the_fuzz(broker: BrokerProcess) -> None:
    with httpx.Client(base_url=broker.url, headers=AUTH, timeout=10) as http:
        response = http.post("/v1/queues/alpha/push", json={"jobs": [{"payload": "after"}]})
        assert response.status_code in (200, 429), response.text
        assert http.get("/v1/queues/alpha/stats").status_code == 200
