"""A ``Worker`` process stopped by SIGTERM or SIGINT (SPEC §8): it stops claiming, gives
running handlers their grace, releases what is still running (nack, delay 0) and exits.

Workers run as real subprocesses -- a small script using ``obque.client.Worker``, or
``obque work --command`` -- and the queue is read afterwards: nothing may be left claimed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# broker_proc is also loaded as a plugin (its fixtures and report hook); have its asserts
# rewritten before the import below, as pytest does for plugins.
pytest.register_assert_rewrite("broker_proc")

from broker_proc import OBQUE, BrokerFactory, read_queue_file, wait_until  # noqa: E402

from obque.client import Client  # noqa: E402
from obque.commit import create_queue  # noqa: E402
from obque.store import open_store  # noqa: E402

pytest_plugins = ["broker_proc"]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

RELEASED = "released: worker shutting down"

WORKER_SCRIPT = textwrap.dedent(
    """
    import asyncio, dataclasses, json, signal, sys, time
    from obque.client import Client, Worker

    target, sleep_s, grace, concurrency, flavour = sys.argv[1:6]

    def handle(job):
        print(f"started {job.id}", flush=True)
        time.sleep(float(sleep_s))

    async def ahandle(job):
        print(f"started {job.id}", flush=True)
        await asyncio.sleep(float(sleep_s))

    with Client(target) as q:
        worker = Worker(
            q,
            ahandle if flavour == "async" else handle,
            concurrency=int(concurrency),
            grace_seconds=float(grace),
            worker_id="signal-test",
        )
        # The test signals as soon as it reads "ready"; until run() installs the
        # worker's own handlers, these do the same (else the default one kills us).
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: worker.stop())
        print("ready", flush=True)
        stats = worker.run()
    print("stats " + json.dumps(dataclasses.asdict(stats)), flush=True)
    """
)


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBQUE_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[str]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def started(self) -> int:
        return self.output().count("started ")

    def stop(self, sig: int, timeout: float) -> float:
        """Send ``sig``; return how long the process took to exit."""
        sent = time.monotonic()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            pytest.fail(f"worker still running {timeout:g}s after {sig!r}:\n{self.output()}")
        return time.monotonic() - sent

    def stats(self) -> dict[str, int]:
        lines = [ln for ln in self.output().splitlines() if ln.startswith("stats ")]
        assert lines, self.output()
        stats: dict[str, int] = json.loads(lines[-1].removeprefix("stats "))
        return stats


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    """Start worker subprocesses (killed at teardown if a test left one running)."""
    started: list[WorkerProcess] = []

    def start(args: list[str], cwd: Path = tmp_path) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started)}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env=clean_env(),
                text=True,
                # Its own process group, so teardown also ends the commands it started
                # (a released `sleep` outlives the worker: see test_obque_work_*).
                start_new_session=True,
            )
        worker = WorkerProcess(proc, log)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(10)


def python_worker(
    spawn: Any, tmp_path: Path, target: str, sleep: float, grace: float, n: int, flavour: str
) -> WorkerProcess:
    script = tmp_path / "signal_worker.py"
    script.write_text(WORKER_SCRIPT)
    args = [sys.executable, str(script), target, str(sleep), str(grace), str(n), flavour]
    worker: WorkerProcess = spawn(args)
    return worker


def by_id(jobs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {job["id"]: job for job in jobs}


def wait_running(q: Client, worker: WorkerProcess, count: int) -> None:
    wait_until(
        lambda: worker.started() >= count and q.stats()["claimed"] == count,
        timeout=20,
        what=f"{count} handlers to run ({worker.output()!r})",
    )


# -- a Worker in a Python script, behind a broker ------------------------------------------------


@pytest.fixture
def broker_queue(brokers: BrokerFactory) -> Iterator[str]:
    """A queue file advertising a running broker; yields its URI."""
    root_dir = brokers.root_dir()
    uri = (root_dir / "q.json").as_uri()
    create_queue(open_store(uri), "q")
    broker = brokers.start(brokers.root())
    wait_until(
        lambda: (read_queue_file(root_dir, "q").get("broker") or {}).get("url") == broker.url,
        timeout=20,
        what="the broker to advertise itself",
    )
    yield uri


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_short_grace_releases_running_jobs(
    spawn: Any, tmp_path: Path, broker_queue: str, sig: int, flavour: str
) -> None:
    with Client(broker_queue) as q:
        ids = q.push_many([{"n": n} for n in range(5)])
        worker = python_worker(spawn, tmp_path, broker_queue, 120, 0.5, 3, flavour)
        wait_running(q, worker, 3)
        running = {j["id"] for j in q.list_jobs("claimed")}
        assert running == set(ids[:3])

        took = worker.stop(sig, timeout=40)
        assert worker.proc.returncode == 0, worker.output()
        # Stop noticed within a second, 0.5 s of grace, then out -- not after the handlers'
        # 120 s (the bound is loose for a loaded machine).
        assert took < 20, worker.output()
        assert worker.stats() == {"succeeded": 0, "failed": 0, "released": 3, "lost": 0}
        assert "Traceback" not in worker.output()

        stats = q.stats()
        assert (stats["claimed"], stats["ready"], stats["acked"]) == (0, 5, 0)
        ready = by_id(q.list_jobs("ready"))
        assert set(ready) == set(ids)
        for job_id in ids[:3]:  # released: attempt counted, ready again at once
            assert ready[job_id]["attempts"] == 1
            assert ready[job_id]["last_error"] == RELEASED
        for job_id in ids[3:]:  # never claimed after the signal
            assert ready[job_id]["attempts"] == 0
            assert "last_error" not in ready[job_id]
        # Another worker takes the released jobs straight away, attempt 2.
        again = q.claim("next", max=5)
        assert {j.id: j.attempt for j in again} == {i: 2 if i in running else 1 for i in ids}


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_long_grace_lets_running_jobs_finish(
    spawn: Any, tmp_path: Path, broker_queue: str, flavour: str
) -> None:
    with Client(broker_queue) as q:
        ids = q.push_many([{"n": n} for n in range(5)])
        worker = python_worker(spawn, tmp_path, broker_queue, 2, 60, 3, flavour)
        wait_running(q, worker, 3)

        took = worker.stop(signal.SIGTERM, timeout=50)
        assert worker.proc.returncode == 0, worker.output()
        assert took < 30, worker.output()  # the handlers' 2 s, not the 60 s of grace
        assert worker.stats() == {"succeeded": 3, "failed": 0, "released": 0, "lost": 0}

        stats = q.stats()
        assert (stats["claimed"], stats["acked"], stats["ready"]) == (0, 3, 2)
        assert sorted(j["id"] for j in q.list_jobs("ready")) == sorted(ids[3:])
        assert all(j["attempts"] == 0 for j in q.list_jobs("ready"))


def test_idle_worker_stops_promptly(spawn: Any, tmp_path: Path, broker_queue: str) -> None:
    with Client(broker_queue) as q:
        worker = python_worker(spawn, tmp_path, broker_queue, 1, 30, 2, "sync")
        wait_until(lambda: "ready" in worker.output(), timeout=20, what="the worker to start")
        took = worker.stop(signal.SIGTERM, timeout=20)
        assert worker.proc.returncode == 0, worker.output()
        # An in-flight long poll (5 s) ends before the worker notices; nothing else waits.
        assert took < 20, worker.output()
        assert worker.stats() == {"succeeded": 0, "failed": 0, "released": 0, "lost": 0}
        assert q.stats()["claimed"] == 0


POLLING_WORKER_SCRIPT = textwrap.dedent(
    """
    import dataclasses, json, pathlib, sys
    import obque.client.worker as worker_module
    from obque.client import Client, Worker

    target, side_effect = sys.argv[1:3]
    # One long poll outlasts the test's signal-then-push, however slow the machine.
    worker_module.CLAIM_WAIT_SECONDS = 20

    class Announcing(Client):
        def claim(self, *args, **kwargs):
            print("polling", flush=True)
            return super().claim(*args, **kwargs)

    class Telling(Worker):
        def stop(self):
            super().stop()
            print("stopping", flush=True)

    def handle(job):
        pathlib.Path(side_effect).write_text(job.id)

    with Announcing(target) as q:
        worker = Telling(q, handle, worker_id="poller")
        stats = worker.run()
    print("stats " + json.dumps(dataclasses.asdict(stats)), flush=True)
    """
)


def test_jobs_a_poll_brings_after_the_signal_are_released_not_run(
    spawn: Any, tmp_path: Path, broker_queue: str
) -> None:
    """SIGTERM reaches a worker parked in a long poll; a push then wakes that poll with a
    job. The worker must hand it back at once (nack, delay 0), never start its handler."""
    script = tmp_path / "polling_worker.py"
    script.write_text(POLLING_WORKER_SCRIPT)
    side_effect = tmp_path / "handled"
    worker: WorkerProcess = spawn([sys.executable, str(script), broker_queue, str(side_effect)])
    with Client(broker_queue) as q:
        wait_until(lambda: "polling" in worker.output(), timeout=20, what="the first poll")
        worker.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "stopping" in worker.output(), timeout=20, what="the stop request")
        job_id = q.push({"late": True})
        try:
            worker.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker still running after SIGTERM:\n{worker.output()}")
        assert worker.proc.returncode == 0, worker.output()
        assert "Traceback" not in worker.output()
        assert worker.output().count("polling") == 1  # no claim after the stop
        assert worker.stats() == {"succeeded": 0, "failed": 0, "released": 1, "lost": 0}
        assert not side_effect.exists()

        stats = q.stats()
        assert (stats["claimed"], stats["ready"], stats["acked"]) == (0, 1, 0)
        (job,) = q.list_jobs("ready")
        # Claimed by the in-flight poll (attempt counted), released, ready at once.
        assert (job["id"], job["attempts"], job["last_error"]) == (job_id, 1, RELEASED)
        (again,) = q.claim("next")
        assert (again.id, again.attempt) == (job_id, 2)


# -- obque work --command, queue served in-process ------------------------------------------------


@pytest.fixture
def file_queue(tmp_path: Path) -> tuple[Path, str]:
    root_dir = tmp_path / "root"
    root_dir.mkdir()
    uri = (root_dir / "q.json").as_uri()
    create_queue(open_store(uri), "q")
    return root_dir, uri


def test_obque_work_short_grace_releases(spawn: Any, file_queue: tuple[Path, str]) -> None:
    root_dir, uri = file_queue
    with Client(uri) as q:
        ids = q.push_many([{"n": n} for n in range(3)])
        worker = spawn(
            [OBQUE, "work", uri, "--command", "sleep 120", "-n", "2", "--grace-seconds", "0.5"]
        )
        wait_until(lambda: q.stats()["claimed"] == 2, timeout=20, what="two commands to run")
        took = worker.stop(signal.SIGTERM, timeout=40)
        assert worker.proc.returncode == 0, worker.output()
        assert took < 20, worker.output()  # not the commands' 120 s
        assert "0 succeeded, 0 failed, 2 released" in worker.output()
        assert "Traceback" not in worker.output()

        jobs = by_id(read_queue_file(root_dir, "q")["jobs"])
        assert all("claim" not in job for job in jobs.values())
        assert [jobs[i].get("attempts", 0) for i in ids] == [1, 1, 0]
        assert [jobs[i].get("last_error") for i in ids] == [RELEASED, RELEASED, None]
        assert q.stats()["ready"] == 3


def test_obque_work_long_grace_acks(spawn: Any, file_queue: tuple[Path, str]) -> None:
    root_dir, uri = file_queue
    with Client(uri) as q:
        q.push_many([{"n": n} for n in range(3)])
        worker = spawn(
            [OBQUE, "work", uri, "--command", "sleep 1.5", "-n", "2", "--grace-seconds", "60"]
        )
        wait_until(lambda: q.stats()["claimed"] == 2, timeout=20, what="two commands to run")
        took = worker.stop(signal.SIGTERM, timeout=50)
        assert worker.proc.returncode == 0, worker.output()
        assert took < 30, worker.output()  # the commands' 1.5 s, not the 60 s of grace
        assert "2 succeeded, 0 failed, 0 released" in worker.output()
        stats = q.stats()
        assert (stats["claimed"], stats["acked"], stats["ready"]) == (0, 2, 1)
    assert len(read_queue_file(root_dir, "q")["jobs"]) == 1
