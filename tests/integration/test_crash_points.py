"""A broker killed at the worst moments (SPEC §4, §6, §12): between its compare-and-set
and its answers, during long polls, and as a leader with a standby beside it.

The file store replaces ``NAME.json`` by an atomic rename, so a new inode means a commit
has landed. A watcher spins on ``stat`` and SIGKILLs the broker the moment that happens:
the write is on disk, while the answers to the requests it carried are still being
written out by the broker's event loop. (``?write_ms=150`` makes every commit slow, so
each one gathers many concurrent requests.) The file is read right after the kill, so the
test knows exactly which operations landed.

What must hold after a restart at the same address:

* nothing acknowledged is lost; a push whose answer died with the broker is either in the
  file -- and its retry with the same key is answered as a duplicate of that very job --
  or absent, and its retry adds it once;
* a claim whose answer died leaves its jobs claimed by nobody until the lease lapses;
  they are then delivered again (at-least-once), and every job ends up acked;
* an ack whose answer died either landed (its retry answers ``lease_lost``, the job is
  gone) or did not (its retry acks);
* long polls in progress when the broker dies are retried by the client and are served
  by the restarted broker.

Figures (operations whose answers were lost, recovery times) are printed as one
``crash-points`` JSON line per test (``-rP``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.register_assert_rewrite("broker_proc")

from broker_proc import BrokerFactory, BrokerProcess, free_port, wait_until  # noqa: E402

from obque.client import Client  # noqa: E402
from obque.client.retry import RetryPolicy  # noqa: E402
from obque.core import ObqueError  # noqa: E402

pytest_plugins = ["broker_proc"]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

QUEUE = "q"
LEASE_SECONDS = 3
PATIENT = RetryPolicy(attempts=60, base_seconds=0.05, cap_seconds=1.0)


#: Kills a process the moment a file is renamed into place (inotify ``IN_MOVED_TO``).
#: A separate process, woken by the kernel and scheduled first (SCHED_FIFO when allowed),
#: so the broker is still sending the answers of the commit that just landed.
KILLER = r"""
import ctypes, os, signal, struct, sys

directory, name, pid = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
try:
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
except (AttributeError, OSError):
    pass
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(0)
if fd < 0 or libc.inotify_add_watch(fd, directory.encode(), 0x80) < 0:  # IN_MOVED_TO
    sys.exit("inotify: " + os.strerror(ctypes.get_errno()))
print("armed", flush=True)
while True:
    data, offset = os.read(fd, 65536), 0
    while offset < len(data):
        _, _, _, length = struct.unpack_from("iIII", data, offset)
        event = data[offset + 16 : offset + 16 + length].rstrip(b"\0")
        offset += 16 + length
        if event == name:
            os.kill(pid, signal.SIGKILL)
            sys.exit(0)
"""


def kill_after_next_commit(
    broker: BrokerProcess, path: Path, before_kill: Callable[[], None], timeout: float = 30
) -> bytes:
    """SIGKILL ``broker`` as soon as its next commit renames ``path`` into place; return
    the file as that commit left it (nothing else writes it)."""
    argv = [sys.executable, "-c", KILLER, str(path.parent), path.name, str(broker.pid)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as killer:
        try:
            assert killer.stdout is not None
            assert killer.stdout.readline().strip() == "armed", "the killer could not watch"
            before_kill()  # counted now: answers lost from here on belong to this kill
            assert killer.wait(timeout) == 0
            broker.proc.wait(10)
        finally:
            if killer.poll() is None:
                killer.kill()
    return path.read_bytes()


# -- mixed traffic over raw HTTP, so every answer (or its absence) is seen ----------------


@dataclass
class Traffic:
    """Pushers and consumers over raw HTTP against one broker address."""

    url: str
    pushers: int = 60
    consumers: int = 20
    #: tag -> id, from the first answered push of that tag.
    ids: dict[str, str] = field(default_factory=dict)
    #: Tags whose push went unanswered (the broker died), and what the retry answered:
    #: (the kills that took an answer, id, was it a duplicate?).
    unanswered_pushes: dict[str, tuple[set[int], str, bool]] = field(default_factory=dict)
    #: Kills so far, counted just before each one.
    kills: int = 0
    deliveries: list[tuple[str, int, str]] = field(default_factory=list)  # id, attempt, tag
    unanswered_claims: int = 0
    acks: Counter[str] = field(default_factory=Counter)  # "ok", "lease_lost", "unanswered"
    acked: set[str] = field(default_factory=set)
    stop_pushing: bool = False
    stop: bool = False

    async def send(
        self, http: httpx.AsyncClient, path: str, body: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, set[int]]:
        """POST until answered; returns the answer and the kills that took the answers
        of earlier attempts (refused, reset or cut short: the broker had died)."""
        lost: set[int] = set()
        while True:
            try:
                response = await http.post(f"{self.url}/v1/queues/{QUEUE}{path}", json=body)
            except httpx.TransportError:
                lost.add(self.kills)
                await asyncio.sleep(random.uniform(0.05, 0.15))
                continue
            if response.status_code == 503:
                await asyncio.sleep(random.uniform(0.05, 0.15))
                continue
            assert response.status_code == 200, response.text
            return response.json(), lost

    def count_kill(self) -> None:
        self.kills += 1

    async def push(self, http: httpx.AsyncClient, index: int) -> None:
        n = 0
        while not self.stop_pushing:
            n += 1
            tag = f"p{index}-{n}"
            body = {"jobs": [{"payload": {"tag": tag}, "key": tag}]}
            answer, lost = await self.send(http, "/push", body)
            assert answer is not None
            job_id = answer["ids"][0]
            self.ids[tag] = job_id
            if lost:
                self.unanswered_pushes[tag] = (lost, job_id, job_id in answer["duplicates"])

    async def consume(self, http: httpx.AsyncClient, index: int) -> None:
        body = {"worker": f"c{index}", "max": 5, "lease_seconds": LEASE_SECONDS, "wait_seconds": 1}
        while not self.stop:
            answer, lost = await self.send(http, "/claim", body)
            assert answer is not None
            self.unanswered_claims += bool(lost)
            if not answer["jobs"]:
                continue
            for job in answer["jobs"]:
                self.deliveries.append((job["id"], job["attempt"], job["payload"]["tag"]))
            leases = [{"id": job["id"], "lease": job["lease"]} for job in answer["jobs"]]
            result, ack_lost = await self.send(http, "/ack", {"leases": leases})
            assert result is not None
            for item in result["results"]:
                if item["ok"]:
                    self.acked.add(item["id"])
                self.acks["ok" if item["ok"] else item["error"]] += 1
                self.acks["unanswered"] += bool(ack_lost)

    async def run(self, pushed: threading.Event, drained: threading.Event) -> None:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(timeout=30, limits=limits) as http:
            tasks = [asyncio.create_task(self.push(http, i)) for i in range(self.pushers)]
            tasks += [asyncio.create_task(self.consume(http, i)) for i in range(self.consumers)]
            await asyncio.to_thread(pushed.wait)
            self.stop_pushing = True
            await asyncio.to_thread(drained.wait)
            self.stop = True
            await asyncio.gather(*tasks)


MIN_KILLS, MAX_KILLS = 3, 8


def answers_lost_with_the_broker(traffic: Traffic, landed: list[dict[str, Any]]) -> tuple[int, int]:
    """(pushes, claimed jobs) that a killed commit stored but whose answers died with the
    broker, as far as the traffic has seen. Read at least a second after a kill (a
    restart), when any answer still in flight at the kill has arrived or never will."""
    pushes = 0
    for tag, (kills, _, duplicate) in dict(traffic.unanswered_pushes).items():
        held = {job["key"] for k in kills if k for job in landed[k - 1]["jobs"]}
        pushes += duplicate and tag in held
    seen = {(job_id, attempt) for job_id, attempt, _ in list(traffic.deliveries)}
    claimed = sum(
        1
        for snapshot in landed
        for job in snapshot["jobs"]
        if "claim" in job and (job["id"], job["attempts"]) not in seen
    )
    return pushes, claimed


def test_kills_between_commit_and_answers_lose_nothing_acknowledged(
    brokers: BrokerFactory,
) -> None:
    root = brokers.root(query="write_ms=150")
    broker = brokers.start(root)
    with broker.client() as http:
        config = {"lease_seconds": LEASE_SECONDS, "max_attempts": 100}
        assert http.put(f"/v1/queues/{QUEUE}", json=config).status_code == 201
    path = brokers.root_dir() / f"{QUEUE}.json"
    wait_until(lambda: json.loads(path.read_bytes()).get("broker"), timeout=15, what="a leader")

    traffic = Traffic(broker.url)
    pushed, drained = threading.Event(), threading.Event()
    runner = threading.Thread(target=lambda: asyncio.run(traffic.run(pushed, drained)))
    runner.start()
    landed: list[dict[str, Any]] = []
    restarts: list[float] = []
    try:
        while True:
            wait_until(lambda: len(traffic.ids) >= 100 * (len(landed) + 1), timeout=60, what="load")
            # At least MIN_KILLS kills; more (up to MAX_KILLS) until one caught a commit
            # whose answers had not all gone out -- the window this test is about. (A kill
            # can land on a commit whose answers were all sent, or a heartbeat-only one.)
            if len(landed) >= MIN_KILLS and (
                sum(answers_lost_with_the_broker(traffic, landed)) or len(landed) >= MAX_KILLS
            ):
                break
            landed.append(json.loads(kill_after_next_commit(broker, path, traffic.count_kill)))
            killed = time.monotonic()
            broker = brokers.start(root, port=broker.port)  # same address: takes over at once
            restarts.append(time.monotonic() - killed)
        pushed.set()
        wait_until(lambda: not json.loads(path.read_bytes())["jobs"], timeout=60, what="drain")
    finally:
        pushed.set()
        drained.set()
        runner.join(60)
    final = json.loads(path.read_bytes())

    # Nothing acknowledged lost, nothing pushed twice: one job per tag, each acked once.
    tags = traffic.ids
    assert len(set(tags.values())) == len(tags)
    assert final["stats"]["pushed"] == len(tags) == final["next_seq"] - 1
    assert final["stats"]["acked"] == len(tags) and not final["jobs"] and not final["dead"]
    assert traffic.acked <= set(tags.values())
    delivered = Counter((job_id, attempt) for job_id, attempt, _ in traffic.deliveries)
    assert max(delivered.values()) == 1, "a (job, attempt) was delivered twice"
    assert {tag for _, _, tag in traffic.deliveries} == set(tags), "a pushed job never came"

    # Pushes whose answer died: the retry names the job the file already held (written
    # just before a kill), or adds it now -- never both.
    landed_unanswered = 0
    for tag, (kills, job_id, duplicate) in traffic.unanswered_pushes.items():
        held = {job["key"]: job["id"] for k in kills if k for job in landed[k - 1]["jobs"]}
        assert duplicate == (tag in held), (tag, kills, job_id, duplicate)
        if duplicate:
            assert held[tag] == job_id
            landed_unanswered += 1

    # Claims whose answer died: their jobs came back (at a later attempt) and were acked.
    ghost_claims = 0
    seen = set(delivered)
    for snapshot in landed:
        for job in snapshot["jobs"]:
            if "claim" in job and (job["id"], job["attempts"]) not in seen:
                ghost_claims += 1
                later = [a for (i, a) in seen if i == job["id"] and a > job["attempts"]]
                assert later, f"job {job['id']} claimed by a dead request never came back"

    # The kills hit the window: operations that landed while their answers died.
    assert landed_unanswered + ghost_claims > 0, (
        f"{len(landed)} kills, none between commit and answers"
    )
    assert (landed_unanswered, ghost_claims) == answers_lost_with_the_broker(traffic, landed)

    figures = {
        "kills": len(landed),
        "pushed": len(tags),
        "pushes_unanswered": len(traffic.unanswered_pushes),
        "pushes_landed_but_unanswered": landed_unanswered,
        "claims_unanswered": traffic.unanswered_claims,
        "jobs_claimed_by_unanswered_claims": ghost_claims,
        "acks": dict(traffic.acks),
        "redeliveries": len(traffic.deliveries) - len(tags),
        "restart_to_ready_s": [round(r, 2) for r in restarts],
    }
    print("crash-points " + json.dumps(figures))


# -- long polls ----------------------------------------------------------------------------


def test_long_polls_survive_a_broker_kill(brokers: BrokerFactory) -> None:
    root = brokers.root()
    broker = brokers.start(root)
    with broker.client() as http:
        assert http.put(f"/v1/queues/{QUEUE}", json={"lease_seconds": 5}).status_code == 201
    uri = (brokers.root_dir() / f"{QUEUE}.json").resolve().as_uri()
    wait_until(
        lambda: json.loads((brokers.root_dir() / f"{QUEUE}.json").read_bytes()).get("broker"),
        timeout=15,
        what="a leader",
    )
    waiting = 8
    got: dict[int, list[str]] = {}
    errors: list[str] = []
    served_at: list[float] = []

    def long_poll(index: int) -> None:
        with Client(uri, retry=PATIENT) as client:
            try:
                jobs = []
                while not jobs:  # an empty answer after the wait: poll again
                    jobs = client.claim(f"w{index}", 1, wait=10)
                for job in jobs:
                    assert job.ack()
                served_at.append(time.monotonic())
                got[index] = [job.payload for job in jobs]
            except ObqueError as exc:
                errors.append(repr(exc))

    threads = [threading.Thread(target=long_poll, args=(i,)) for i in range(waiting)]
    idle = _sockets(broker)
    for thread in threads:
        thread.start()
    # Every long poll is parked in the broker (nothing to claim) when it dies.
    wait_until(lambda: _sockets(broker) >= idle + waiting, timeout=30, what="parked polls")
    broker.kill()
    killed = time.monotonic()
    broker = brokers.start(root, port=broker.port)
    ready = time.monotonic()
    with broker.client() as http:
        jobs = [{"payload": n, "key": f"job-{n}"} for n in range(waiting)]
        assert http.post(f"/v1/queues/{QUEUE}/push", json={"jobs": jobs}).status_code == 200
    pushed = time.monotonic()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert sorted(p for payloads in got.values() for p in payloads) == list(range(waiting))
    state = json.loads((brokers.root_dir() / f"{QUEUE}.json").read_bytes())
    assert state["stats"]["acked"] == waiting and not state["jobs"]
    figures = {
        "long_polls": waiting,
        "kill_to_ready_s": round(ready - killed, 2),
        "push_to_all_served_s": round(max(served_at) - pushed, 2),
    }
    print("crash-points " + json.dumps(figures))


def _sockets(broker: BrokerProcess) -> int:
    """Sockets the broker process holds open (each parked long poll adds one)."""
    count = 0
    for name in os.listdir(f"/proc/{broker.pid}/fd"):
        try:
            count += os.readlink(f"/proc/{broker.pid}/fd/{name}").startswith("socket:")
        except OSError:
            continue  # closed meanwhile
    return count


# -- a leader killed with a standby beside it ----------------------------------------------


def test_a_standby_takes_over_from_a_killed_leader_without_losing_pushes(
    brokers: BrokerFactory,
) -> None:
    root = brokers.root()
    a = brokers.start(root, broker_timeout="1.5")
    with a.client() as http:
        assert http.put(f"/v1/queues/{QUEUE}").status_code == 201
    path = brokers.root_dir() / f"{QUEUE}.json"
    wait_until(
        lambda: (json.loads(path.read_bytes()).get("broker") or {}).get("url") == a.advertised,
        timeout=15,
        what="A to lead",
    )
    port = free_port()
    b = brokers.start(root, port=port, advertise=f"http://localhost:{port}", broker_timeout="1.5")
    uri = path.resolve().as_uri()
    ids: dict[str, str] = {}
    answered_at: list[float] = []
    errors: list[str] = []
    stop = threading.Event()

    def produce(index: int) -> None:
        with Client(uri, retry=PATIENT) as client:
            n = 0
            while not stop.is_set():
                n += 1
                tag = f"p{index}-{n}"
                try:
                    ids[tag] = client.push({"tag": tag}, key=None if n % 2 else tag)
                except ObqueError as exc:
                    errors.append(repr(exc))
                    return
                answered_at.append(time.monotonic())

    threads = [threading.Thread(target=produce, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(ids) >= 200, timeout=60, what="200 pushes via A")
        a.kill()
        killed = time.monotonic()
        wait_until(
            lambda: json.loads(path.read_bytes())["broker"]["url"] == b.advertised,
            timeout=30,
            what="B to take over",
        )
        took_over = time.monotonic()
        wait_until(lambda: any(t > took_over for t in answered_at), timeout=30, what="a push via B")
        # The outage as the producers saw it: the longest time no push was answered.
        around = sorted(t for t in answered_at if killed - 2 <= t <= took_over + 5)
        stall = max(b - a for a, b in itertools.pairwise(around))
        at_kill = len(ids)
        wait_until(lambda: len(ids) >= at_kill + 200, timeout=60, what="200 pushes via B")
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert not errors, errors
    state = json.loads(path.read_bytes())
    assert len(set(ids.values())) == len(ids)
    assert state["stats"]["pushed"] == len(ids) == len(state["jobs"]), "a push lost or doubled"
    assert {job["payload"]["tag"] for job in state["jobs"]} == set(ids)
    figures = {
        "pushed": len(ids),
        "kill_to_takeover_s": round(took_over - killed, 2),
        "longest_push_stall_s": round(stall, 2),
    }
    print("crash-points " + json.dumps(figures))
