"""The one contract every store adapter keeps, run against each of them.

``mem`` and ``file`` run everywhere; ``seaweedfs``, ``moto`` and ``fakegcs`` start real
servers (marked ``integration``). Each test gets a fresh folder (:class:`Place`) so tests
never see each other's objects, even on the session-wide servers.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import types
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from obque.core.errors import Conflict, StoreUnavailable
from obque.store import Store, open_root, open_store
from obque.store import file as file_store
from obque.store.memory import MemoryBackend
from obque.store.shaping import FaultBackend

if TYPE_CHECKING:
    from servers import StoreServer

pytestmark = pytest.mark.timeout(120)

ADAPTERS = [
    "mem",
    "file",
    pytest.param("seaweedfs", marks=pytest.mark.integration),
    pytest.param("moto", marks=pytest.mark.integration),
    pytest.param("fakegcs", marks=pytest.mark.integration),
]
SERVER_FIXTURES = {"seaweedfs": "seaweedfs_s3", "moto": "moto_s3", "fakegcs": "fake_gcs"}


@dataclass
class Place:
    """A fresh, empty folder in one adapter; stores opened through it are closed after."""

    adapter: str
    root: str  # a root URI, ending in "/"
    opened: list[Store] = field(default_factory=list)

    def uri(self, name: str = "queue.json", query: str = "") -> str:
        return f"{self.root}{name}" + (f"?{query}" if query else "")

    def store(self, name: str = "queue.json", query: str = "") -> Store:
        store = open_store(self.uri(name, query))
        self.opened.append(store)
        return store


@pytest.fixture(params=ADAPTERS)
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Place]:
    adapter: str = request.param
    unique = f"contract-{uuid.uuid4().hex[:12]}"
    if adapter == "mem":
        root = f"mem://{unique}/"
    elif adapter == "file":
        root = f"file://{tmp_path}/"
    else:
        root = request.getfixturevalue(SERVER_FIXTURES[adapter]).uri(f"{unique}/")
    place = Place(adapter, root)
    yield place
    for store in place.opened:
        store.close()
    MemoryBackend.forget(unique)


def test_reading_a_missing_object_gives_none(place: Place) -> None:
    assert place.store().read() is None


def test_create_only_succeeds_once(place: Place) -> None:
    store = place.store()
    token = store.write(b'{"v": 1}', None)
    with pytest.raises(Conflict):
        store.write(b'{"v": 2}', None)
    assert store.read() == (b'{"v": 1}', token)


def test_cas_with_the_current_token_wins_and_with_a_stale_one_conflicts(place: Place) -> None:
    store = place.store()
    first = store.write(b'{"v": 1}', None)
    second = store.write(b'{"v": 2}', first)
    with pytest.raises(Conflict):
        store.write(b'{"v": 3}', first)
    assert store.read() == (b'{"v": 2}', second)


def test_cas_on_a_deleted_object_conflicts(place: Place) -> None:
    store = place.store()
    token = store.write(b'{"v": 1}', None)
    store.delete()
    with pytest.raises(Conflict):
        store.write(b'{"v": 2}', token)
    assert store.read() is None


def test_equal_bytes_written_twice_keep_a_working_cas_chain(place: Place) -> None:
    # S3 ETags and the emulators' tokens repeat for equal bytes, so after rewriting the
    # same bytes only the *current* token is promised to work; queue files embed a
    # revision so that real commits never write equal bytes.
    store = place.store()
    first = store.write(b'{"revision": 1}', None)
    again = store.write(b'{"revision": 1}', first)
    assert store.read() == (b'{"revision": 1}', again)
    third = store.write(b'{"revision": 2}', again)
    with pytest.raises(Conflict):
        store.write(b'{"revision": 3}', again)
    assert store.read() == (b'{"revision": 2}', third)


def test_deleting_a_missing_object_is_fine(place: Place) -> None:
    store = place.store()
    store.delete()
    store.write(b"{}", None)
    store.delete()
    store.delete()
    assert store.read() is None


def test_children_and_queue_names(place: Place) -> None:
    alpha, beta = place.store("alpha.json"), place.store("beta.json")
    alpha.write(b"{}", None)
    beta.write(b"{}", None)
    for name in ("intents/002", "intents/001", "spill/p1"):
        alpha.child(name).write(b"{}", None)
    place.store("nested/gamma.json").write(b"{}", None)  # in a subfolder: not a queue here

    assert alpha.children() == ["intents/001", "intents/002", "spill/p1"]
    assert alpha.children("intents/") == ["intents/001", "intents/002"]
    assert beta.children() == []
    root = open_root(place.root)
    try:
        assert root.queue_names() == ["alpha", "beta"]
    finally:
        root.close()


def test_request_counts(place: Place) -> None:
    store = place.store()
    assert store.read() is None
    token = store.write(b'{"v": 1}', None)
    with pytest.raises(Conflict):
        store.write(b'{"v": 2}', None)
    store.write(b'{"v": 3}', token)
    store.child("intent").write(b"{}", None)  # children share their queue's counters
    assert store.children() == ["intent"]
    store.child("intent").delete()

    assert store.counts is not None
    assert store.counts.as_dict() == {
        "reads": 1,
        "writes": 4,
        "lists": 1,
        "deletes": 1,
        "conflicts": 1,
        "errors": 0,
    }


def test_min_write_interval(place: Place) -> None:
    assert place.store().min_write_interval == (1.0 if place.adapter == "fakegcs" else 0.0)


def test_exactly_one_writer_wins_each_round(place: Place) -> None:
    contenders, rounds = 3, 4
    place.store().write(b'{"round": -1}', None)
    stores = [place.store() for _ in range(contenders)]
    barrier = threading.Barrier(contenders, timeout=60)
    lock = threading.Lock()
    tokens: list[set[str]] = [set() for _ in range(rounds)]
    winners: list[list[int]] = [[] for _ in range(rounds)]

    def contend(me: int) -> None:
        store = stores[me]
        for r in range(rounds):
            barrier.wait()  # every write of the previous round is over
            snap = store.read()
            assert snap is not None
            with lock:
                tokens[r].add(snap.token)
            barrier.wait()  # every contender holds the same snapshot
            try:
                store.write(json.dumps({"round": r, "writer": me}).encode(), snap.token)
            except Conflict:
                continue
            with lock:
                winners[r].append(me)

    _run_threads(contend, contenders, barrier)
    assert all(len(seen) == 1 for seen in tokens)
    assert [len(won) for won in winners] == [1] * rounds
    final = place.store().read()
    assert final is not None
    assert json.loads(final.data) == {"round": rounds - 1, "writer": winners[-1][0]}


@pytest.mark.parametrize("faults", [False, True], ids=["clean", "faults"])
def test_concurrent_counter_loses_no_update(place: Place, faults: bool) -> None:
    writers, times = 3, 5
    place.store().write(_counter(0, {}), None)
    stores = [
        place.store(query=f"faults=0.3&seed={17 + i}" if faults else "") for i in range(writers)
    ]
    _run_threads(lambda me: bump(stores[me], f"w{me}", times), writers)

    count, last = _read_counter(place.store())
    assert count == writers * times
    assert last == {f"w{i}": times - 1 for i in range(writers)}
    totals = _sum_counts(stores)
    if not faults:
        # One read and one CAS per attempt; every CAS either counted or conflicted.
        assert totals["errors"] == 0
        assert totals["writes"] == writers * times + totals["conflicts"]
        assert totals["reads"] == totals["writes"]
        return
    # An injected lost answer raises Conflict instead when the write itself lost its CAS.
    injected = _sum_injected(stores)
    assert sum(injected.values()) > 0
    assert totals["errors"] >= injected["unavailable"] + injected["timeout"]
    assert totals["errors"] + totals["conflicts"] >= sum(injected.values())


def test_lost_answers_are_settled_by_rereading(place: Place) -> None:
    # One writer, so the faults drawn depend on the seed alone: seed 5 loses the answer
    # of five writes that landed. With no real contention every error and conflict the
    # counters saw is one that was injected.
    times = 30
    place.store().write(_counter(0, {}), None)
    store = place.store(query="faults=0.3&seed=5")
    bump(store, "solo", times)
    assert _read_counter(place.store()) == (times, {"solo": times - 1})
    injected, counts = _sum_injected([store]), _sum_counts([store])
    assert injected["ambiguous"] == 5
    assert counts["conflicts"] == injected["conflict"]
    assert counts["errors"] == injected["unavailable"] + injected["timeout"] + 5


def test_file_store_counter_across_processes(tmp_path: Path) -> None:
    processes, times = 3, 15
    uri = f"file://{tmp_path}/counter.json"
    setup = open_store(uri)
    setup.write(_counter(0, {}), None)
    spawn = multiprocessing.get_context("spawn")  # no fork of a process running threads
    workers = [
        spawn.Process(target=_bump_in_process, args=(uri, f"p{i}", times)) for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=90)
    assert [worker.exitcode for worker in workers] == [0] * processes
    count, last = _read_counter(setup)
    assert count == processes * times
    assert last == {f"p{i}": times - 1 for i in range(processes)}


class _FrozenMetadataOs(types.ModuleType):
    """``os`` on a filesystem whose inode numbers are reused at once and whose clock
    tick is longer than the test: every stat shows one inode and one mtime."""

    def __init__(self) -> None:
        super().__init__("os")

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    @staticmethod
    def _frozen(st: os.stat_result) -> os.stat_result:
        return os.stat_result((st.st_mode, 7, st.st_dev, 1, 0, 0, st.st_size, 0, 0, 0))

    def stat(self, path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        return self._frozen(os.stat(path, *args, **kwargs))

    def fstat(self, fd: int) -> os.stat_result:
        return self._frozen(os.fstat(fd))


def test_file_token_does_not_come_back_after_equal_size_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A token built from (inode, mtime, size) repeats here after A -> B with B the size
    # of A; a writer still holding A's token must nevertheless lose its compare-and-set.
    monkeypatch.setattr(file_store, "os", _FrozenMetadataOs())
    store = open_store(f"file://{tmp_path}/queue.json")
    stale = store.write(b'{"revision": 1, "v": "a"}', None)
    current = store.write(b'{"revision": 2, "v": "b"}', stale)
    assert current != stale
    with pytest.raises(Conflict):
        store.write(b'{"revision": 3, "v": "c"}', stale)
    assert store.read() == (b'{"revision": 2, "v": "b"}', current)
    # The chain goes on from the current token, through a third equal-size write.
    assert store.write(b'{"revision": 3, "v": "c"}', current) != current
    with pytest.raises(Conflict):
        store.write(b'{"revision": 4, "v": "d"}', current)


# -- what each service really answers --------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(
    ("server", "status", "code"),
    [("moto_s3", 404, "NoSuchKey"), ("seaweedfs_s3", 412, "PreconditionFailed")],
)
def test_s3_if_match_on_a_missing_key_is_a_conflict(
    request: pytest.FixtureRequest, server: str, status: int, code: str
) -> None:
    store = open_store(request.getfixturevalue(server).uri(f"{uuid.uuid4().hex}/gone.json"))
    try:
        with pytest.raises(Conflict) as raised:
            store.write(b"{}", '"0cc175b9c0f1b6a831c399e269772661"')
    finally:
        store.close()
    answer: Any = getattr(raised.value.__cause__, "response", {})
    assert (answer["ResponseMetadata"]["HTTPStatusCode"], answer["Error"]["Code"]) == (
        status,
        code,
    )


@pytest.mark.integration
def test_fake_gcs_generation_match_on_a_missing_object_is_a_conflict(
    fake_gcs: StoreServer,
) -> None:
    store = open_store(fake_gcs.uri(f"{uuid.uuid4().hex}/gone.json"))
    try:
        with pytest.raises(Conflict) as raised:
            store.write(b"{}", "1234")
    finally:
        store.close()
    assert getattr(raised.value.__cause__, "code", None) == 412


# -- helpers -----------------------------------------------------------------------------


def bump(store: Store, writer: str, times: int) -> None:
    """Add one to the counter ``times`` times, each exactly once.

    The document records each writer's last applied increment. That is what makes the
    count exact under faults: a write whose answer was lost may have landed, and when
    ``Store`` cannot prove it did (the re-read failed, or someone wrote after it) it
    raises; the retry then finds its own increment already applied instead of adding
    it twice. Queue files do the same with ``applied``.
    """
    for i in range(times):
        while True:
            try:
                snap = store.read()
                assert snap is not None
                count, last = _decode_counter(snap.data)
                if last.get(writer, -1) >= i:
                    break
                store.write(_counter(count + 1, {**last, writer: i}), snap.token)
                break
            except (Conflict, StoreUnavailable):
                continue


def _bump_in_process(uri: str, writer: str, times: int) -> None:
    store = open_store(uri)
    try:
        bump(store, writer, times)
    finally:
        store.close()


def _counter(count: int, last: dict[str, int]) -> bytes:
    return json.dumps({"count": count, "last": last}, sort_keys=True).encode()


def _decode_counter(data: bytes) -> tuple[int, dict[str, int]]:
    doc = json.loads(data)
    return int(doc["count"]), {str(k): int(v) for k, v in doc["last"].items()}


def _read_counter(store: Store) -> tuple[int, dict[str, int]]:
    snap = store.read()
    assert snap is not None
    return _decode_counter(snap.data)


def _run_threads(
    body: Callable[[int], None], n: int, barrier: threading.Barrier | None = None
) -> None:
    """Run ``body(0..n-1)`` in threads and re-raise the first failure.

    A failing thread breaks the barrier so that the others fail fast instead of waiting.
    """

    def guarded(me: int) -> None:
        try:
            body(me)
        except BaseException:
            if barrier is not None:
                barrier.abort()
            raise

    with ThreadPoolExecutor(n) as pool:
        for future in [pool.submit(guarded, me) for me in range(n)]:
            future.result()


def _sum_counts(stores: list[Store]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for store in stores:
        assert store.counts is not None
        for kind, n in store.counts.as_dict().items():
            totals[kind] = totals.get(kind, 0) + n
    return totals


def _sum_injected(stores: list[Store]) -> dict[str, int]:
    totals = dict.fromkeys(FaultBackend.WRITE_FAULTS, 0)
    for store in stores:
        faults = getattr(store.backend, "inner", None)  # counting wraps the fault layer
        assert isinstance(faults, FaultBackend)
        for kind, n in faults.injected.items():
            totals[kind] += n
    return totals
