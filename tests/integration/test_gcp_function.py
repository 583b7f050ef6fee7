"""The Google Cloud Functions entry point (``obque.broker.gcp``) served by the real
``functions-framework --asgi`` over HTTP, against fake-gcs-server (SPEC §5, §7, §9, §10).

The function's source is the ``main.py`` a deployment generates (one import line); the
server runs as its own process with ``OBQUE_ROOT=gs://BUCKET/PREFIX/`` and
``STORAGE_EMULATOR_HOST``. One instance serves many requests at once, so concurrent
pushes share its group-commit engine, paced to GCS's one write per second per object.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

pytest.register_assert_rewrite("broker_proc")

from broker_proc import assert_error  # noqa: E402
from servers import StoreServer, free_ports  # noqa: E402

from obque.store import open_store  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MAIN_PY = "from obque.broker.gcp import handler\n"
PUSHES = 60
START_TIMEOUT_S = 60.0


class _Server:
    """The functions-framework process, in its own session, its output in a log file."""

    def __init__(self, argv: list[str], cwd: Path, env: Mapping[str, str]) -> None:
        self.log_path = cwd / "functions-framework.log"
        self._log: IO[bytes] = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_healthy(self, url: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.popen.poll() is None:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/healthz", timeout=2, trust_env=False).status_code == 200:
                    return
            time.sleep(0.05)
        status = "exited" if self.popen.poll() is not None else "timed out"
        pytest.fail(f"functions-framework did not start ({status})\n{self.log_tail()}", False)

    def stop(self, grace_s: float = 10.0) -> None:
        # gunicorn's arbiter leads the group: one signal reaches it and its worker.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()
        self._log.close()


@dataclass(frozen=True)
class CloudFunction:
    """A running functions-framework server and the root it serves."""

    url: str
    root: str  # gs://BUCKET/PREFIX/
    process: _Server

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, trust_env=False)

    def alive(self) -> bool:
        return self.process.popen.poll() is None


def _functions_framework() -> str:
    executable = Path(sys.executable).parent / "functions-framework"
    assert executable.exists(), f"{executable} missing; install the dev extra"
    return str(executable)


@pytest.fixture(scope="module")
def function(
    fake_gcs_server: StoreServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CloudFunction]:
    source = tmp_path_factory.mktemp("gcp-function")
    (source / "main.py").write_text(MAIN_PY)
    port = free_ports(1)[0]
    root = fake_gcs_server.uri(f"gcf-{uuid.uuid4().hex[:10]}/")
    env = fake_gcs_server.child_env()
    env.pop("OBQUE_TOKEN", None)
    env["OBQUE_ROOT"] = root
    argv = [_functions_framework(), "--asgi", "--target", "handler", "--source", "main.py"]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    process = _Server(argv, source, env)
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_healthy(url)
        yield CloudFunction(url, root, process)
    finally:
        process.stop()


@pytest.fixture
def http(function: CloudFunction) -> Iterator[httpx.Client]:
    assert function.alive(), function.process.log_tail()
    with function.client() as client:
        yield client
    assert function.alive(), function.process.log_tail()


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    return response.json()


def test_concurrent_pushes_are_group_committed(function: CloudFunction, http: httpx.Client) -> None:
    assert _ok(http.put("/v1/queues/burst"), 201)["name"] == "burst"
    before = _ok(http.get("/v1/queues/burst/stats"))

    async def push_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=PUSHES)
        async with httpx.AsyncClient(
            base_url=function.url, timeout=60, limits=limits, trust_env=False
        ) as client:
            return await asyncio.gather(
                *(
                    client.post("/v1/queues/burst/push", json={"jobs": [{"payload": {"n": i}}]})
                    for i in range(PUSHES)
                )
            )

    answers = asyncio.run(push_all())
    ids = [_ok(answer)["ids"][0] for answer in answers]
    assert len(set(ids)) == PUSHES, "two pushes got the same id"
    after = _ok(http.get("/v1/queues/burst/stats"))
    commits = after["commits"] - before["commits"]
    print(f"\n{PUSHES} concurrent pushes in {commits} commits ({PUSHES / commits:.1f} ops/commit)")
    assert (after["pushed"], after["ready"]) == (PUSHES, PUSHES)
    # One instance gathers the pushes into a few writes, at most one a second.
    assert 1 <= commits <= PUSHES // 6, commits
    jobs = _ok(http.get("/v1/queues/burst/jobs", params={"limit": 1000}))["jobs"]
    assert sorted(job["payload"]["n"] for job in jobs) == list(range(PUSHES))


def test_claim_heartbeat_ack_round_trip(http: httpx.Client) -> None:
    _ok(http.put("/v1/queues/trip", json={"lease_seconds": 60}), 201)
    [job_id] = _ok(http.post("/v1/queues/trip/push", json={"jobs": [{"payload": "ü"}]}))["ids"]
    [job] = _ok(http.post("/v1/queues/trip/claim", json={"worker": "w1"}))["jobs"]
    assert (job["id"], job["payload"], job["attempt"]) == (job_id, "ü", 1)
    lease = {"id": job_id, "lease": job["lease"]}
    [beat] = _ok(http.post("/v1/queues/trip/heartbeat", json={"leases": [lease]}))["results"]
    assert beat["ok"] and beat["lease_expires_ms"] >= job["lease_expires_ms"]
    assert _ok(http.post("/v1/queues/trip/ack", json={"leases": [lease]}))["results"] == [
        {"id": job_id, "ok": True}
    ]
    again = _ok(http.post("/v1/queues/trip/ack", json={"leases": [lease]}))["results"]
    assert again == [{"id": job_id, "ok": False, "error": "lease_lost"}]
    stats = _ok(http.get("/v1/queues/trip/stats"))
    assert (stats["pushed"], stats["acked"], stats["ready"], stats["claimed"]) == (1, 1, 0, 0)
    assert stats["broker"] is None  # serverless instances advertise nothing themselves


def test_errors_have_the_json_shape(
    function: CloudFunction, http: httpx.Client, fake_gcs: StoreServer
) -> None:
    _ok(http.put("/v1/queues/small", json={"max_payload_bytes": 1024, "max_jobs": 1}), 201)
    assert_error(http.get("/v1/queues/missing/stats"), 404, "queue_not_found", "missing")
    assert_error(
        http.post("/v1/queues/small/push", content=b'{"jobs": ['), 400, "invalid_request", "JSON"
    )
    assert_error(
        http.post("/v1/queues/small/claim", json={"worker": "w", "max": 101}),
        400,
        "invalid_request",
        "100",
    )
    assert_error(http.get("/v1/queues/Bad!/stats"), 400, "invalid_request", "Bad!")
    assert_error(
        http.post("/v1/queues/small/push", json={"jobs": [{"payload": "x" * 2000}]}),
        413,
        "payload_too_large",
        "1024",
    )
    _ok(http.post("/v1/queues/small/push", json={"jobs": [{"payload": 1}]}))
    assert_error(
        http.post("/v1/queues/small/push", json={"jobs": [{"payload": 2}]}), 429, "queue_full"
    )
    assert_error(http.get("/v1/nothing/here"), 404, "not_found")

    # A file that does not parse is named in a 500 and never overwritten.
    corrupt = open_store(f"{function.root}corrupt.json")
    garbage = b'{"format": "obque/1", "jobs": ['
    corrupt.write(garbage, None)
    before = corrupt.read()
    for answer in (
        http.post("/v1/queues/corrupt/push", json={"jobs": [{"payload": 1}]}),
        http.get("/v1/queues/corrupt/stats"),
    ):
        assert_error(answer, 500, "queue_file_corrupt", "corrupt.json")
    assert corrupt.read() == before
    assert before is not None and before.data == garbage
