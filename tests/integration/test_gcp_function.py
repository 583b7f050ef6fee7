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
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

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


def _poll_generations(
    server: StoreServer, key: str, seen: list[tuple[int, str]], stop: threading.Event
) -> None:
    """Append every generation of ``key`` the store shows, with the server's own
    ``updated`` time, until ``stop``: polled every 50 ms, while a paced generation lives
    about a second, so none is missed (the test checks the count against the commits)."""
    url = f"{server.endpoint}/storage/v1/b/{server.bucket}/o/{quote(key, safe='')}"
    with httpx.Client(timeout=10, trust_env=False) as client:
        while not stop.is_set():
            meta = client.get(url).json()
            if not seen or seen[-1][0] != int(meta["generation"]):
                seen.append((int(meta["generation"]), meta["updated"]))
            stop.wait(0.05)


def test_commits_are_a_write_interval_apart_in_the_store(
    function: CloudFunction, http: httpx.Client, fake_gcs: StoreServer
) -> None:
    """The GCS store has a 1 s minimum write interval: the generations of the queue file
    that the instance's commits make are at least that far apart, by the store's own
    ``updated`` times (not the test's clock)."""
    _ok(http.put("/v1/queues/paced"), 201)
    before = _ok(http.get("/v1/queues/paced/stats"))
    key = f"{function.root.removeprefix(f'gs://{fake_gcs.bucket}/')}paced.json"
    seen: list[tuple[int, str]] = []
    stop = threading.Event()
    poller = threading.Thread(target=_poll_generations, args=(fake_gcs, key, seen, stop))
    poller.start()
    try:
        deadline = time.monotonic() + 30
        while not seen and poller.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)  # the created file is seen before any commit
        assert len(seen) == 1, seen

        async def waves() -> None:
            async with httpx.AsyncClient(base_url=function.url, timeout=60, trust_env=False) as c:
                for wave in range(4):  # each wave waits for its commit: >= 4 commits
                    answers = await asyncio.gather(
                        *(
                            c.post("/v1/queues/paced/push", json={"jobs": [{"payload": i}]})
                            for i in range(10 * wave, 10 * wave + 10)
                        )
                    )
                    assert [a.status_code for a in answers] == [200] * 10

        asyncio.run(waves())
        after = _ok(http.get("/v1/queues/paced/stats"))
        commits = after["commits"] - before["commits"]
        deadline = time.monotonic() + 10
        while len(seen) < 1 + commits and time.monotonic() < deadline:
            time.sleep(0.02)  # the poller catches up with the last generation
    finally:
        stop.set()
        poller.join(30)
    assert after["pushed"] == 40 and commits >= 4, (commits, after)
    _created, *committed = seen
    assert len(committed) == commits, (commits, seen)  # every commit's generation was seen
    times = [datetime.fromisoformat(updated.replace("Z", "+00:00")) for _, updated in committed]
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(times)]
    print(f"\ngenerations of paced.json {[round(g, 3) for g in gaps]} s apart")
    assert min(gaps) >= 0.9, gaps  # a lower bound: pacing never writes early
